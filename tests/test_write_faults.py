"""Faults around the package's other writes (issue 16, item 6): a YAML syntax error is one line with file, line
and column; a full disk inside any atomic write says "no space left on device" with the path, keeps the old
complete file, and leaves no temp file (no config.yaml.tmp); a preprocessing run stops on it in one line and resumes."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import cache
import config
import data
import files
import runlog
import synthdata
from tests.conftest import ROOT
from tests.test_cache import make_esc50, run
from tests.test_checkpoint_faults import DieAfter

BAD_YAML = {  # text -> (line, column) of the error, 1-based, as an editor shows it
    "optim:\n  lr: 0.1\n bad: 2\n": (3, 2),  # a key indented less than its section
    "train:\n  epochs: [1, 2\n  lr: 3\n": (3, 5),  # an unclosed list
    "seed: 0\nmodel: \"x\n": (3, 1),  # an unclosed quote runs to the end of the file
    "model:\n\tdim: 1\n": (2, 1),  # a tab
}


@pytest.mark.parametrize("text", list(BAD_YAML))
def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    line, column = BAD_YAML[text]
    for load in (lambda: config.load_config(path), lambda: config.resolve(path, [], {"optim": {"lr": 1.0}})):
        with pytest.raises(config.ConfigError, match="YAML syntax error") as err:
            load()
        assert str(err.value).startswith(f"{path}:{line}:{column}: YAML syntax error: ")
        assert "\n" not in str(err.value)
    path.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(config.ConfigError, match=r"bad.yaml: not a UTF-8 text file \(byte 6"):
        config.load_config(path)


def test_yaml_syntax_error_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n bad: 2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "pretrain_byola.py", "--config", str(path),
                           f"train.out_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"pretrain_byola.py: error: {path}:3:2: YAML syntax error: while parsing a "
                                        "block mapping: expected <block end>, but found '<block mapping start>'"]
    assert not (tmp_path / "run").exists()


def full_disk_after(monkeypatch, limit: int) -> None:
    """Every atomic write (files.open_new) fills `limit` bytes, then the disk is full (ENOSPC)."""
    real = files.open_new
    monkeypatch.setattr(files, "open_new", lambda path: DieAfter(real(path), limit, kill=False))


def _config(path):
    config.save_config({"seed": 0, "model": {"dim": 8}, "notes": "x" * 500}, path)


def _pack_index(path):
    data.write_pack_index(path.parent, path.name, {f"c{i}": ("logmel-all-1-001.bin", 10 * i, 10) for i in range(50)},
                          [f"c{i}" for i in range(50)], 64, "float32")


def _clip(path):
    cache._save_npy(np.ones((64, 101), np.float32), path)


def _manifest(path):
    cache.write_csv_atomic([{"id": f"c{i}", "label": "dog"} for i in range(50)], path, ["id", "label"])


def _wav(path):
    synthdata.write_wav(path, np.zeros(4000, np.float32))


def _checkpoint(path):
    files.atomic_torch_save({"config": {}, "w": np.arange(1000)}, path)


WRITERS = {"config.yaml": _config, "index.npz": _pack_index, "clip.npy": _clip, "manifest.csv": _manifest,
           "clip.wav": _wav, "ckpt_last.pt": _checkpoint}


@pytest.mark.parametrize("name", list(WRITERS))
def test_full_disk_inside_a_write_names_the_path_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, name):
    path = tmp_path / "run" / name
    WRITERS[name](path)  # a complete file from before
    before = path.read_bytes()
    full_disk_after(monkeypatch, 100)
    with pytest.raises(OSError) as err:
        WRITERS[name](path)
    message = str(err.value)
    assert message.startswith(f"{path}: could not be written (no space left on device") and "\n" not in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp file (config.yaml.tmp, .name.tmp*)


def test_full_disk_during_preprocess_stops_in_one_line_leaves_no_temp_and_resumes(tmp_path, monkeypatch):
    root, out = make_esc50(tmp_path / "esc", n=4), tmp_path / "cache"
    real = files.open_new

    def open_new(path):  # the third clip's log-mel fills the disk after 200 bytes
        return DieAfter(real(path), 200, kill=False) if path.name.startswith(".3-1002-A-2.npy") else real(path)

    monkeypatch.setattr(files, "open_new", open_new)
    with pytest.raises(cache.CacheError) as err:
        run(dataset="esc50", root=root, out=out)
    message = str(err.value)
    assert "\n" not in message and f"{out / 'logmel' / '3-1002-A-2.npy'}: could not be written (no space left on " \
                                   "device" in message and "the run stopped" in message
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    monkeypatch.setattr(files, "open_new", real)  # space freed: the same command resumes
    summary = run(dataset="esc50", root=root, out=out)
    assert summary["written"] == 2 and summary["already_done"] == 2 and summary["skipped"] == 0


def test_full_disk_inside_an_append_leaves_no_half_row_and_names_the_file(tmp_path, monkeypatch):
    """The training log and the results CSV grow by appends: a full disk half way through a row cuts the file
    back (the next append would otherwise run into the half row) and says so with the path."""
    import csv

    import probe
    log = runlog.CSVLog(tmp_path / "log.csv", ["step", "loss"])
    log.write({"step": 1, "loss": 0.5})
    probe.append_result(tmp_path / "results.csv", {k: "1" for k in probe.RESULT_FIELDS})
    before = {name: (tmp_path / name).read_bytes() for name in ("log.csv", "results.csv")}
    real = files._write_fd

    def half_then_full(fd, data):
        real(fd, data[:len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_write_fd", half_then_full)
    for name, append in [("log.csv", lambda: log.write({"step": 2, "loss": 0.25})),
                         ("results.csv", lambda: probe.append_result(tmp_path / "results.csv",
                                                                     {k: "2" for k in probe.RESULT_FIELDS}))]:
        with pytest.raises(OSError, match=rf"{name}: could not be written \(no space left on device"):
            append()
        assert (tmp_path / name).read_bytes() == before[name]
    monkeypatch.setattr(files, "_write_fd", real)  # space freed: the next rows follow whole rows
    log.write({"step": 3, "loss": 0.125})
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert rows == [{"step": "1", "loss": "0.5"}, {"step": "3", "loss": "0.125"}]
    assert len(list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "results.csv"]
