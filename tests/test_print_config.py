"""--print-config on the scripts that take a config besides the pretraining ones (those: test_config_deltas.py):
linear_eval.py prints its DEFAULTS with the overrides and flags applied, clar_studies.py what every run starts from;
both exit without evaluating or training. Scripts are called as subprocesses."""
from __future__ import annotations

import subprocess
import sys

import yaml

import methods
from tests.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


def test_linear_eval_prints_defaults_with_overrides_and_flags_and_needs_no_checkpoint():
    done = run("linear_eval.py", "--print-config", "probe.lr=0.5", "--long", "chunk")
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["probe"]["lr"] == 0.5 and printed["eval"]["long"] == "chunk"
    assert printed["probe"]["epochs"] == 200 and printed["eval"]["pool"] == "cls"  # untouched defaults
    assert set(printed) == {"data", "eval", "probe"}
    missing = run("linear_eval.py", "probe.lr=0.5")  # without --print-config, --ckpt and --task stay required
    assert missing.returncode == 2 and "--ckpt, --task" in missing.stderr


def test_linear_eval_print_config_refuses_an_unknown_key():
    done = run("linear_eval.py", "--print-config", "probe.lrr=0.5")
    assert done.returncode != 0 and "probe.lrr" in done.stderr


def test_clar_studies_prints_the_config_every_run_starts_from(tmp_path):
    path = methods.get("clar").configs["demo"]
    done = run("clar_studies.py", "labels", "--config", path, "--runs", str(tmp_path / "runs"), "--print-config",
               "train.epochs=3")
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed == methods.get("clar").resolve(path, ["train.epochs=3"]) and printed["train"]["epochs"] == 3
    assert not (tmp_path / "runs").exists()
    assert set(printed) - {"_meta"} == set(methods.get("clar").defaults())  # complete
