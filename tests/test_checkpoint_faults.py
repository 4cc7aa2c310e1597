"""Faults during a checkpoint write (issue 16): a kill -9 or a full disk inside the write never loses the last
complete checkpoint, --resume finds it (falling back to ckpt_prev.pt), and the resumed run equals the straight one
tensor for tensor, for every method. A fresh run never deletes an earlier run's checkpoints by accident."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import files
import pretrain_byola
import pretrain_clar
import pretrain_msn
import trainer
from tests import test_pretrain_byola, test_pretrain_clar, test_pretrain_msn
from tests.conftest import ROOT
from tests.test_trainer import toy_build, toy_cfg

# method -> (module, its tiny overrides, a tiny run of 3 epochs writing ckpt_last.pt at every epoch end)
METHODS = {
    "msn": (pretrain_msn, test_pretrain_msn.tiny),
    "clar": (pretrain_clar, test_pretrain_clar.tiny_args),
    "byola": (pretrain_byola, test_pretrain_byola.tiny),
}
EVERY_EPOCH = ["train.epochs=3", "train.ckpt_seconds=0", "data.num_workers=0"]


class DieAfter:
    """A file that dies after `limit` bytes: kill -9 of its own process (kill=True) or a full disk (ENOSPC)."""

    def __init__(self, f, limit: int, kill: bool):
        self.f, self.limit, self.kill, self.written = f, limit, kill, 0

    def write(self, data) -> int:
        room = self.limit - self.written
        if len(data) >= room:
            self.f.write(bytes(data[:room]))
            self.f.flush()
            if self.kill:
                os.kill(os.getpid(), 9)
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fault_in_write(monkeypatch, which: int, limit: int, kill: bool = False) -> None:
    """The `which`-th write of ckpt_last.pt (1-based) dies after `limit` bytes."""
    real, count = files.open_new, [0]

    def open_new(path):
        f = real(path)
        if path.name.startswith(f".{trainer.LAST}.tmp"):
            count[0] += 1
            if count[0] == which:
                return DieAfter(f, limit, kill)
        return f
    monkeypatch.setattr(files, "open_new", open_new)


KILLED_RUN = textwrap.dedent("""
    import sys, pytest
    sys.path.insert(0, {root!r})
    from tests import test_checkpoint_faults as t
    monkeypatch = pytest.MonkeyPatch()
    t.fault_in_write(monkeypatch, which={which}, limit={limit}, kill=True)
    t.METHODS[{method!r}][0].main({argv!r})
    """)


def tensors_equal(a, b, where: str = "") -> list[str]:
    """The places where two nested checkpoint values differ (every tensor and array compared exactly)."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b) else [where]
    if isinstance(a, np.ndarray):
        return [] if np.array_equal(a, b) else [where]
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{where} keys"]
        return [d for k in a for d in tensors_equal(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in tensors_equal(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def assert_same_training_state(a: dict, b: dict) -> None:
    for key in ("epoch", "step", "encoder", "modules", "optimizers", "per_process"):
        assert tensors_equal(a[key], b[key], key) == [], f"{key} differs after resume"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_kill_inside_a_checkpoint_write_loses_nothing_and_resume_is_exact(method, tiny_cache, tmp_path):
    """kill -9 after 4 KiB of the second ckpt_last.pt write (the old trainer had already renamed the first one
    to ckpt_prev.pt: --resume found nothing and a fresh rerun deleted it). The first checkpoint is still
    ckpt_last.pt; --resume from it ends with every tensor equal to an uninterrupted run's (difference 0)."""
    module, tiny = METHODS[method]
    straight = tmp_path / "straight"
    module.main(tiny(tiny_cache, straight, *EVERY_EPOCH))
    killed = tmp_path / "killed"
    argv = tiny(tiny_cache, killed, *EVERY_EPOCH)
    code = KILLED_RUN.format(root=str(ROOT), which=2, limit=4096, method=method, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -9, done.stderr[-2000:]
    assert [p.name for p in killed.glob(".ckpt_last.pt.tmp*")] != []  # the kill left half a file behind
    first = files.load_checkpoint(killed / trainer.LAST)
    steps_per_epoch = files.load_checkpoint(straight / trainer.LAST)["step"] // 3
    assert (first["epoch"], first["step"]) == (1, steps_per_epoch)  # the complete one is still there
    with pytest.raises(FileExistsError, match="holds checkpoints of an earlier run.*--resume.*--overwrite"):
        module.main(argv)  # a fresh rerun refuses to delete it
    module.main(argv + ["--resume"])
    assert_same_training_state(files.load_checkpoint(straight / trainer.LAST),
                               files.load_checkpoint(killed / trainer.LAST))
    assert not list(killed.glob(".*.tmp*")) and not (killed / trainer.PREVIOUS).exists()  # temp and prev cleaned


def test_a_full_disk_inside_a_checkpoint_write_keeps_the_last_one_and_resume_is_exact(tmp_path, monkeypatch):
    """ENOSPC after 100 bytes of the second write: one line that says so and names the file, no temp left,
    the first checkpoint intact as ckpt_last.pt; --resume then ends equal to a straight run."""
    straight = trainer.train("toy", toy_cfg(tmp_path / "a", epochs=3), toy_build())
    with monkeypatch.context() as patch:
        fault_in_write(patch, which=2, limit=100)
        with pytest.raises(OSError, match=r"ckpt_last.pt: could not be written \(no space left on device"):
            trainer.train("toy", toy_cfg(tmp_path / "b", epochs=3), toy_build())
    run = tmp_path / "b" / "run"
    assert sorted(p.name for p in run.iterdir()) == ["ckpt_last.pt", "config.yaml", "environment.txt", "log.csv"]
    assert files.load_checkpoint(run / trainer.LAST)["step"] == 3
    trainer.train("toy", toy_cfg(tmp_path / "b", epochs=3), toy_build(), resume=run / trainer.LAST)
    assert_same_training_state(files.load_checkpoint(straight["out_dir"] / trainer.LAST),
                               files.load_checkpoint(run / trainer.LAST))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_falls_back_to_ckpt_prev_and_says_why(tmp_path, capsys, damage):
    """ckpt_last.pt missing (a kill where the old one could only be renamed away) or truncated (a copy that
    stopped half way): --resume takes ckpt_prev.pt, says which file and why, and ends equal to a straight run."""
    straight = trainer.train("toy", toy_cfg(tmp_path / "a", epochs=3), toy_build())
    cfg = toy_cfg(tmp_path / "b", epochs=3, max_steps=6)
    run = trainer.train("toy", cfg, toy_build())["out_dir"]
    os.link(run / trainer.LAST, run / trainer.PREVIOUS)  # step 6 as ckpt_prev.pt
    if damage == "missing":
        (run / trainer.LAST).unlink()
    else:
        data = (run / trainer.LAST).read_bytes()
        (run / trainer.LAST).unlink()
        (run / trainer.LAST).write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    trainer.train("toy", toy_cfg(tmp_path / "b", epochs=3), toy_build(), resume=run / trainer.LAST)
    said = capsys.readouterr()
    why = "is missing" if damage == "missing" else "is unreadable"
    assert f"resume: ckpt_last.pt {why}" in said.err
    assert f"taking {run / trainer.PREVIOUS} (epoch 2, step 6)" in said.err
    assert "resumed from ckpt_prev.pt at epoch 2, step 6" in said.out
    assert_same_training_state(files.load_checkpoint(straight["out_dir"] / trainer.LAST),
                               files.load_checkpoint(run / trainer.LAST))
    assert not (run / trainer.PREVIOUS).exists()


def test_a_checkpoint_is_complete_under_a_resumable_name_at_every_rename(tmp_path, monkeypatch):
    """Stop the write at each point between "new file complete" and "old file retired": at every one of them a
    complete checkpoint is found by --resume's rule (ckpt_last.pt, else ckpt_prev.pt)."""
    seen = []
    real_replace = os.replace

    def look(src, dst):
        run = tmp_path / "run"
        for name in (trainer.LAST, trainer.PREVIOUS):
            try:
                seen.append(files.load_checkpoint(run / name)["step"])
                break
            except (FileNotFoundError, ValueError):
                continue
        else:
            seen.append(None)
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", look)
    trainer.train("toy", toy_cfg(tmp_path, epochs=3), toy_build())
    first_write = seen.index(3)
    assert None not in seen[first_write:] and seen[first_write:] != []


def test_a_fresh_run_never_overwrites_an_earlier_runs_checkpoints(tmp_path):
    """One line naming --resume and --overwrite; --overwrite starts over (the old checkpoints deleted)."""
    argv = ["--config", "config/demo_byola.yaml", f"train.out_dir={tmp_path}"]
    (tmp_path / "ckpt_prev.pt").write_bytes(b"an earlier run's checkpoint")
    done = subprocess.run([sys.executable, "pretrain_byola.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and done.stderr.strip() == (
        f"pretrain_byola.py: error: {tmp_path} holds checkpoints of an earlier run (ckpt_prev.pt): continue it with "
        "--resume, or start over with --overwrite (deletes them)")
    assert (tmp_path / "ckpt_prev.pt").read_bytes() == b"an earlier run's checkpoint"
    trainer.train("toy", toy_cfg(tmp_path / "t"), toy_build())
    (tmp_path / "t" / "run" / "ckpt_epoch001.pt").write_bytes(b"old")
    trainer.train("toy", toy_cfg(tmp_path / "t"), toy_build(), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "t" / "run").glob("ckpt*")) == [trainer.LAST]
