"""README.md and docs/ (issue 20): every command they show parses, and every relative link resolves.

A command is each `python SCRIPT ...` or `torchrun ... SCRIPT ...` in a ```bash block (continued lines joined,
comments dropped, `for ... do` loops and `sbatch --wrap "..."` opened). It parses when the script exists and its
argparse accepts the flags; a script with --print-config (the pretraining scripts, linear_eval.py) also resolves
its config with the command's `key=value` overrides, so a misspelt or moved key fails here."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PLACEHOLDERS = {"$k": "1", "$NODE_RANK": "0", "$HOST": "localhost"}

# One interpreter parses every command (argv lists as JSON on stdin): each script runs as __main__ until its
# argparse has parsed the command, then stops. A parser with --print-config gets it added and runs on (the script
# resolves its config with the overrides and exits); otherwise the scripts that take key=value overrides
# (pretrain_*.py, linear_eval.py) run on until the overrides are applied and checked (config.apply_overrides,
# trainer.resolve_config), then stop before any data is read. Prints {index: [exit code, stderr tail]}.
PARSE_ALL = """
import argparse, contextlib, io, json, re, runpy, sys
sys.path.insert(0, ".")
import config, trainer
class Parsed(BaseException):  # not caught by the scripts' error handlers
    pass
def takes_overrides():
    return re.fullmatch(r"pretrain_\\w+[.]py|linear_eval[.]py", sys.argv[0]) is not None
def stopping(original):
    def parse(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if "--print-config" in self._option_string_actions:
            return original(self, args + ["--print-config"], namespace)
        result = original(self, args, namespace)
        if takes_overrides():
            return result
        raise Parsed()
    return parse
for name in ("parse_args", "parse_intermixed_args"):
    setattr(argparse.ArgumentParser, name, stopping(getattr(argparse.ArgumentParser, name)))
def checked(original):
    def apply(cfg, overrides):
        result = original(cfg, overrides)
        if sys.argv[0] == "linear_eval.py":
            raise Parsed()
        return result
    return apply
config.apply_overrides = checked(config.apply_overrides)
def stop_before_training(*args, **kwargs):
    raise Parsed()
trainer.train = stop_before_training
results = {}
for i, argv in enumerate(json.load(sys.stdin)):
    sys.argv, err = argv, io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except Parsed:
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        err.write(str(e.code) if not isinstance(e.code, int) else "")
    except Exception as e:
        code = 1
        err.write(f"{type(e).__name__}: {e}")
    results[i] = [code, err.getvalue()[-1500:]]
print(json.dumps(results))
"""


def bash_lines(text: str) -> list[str]:
    lines = []
    for lang, body in FENCE.findall(text):
        if lang not in ("bash", "sh", "shell"):
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        lines += [line for line in joined.splitlines() if line.strip()]
    return lines


def segments(tokens: list[str]) -> list[list[str]]:
    """Shell tokens -> simple commands: split at ; && || | do then, a quoted command (sbatch --wrap) opened."""
    out, current = [], []
    for token in tokens:
        if token in (";", "&&", "||", "|", "do", "then", "done", "fi") or token.endswith(";"):
            head = token[:-1] if token.endswith(";") and token != ";" else ""
            if head:
                current.append(head)
            out.append(current)
            current = []
        elif " " in token and re.search(r"\.py\b", token):
            out += segments(shlex.split(token))
        else:
            current.append(token)
    return [seg for seg in out + [current] if seg]


def commands(text: str) -> list[list[str]]:
    """The argv of every python / torchrun command of our scripts, from the script on (torchrun's options and
    the interpreter removed)."""
    found = []
    for line in bash_lines(text):
        for k, v in PLACEHOLDERS.items():
            line = line.replace(k, v)
        lexer = shlex.shlex(line.replace("~", "/home/user"), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        for argv in segments(list(lexer)):
            if argv[0] not in ("python", "python3", "torchrun") or argv[1:2] in (["-c"], ["-m"]):
                continue  # not one of our scripts (pip, make, hear-validator, python -c ...)
            scripts = [i for i, a in enumerate(argv) if a.endswith(".py")]
            if scripts:
                found.append(argv[scripts[0]:])
    return found


ALL = [(doc.relative_to(ROOT).as_posix(), argv) for doc in DOCS for argv in commands(doc.read_text())]


def test_the_docs_show_commands_of_every_script_family():
    shown = {argv[0] for _, argv in ALL}
    for script in ("preprocess.py", "pretrain_msn.py", "pretrain_clar.py", "pretrain_byola.py", "linear_eval.py",
                   "export.py", "results/make_tables.py"):
        assert script in shown, f"no command of {script} found in README.md or docs/"


def parse_all(argvs: list[list[str]]) -> dict[str, list]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PARSE_ALL], input=json.dumps(argvs), cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed() -> dict[str, list]:
    return parse_all([argv for _, argv in ALL])


def test_the_check_catches_a_bad_flag_a_misspelt_key_and_a_bad_value():
    results = parse_all([["pretrain_msn.py", "--config", "config/demo_msn.yaml", "optim.bach_size=2"],
                         ["linear_eval.py", "--ckpt", "x.pt", "--task", "esc50", "probe.lr=fast"],
                         ["export.py", "--ckpt", "x.pt", "--output", "y.pt"],
                         ["preprocess.py", "--dataset", "folder", "--root", "a", "--out", "b", "--split", "1,2"],
                         ["pretrain_byola.py", "--config", "config/demo_byola.yaml", "optim.batch_size=2"]])
    assert [results[str(i)][0] != 0 for i in range(5)] == [True, True, True, True, False]
    assert "optim.batch_size" in results["0"][1]  # the closest valid key is named


@pytest.mark.parametrize("index", range(len(ALL)), ids=[f"{d}:{' '.join(a)[:60]}" for d, a in ALL])
def test_every_command_shown_parses(parsed, index):
    doc, argv = ALL[index]
    assert (ROOT / argv[0]).is_file(), f"{doc}: {argv[0]} does not exist"
    code, err = parsed[str(index)]
    assert code == 0, f"{doc}: `{shlex.join(argv)}` does not parse:\n{err}"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    slugs = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return slugs


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS + [ROOT / "results" / "README.md"]:
        text = FENCE.sub("", doc.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_five_minute_read():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 15_000, f"README.md is {len(text)} characters"
    spec = re.compile(r"SPEC (?:[AB]\d|Part)")  # the project's private spec: cite what a reader can follow instead
    tracked = [ROOT / p for p in subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yaml"], cwd=ROOT,
                                                 capture_output=True, text=True).stdout.split()]
    assert not [p.name for p in tracked if p.name != "test_docs.py" and p.is_file() and spec.search(p.read_text())]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{doc.name})" in text, f"README.md does not link docs/{doc.name}"
