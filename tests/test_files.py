"""files.py: atomic writes and checkpoints, stale temps of killed writers, the folder lock."""
import pytest
import torch

import files


def test_atomic_save_and_load_checkpoint_errors(tmp_path):
    files.atomic_torch_save({"config": {"a": 1}, "step": 3}, tmp_path / "ck" / "ckpt.pt")
    assert files.load_checkpoint(tmp_path / "ck" / "ckpt.pt")["step"] == 3
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["ckpt.pt"]  # no temp file left
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        files.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        files.load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a checkpoint of this package"):
        files.load_checkpoint(tmp_path / "other.pt")


def test_remove_stale_temps_keeps_a_live_writers_temp(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from files import remove_stale_temps, temp_path
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
        assert temp_path(tmp_path / "x.npy").name == f".x.npy.tmp{os.getpid()}@{files.HOST}"
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
        monkeypatch.setattr(files.fcntl, "flock", no_flock)
    path = tmp_path / "w.lock"
    with files.FolderLock(path) as lock:
        assert lock.warning is None and f"host={files.HOST} pid={os.getpid()} " in path.read_text()
        started = path.read_text().split("started=")[1].strip()
        mine = f"host {files.HOST}, pid {os.getpid()}, started {started}"
        assert files.lock_holder(path) == (None if flock == "none" else mine)  # without flock: our pid is no other
        if flock == "kernel":
            with pytest.raises(files.LockHeld, match=rf"w.lock: held by host {files.HOST}, pid {os.getpid()}, "):
                files.FolderLock(path).acquire()
    assert not path.exists() and files.lock_holder(path) is None
    path.write_text(f"host={files.HOST} pid={os.getppid()} started=2026-01-01T00:00:00\n")  # alive: our parent
    if flock == "none":
        with pytest.raises(files.LockHeld, match=rf"held by host {files.HOST}, pid {os.getppid()}, started 2026"):
            files.FolderLock(path).acquire()
    gone = dead_pid()
    path.write_text(f"host={files.HOST} pid={gone} started=2026-01-01T00:00:00\n")
    assert files.lock_holder(path) is None
    with files.FolderLock(path) as lock:
        assert lock.warning == (f"warning: {path}: took over the lock of host {files.HOST}, pid {gone}, started "
                                "2026-01-01T00:00:00, which is no longer running")
    path.write_text("host=node-7 pid=1 started=2026-01-01T00:00:00\n")
    with pytest.raises(files.LockHeld, match="held by host node-7, pid 1, .*another machine"):
        files.FolderLock(path).acquire()
