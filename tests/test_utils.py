"""utils.py: atomic files, checkpoints, CSV log resume, RNG."""
import random

import numpy as np
import pytest
import torch

import utils


def test_atomic_save_and_load_checkpoint_errors(tmp_path):
    utils.atomic_torch_save({"config": {"a": 1}, "step": 3}, tmp_path / "ck" / "ckpt.pt")
    assert utils.load_checkpoint(tmp_path / "ck" / "ckpt.pt")["step"] == 3
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["ckpt.pt"]  # no temp file left
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        utils.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        utils.load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a checkpoint of this package"):
        utils.load_checkpoint(tmp_path / "other.pt")


def test_csv_log_resume_drops_rows_from_the_resume_step(tmp_path):
    log = utils.CSVLog(tmp_path / "log.csv", ["step", "loss"])
    for step in range(5):
        log.write({"step": step, "loss": 1.0 / (step + 1)})
    utils.CSVLog(tmp_path / "log.csv", ["step", "loss"], resume_step=3).write({"step": 3, "loss": 0.0})
    lines = (tmp_path / "log.csv").read_text().split()
    assert lines == ["step,loss", "0,1", "1,0.5", "2,0.333333", "3,0"]


def test_rng_state_round_trip():
    utils.seed_everything(3)
    state = utils.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    utils.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_single_process_distributed_helpers_are_identities():
    x = torch.arange(4.0)
    assert utils.world_size() == 1 and utils.is_main()
    assert torch.equal(utils.all_reduce_sum(x.clone()), x) and torch.equal(utils.gather_with_grad(x), x)
    assert torch.equal(utils.gather_batch(x), x)


def test_remove_stale_temps_keeps_a_live_writers_temp(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import utils
    from utils import remove_stale_temps, temp_path
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".a.npy.tmp{live.pid}").write_bytes(b"in flight")
        (tmp_path / ".b.npy.tmp99999999").write_bytes(b"killed")
        (tmp_path / ".index.npz.tmp99999999.npz").write_bytes(b"killed")
        (tmp_path / "c.npy").write_bytes(b"done")
        other = tmp_path / ".d.npy.tmp99999999@another-node"  # a live writer elsewhere on a shared file system
        other.write_bytes(b"in flight")
        old = tmp_path / ".e.npy.tmp99999999@another-node"
        old.write_bytes(b"left by a crashed node")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        assert remove_stale_temps(tmp_path) == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.npy.tmp{live.pid}", other.name, "c.npy"]
        assert temp_path(tmp_path / "x.npy").name == f".x.npy.tmp{os.getpid()}@{utils.HOST}"
    finally:
        live.kill()
        live.wait()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("flock", ["kernel", "none"])
def test_folder_lock_holder_takeover_and_release(tmp_path, monkeypatch, flock):
    """A live holder is refused, naming host and pid; a dead holder's lock is taken over with a warning; the file
    is deleted at release. 'none': a file system without flock (ENOLCK), where the file's host and pid decide."""
    import errno
    import os
    if flock == "none":
        def no_flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")
        monkeypatch.setattr(utils.fcntl, "flock", no_flock)
    path = tmp_path / "w.lock"
    with utils.FolderLock(path) as lock:
        assert lock.warning is None and f"host={utils.HOST} pid={os.getpid()} " in path.read_text()
        started = path.read_text().split("started=")[1].strip()
        mine = f"host {utils.HOST}, pid {os.getpid()}, started {started}"
        assert utils.lock_holder(path) == (None if flock == "none" else mine)  # without flock: our pid is no other
        if flock == "kernel":
            with pytest.raises(utils.LockHeld, match=rf"w.lock: held by host {utils.HOST}, pid {os.getpid()}, "):
                utils.FolderLock(path).acquire()
    assert not path.exists() and utils.lock_holder(path) is None
    path.write_text(f"host={utils.HOST} pid={os.getppid()} started=2026-01-01T00:00:00\n")  # alive: our parent
    if flock == "none":
        with pytest.raises(utils.LockHeld, match=rf"held by host {utils.HOST}, pid {os.getppid()}, started 2026"):
            utils.FolderLock(path).acquire()
    gone = dead_pid()
    path.write_text(f"host={utils.HOST} pid={gone} started=2026-01-01T00:00:00\n")
    assert utils.lock_holder(path) is None
    with utils.FolderLock(path) as lock:
        assert lock.warning == (f"warning: {path}: took over the lock of host {utils.HOST}, pid {gone}, started "
                                "2026-01-01T00:00:00, which is no longer running")
    path.write_text("host=node-7 pid=1 started=2026-01-01T00:00:00\n")
    with pytest.raises(utils.LockHeld, match="held by host node-7, pid 1, .*another machine"):
        utils.FolderLock(path).acquire()
