"""config.py: YAML loading, typed key=value overrides, unknown keys, resolved config written out."""
import pytest
import yaml

from config import ConfigError, apply_overrides, check_keys, load_config, save_config

BASE = {"data": {"cache": "cache/x", "frames": 96}, "optim": {"lr": 1e-4, "milestones": [100, 200]},
        "train": {"epochs": 500, "amp": True, "max_steps": None}}


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_overrides_nested_and_typed(cfg_file):
    cfg = load_config(cfg_file, ["optim.lr=3e-4", "train.epochs=2", "train.amp=false", "data.cache=/tmp/c",
                                 "optim.milestones=[1, 2, 3]", "train.max_steps=5"])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 2 and cfg["train"]["amp"] is False
    assert cfg["data"]["cache"] == "/tmp/c" and cfg["optim"]["milestones"] == [1, 2, 3]
    assert cfg["train"]["max_steps"] == 5 and cfg["_meta"]["config_name"] == "exp"
    assert BASE["optim"]["lr"] == 1e-4  # the original is not modified


def test_int_given_for_float_is_promoted_and_number_for_str_kept_as_text():
    cfg = apply_overrides(BASE, ["optim.lr=1", "data.cache=2024"])
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["data"]["cache"] == "2024"


@pytest.mark.parametrize("override,message", [
    ("train.epochs=two", "expected int"),
    ("train.epochs=2.5", "expected int"),
    ("train.amp=1", "expected true/false"),
    ("optim.milestones=5", "expected list"),
    ("optim.lr=[1]", "expected float"),
])
def test_type_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(BASE, [override])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        apply_overrides(BASE, ["optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match="unknown config key 'zzz'"):
        apply_overrides(BASE, ["zzz=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(BASE, ["optim.lr"])
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(BASE, ["optim=1"])


def test_check_keys_rejects_unknown_file_keys():
    check_keys({"optim": {"lr": 1.0}, "_meta": {"x": 1}}, BASE)
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        check_keys({"train": {"epoch": 3}}, BASE)


def test_save_roundtrip(cfg_file, tmp_path):
    cfg = load_config(cfg_file, ["train.epochs=7"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml")["train"]["epochs"] == 7
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_exponent_without_dot_is_a_float(tmp_path):
    (tmp_path / "e.yaml").write_text("optim:\n  lr: 1e-4\n  wd: 5e-2\n")
    cfg = load_config(tmp_path / "e.yaml", ["optim.lr=3e-4"])
    assert cfg["optim"] == {"lr": 3e-4, "wd": 0.05}
