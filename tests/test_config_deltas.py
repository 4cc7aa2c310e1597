"""Configs as deltas (config.redundant_keys, methods.py): every YAML in config/ belongs to a registry entry, resolves
to a complete config, and holds no key equal to its default unless that line is marked `# deliberate`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config as config_lib
import methods
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


def test_the_registry_owns_every_config_file_and_names_existing_ones():
    owned = {str(ROOT / path) for m in methods.METHODS.values() for path in m.configs.values()}
    assert {str(p) for p in CONFIGS} == owned
    for m in methods.METHODS.values():
        assert (ROOT / m.script).is_file() and {"full", "demo"} <= set(m.configs)
        for recipe in [*m.demo, *m.small, *m.hear_runs]:
            assert recipe.config in m.configs.values()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_a_delta_on_its_method_defaults(path):
    method = methods.for_config(str(path))
    assert config_lib.redundant_keys(path, method.defaults()) == [], (
        f"{path.name} restates defaults of {method.script}: delete those keys, or end the line with "
        f"'{config_lib.DELIBERATE}: <why>'")
    cfg = method.resolve(str(path))
    assert set(cfg) - {"_meta"} == set(method.defaults())  # complete: every default key is there
    assert path.read_text().startswith("#"), f"{path.name}: begins with a header comment on the experiment"


def test_redundant_keys_finds_a_restated_default_and_honours_the_deliberate_mark(tmp_path):
    defaults = {"seed": 0, "optim": {"lr": 0.1, "batch_size": 32}, "model": {"features": {"n_fft": 256, "hop": 128}}}
    path = tmp_path / "x.yaml"
    path.write_text("# header\nseed: 0\noptim:\n  lr: 0.1   # deliberate: the paper's value, kept visible\n"
                    "  batch_size: 64\nmodel:\n  features: {n_fft: 256,\n             hop: 64}\n")
    assert config_lib.redundant_keys(path, defaults) == ["seed", "model.features.n_fft"]
    path.write_text("seed: 1\nmodel:\n  features: {n_fft: 256, hop: 64}   # deliberate: the whole front end\n")
    assert config_lib.redundant_keys(path, defaults) == []


def test_print_config_prints_the_merged_config_and_trains_nothing(tmp_path):
    method = methods.get("byola")
    path = method.configs["demo"]
    done = subprocess.run([sys.executable, method.script, "--config", path, "--print-config", "optim.lr=0.5",
                           f"train.out_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    expected = method.resolve(path, ["optim.lr=0.5", f"train.out_dir={tmp_path / 'run'}"])
    assert printed == expected and printed["optim"]["lr"] == 0.5
    assert not Path(tmp_path / "run").exists()


def test_the_old_augment_section_name_says_where_it_moved(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("augment:\n  p: 0.5\n")
    with pytest.raises(config_lib.ConfigError, match="renamed 'aug'"):
        methods.get("clar").resolve(str(path))
    with pytest.raises(config_lib.ConfigError, match="renamed 'aug'"):
        methods.get("clar").resolve(methods.get("clar").configs["demo"], ["augment.p=0.5"])


def code_names(source: str) -> set[str]:
    """The names and string literals of Python source, without its comments and docstrings (lower case)."""
    import io
    import tokenize
    words, previous = set(), None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING and previous in (tokenize.INDENT, tokenize.NEWLINE, tokenize.NL, None):
            previous = tok.type
            continue  # a docstring
        if tok.type in (tokenize.NAME, tokenize.STRING):
            words.add(tok.string.lower())
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            previous = tok.type
    return words


def test_the_drivers_name_no_method_they_iterate_over_the_registry():
    """demo.py, bench.py, hear_check.py, export.py (portable.py) and results/make_tables.py (tables.py) take their
    methods from methods.METHODS: adding one touches none of them."""
    sources = {name: (ROOT / name).read_text() for name in ("demo.py", "bench.py", "hear_check.py", "export.py",
                                                           "portable.py", "results/make_tables.py", "tables.py")}
    for where, source in sources.items():
        words = code_names(source)
        for method in methods.METHODS.values():
            named = [w for w in words if method.name in w or method.title.lower() in w]
            assert not named, f"{where} names method {method.name}: {named}"


def test_every_method_file_has_the_registry_shape_and_keyword_only_steps():
    """Each registry entry's script declares DEFAULTS, build and a train_step whose batch and step are keyword-only
    (one calling convention for every method)."""
    import inspect
    for method in methods.METHODS.values():
        module = method.module
        assert isinstance(module.DEFAULTS, dict) and callable(module.build)
        params = inspect.signature(method.train_step).parameters
        for name in ("batch", "step"):
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, f"{method.script}: {name} not keyword-only"
        assert "augment" not in method.defaults(), f"{method.script}: the augmentation section is called 'aug'"
