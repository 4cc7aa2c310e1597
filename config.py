"""YAML experiment configs with checked command-line overrides.

One YAML file per experiment; `key=value` or `a.b=value` arguments override it. An override must
name a key the file already has (a typo gets the closest valid name) and its value must parse to the
type the file holds (int, float, bool, str, list or null). The resolved config is written into the
run folder and into every checkpoint, so a run can always be rebuilt from its own outputs.

    cfg = load_config("config/msn.yaml", ["optim.lr=3e-4", "train.epochs=2"])
    save_config(cfg, "runs/msn/config.yaml")
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from files import atomic_write_text


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 (no dot) as a float, as YAML 1.2 and Python do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text_or_file):
    """yaml.safe_load with 1e-4-style floats."""
    return yaml.load(text_or_file, Loader=_Loader)


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and why."""


def read_yaml(path: Path) -> Any:
    """The YAML file `path`, parsed; a file that does not parse is a one-line ConfigError naming the file, the
    line and the column (1-based, as editors count) and the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml_load(f)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(": ".join(filter(None, [err.context, err.problem])).split())
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start}: {err.reason})") from None


def _flat_keys(cfg: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, dict):
            keys += _flat_keys(value, full + ".")
    return keys


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parse `text` with YAML rules and check it against the type of `current`."""
    try:
        value = yaml_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}={text!r}: not valid YAML ({err})") from None
    if current is None or value is None:
        return value  # null in the file means "any type"; null as a value clears the key
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"override {key}={text!r}: expected true/false, got {type(value).__name__}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        return text  # e.g. a path or a name that happens to look like a number
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        raise ConfigError(f"override {key}={text!r}: expected an integer, got a float")
    if type(value) is not type(current) and not (isinstance(current, float) and isinstance(value, float)):
        raise ConfigError(
            f"override {key}={text!r}: expected {type(current).__name__}, got {type(value).__name__}"
        )
    return value


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Return a copy of `cfg` with `key=value` / `a.b=value` overrides applied and type-checked."""
    cfg = copy.deepcopy(cfg)
    valid = _flat_keys(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        if isinstance(node[leaf], dict):
            raise ConfigError(f"override {key}: is a section; set one of its keys instead")
        node[leaf] = _parse_value(text, node[leaf], key)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Load a YAML config file and apply command-line overrides (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    cfg = read_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = apply_overrides(cfg, overrides or [])
    cfg.setdefault("_meta", {})
    cfg["_meta"]["config_file"] = str(path)
    cfg["_meta"]["config_name"] = path.stem
    return cfg


def check_keys(cfg: dict, reference: dict, where: str = "") -> None:
    """Raise ConfigError if `cfg` has a key that `reference` lacks (recursively); `_meta` is free."""
    for key, value in cfg.items():
        if key == "_meta":
            continue
        if key not in reference:
            close = difflib.get_close_matches(key, list(reference), n=1, cutoff=0.5)
            hint = f"; did you mean '{where}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{where}{key}'{hint}")
        if isinstance(value, dict) and isinstance(reference[key], dict):
            check_keys(value, reference[key], f"{where}{key}.")


def dump_config(cfg: dict) -> str:
    """The config as YAML text, sections in their order (what save_config writes and --print-config prints)."""
    return yaml.safe_dump(cfg, sort_keys=False)


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (files.atomic_write_text: a failed write, e.g. a full disk,
    leaves no temp file and says so in one line naming the file)."""
    atomic_write_text(yaml.safe_dump(cfg, sort_keys=False), path)


def merge(defaults: dict, cfg: dict) -> dict:
    """`cfg` on top of a copy of `defaults`, section by section at every depth: a dict merges into a dict,
    anything else replaces the default. The one merge rule of every pretraining config."""
    merged = copy.deepcopy(defaults)
    for key, value in cfg.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_moved(cfg: dict, moved: dict[str, str], where: str) -> None:
    """Raise ConfigError naming the new place of a key that moved (`moved`: old dotted key -> message)."""
    flat = _flat_keys(cfg)
    for old, new in moved.items():
        if any(key == old or key.startswith(old + ".") for key in flat):  # a moved section moves its keys
            raise ConfigError(f"{where}: config key '{old}' {new}")


def resolve(path: str | os.PathLike, overrides: list[str], defaults: dict,
            moved: dict[str, str] | None = None) -> dict:
    """A pretraining config: the YAML file merged onto `defaults` (unknown keys and moved keys refused), then
    the `key=value` overrides, which may name any key of the merged config (also one the file omits)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    cfg = read_yaml(path) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg.pop("_meta", None)
    names = [item.split("=", 1)[0].strip().lstrip("-") for item in overrides]
    check_moved({**cfg, **{name: None for name in names}}, moved or {}, str(path))
    try:
        check_keys(cfg, defaults)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    merged = apply_overrides(merge(defaults, cfg), overrides)
    merged["_meta"] = {"config_file": str(path), "config_name": path.stem}
    return merged


# ----------------------------------------------------------------------------- configs as deltas
# A config file holds only what differs from its method's defaults (trainer.COMMON + the method's DEFAULTS),
# plus a header comment on what the experiment is. A key that equals its default is allowed only when its line
# says so with a trailing comment that starts with `# deliberate` (e.g. `seed: 0   # deliberate: the paper's`);
# the mark on a section's line (or on a flow mapping's) covers every key inside it. tests/test_config_deltas.py
# enforces this for every file in config/; `python pretrain_<method>.py --config FILE --print-config` prints
# the merged config a file stands for.
DELIBERATE = "# deliberate"


def key_lines(path: str | os.PathLike) -> dict[str, str]:
    """Dotted key -> its line, for the block-style keys of a YAML file (keys inside a flow mapping {...} belong
    to the line that opens it)."""
    lines, stack, depth = {}, [], 0
    for line in Path(path).read_text().splitlines():
        text = line.split("#", 1)[0]
        opened = depth
        depth += text.count("{") + text.count("[") - text.count("}") - text.count("]")
        if opened or not text.strip() or ":" not in text:
            continue
        indent = len(text) - len(text.lstrip())
        key = text.strip().split(":", 1)[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        lines[".".join(k for _, k in stack)] = line
    return lines


def redundant_keys(path: str | os.PathLike, defaults: dict) -> list[str]:
    """The dotted leaf keys of a config file whose value equals the default and whose line is not marked
    `# deliberate`: each is a restated default (the file should say only what differs)."""
    with open(path) as f:
        cfg = yaml_load(f) or {}
    lines, found = key_lines(path), []

    def walk(node: dict, ref: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if key not in ref:
                continue  # unknown keys are resolve()'s error
            if isinstance(value, dict) and isinstance(ref[key], dict):
                walk(value, ref[key], dotted + ".")
            elif value == ref[key] and DELIBERATE not in line_of(dotted):
                found.append(dotted)

    def line_of(dotted: str) -> str:
        """The key's own line, else its nearest enclosing key's (a key inside a flow mapping {...})."""
        while dotted not in lines and "." in dotted:
            dotted = dotted.rsplit(".", 1)[0]
        return lines.get(dotted, "")
    walk(cfg, defaults, "")
    return found
