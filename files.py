"""Files written safely and read with clear errors.

Every write is atomic (a temp file in the same folder, flushed and fsync'd, then renamed), so a reader sees the old
complete file or the new complete one; appends never leave half a row; temp files name their writer (pid, host)
so that the stale ones of killed writers can be removed; FolderLock keeps a second writer out of a folder.
file_sha256 and load_checkpoint read what was written (provenance hashes; this package's checkpoints).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch


def _write_error(path: Path, err: Exception) -> OSError:
    """A one-line error naming the file and, when the disk is the cause, "no space left on device" and the free
    space left on it (torch reports a full disk only as "unexpected pos")."""
    full = getattr(err, "errno", None) == errno.ENOSPC or "unexpected pos" in str(err)
    try:
        free = shutil.disk_usage(path.parent).free / 2**30
        where = f"; {free:.2f} GiB free on the disk of {path.parent}"
    except OSError:
        where = ""
    cause = "no space left on device: " if full else ""
    return OSError(f"{path}: could not be written ({cause}{type(err).__name__}: {err}){where}")


def open_new(path: Path):
    """The file object an atomic write fills (binary). One place for every atomic write, so tests can inject a
    fault inside a write (a full disk, a kill after N bytes) by replacing it."""
    return open(path, "wb")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 before_replace: Callable[[], None] | None = None, sync: bool = True) -> None:
    """write(f) into a temp file in the same folder, flushed and fsync'd, then renamed onto `path`: at every
    instant `path` is either its old complete content or its new complete content. `before_replace` runs once
    the new content is complete on disk, just before the rename (trainer.LastGood retires the old checkpoint
    there, never earlier). A failed write (a full disk) removes its temp and names the file and the disk.
    sync=False skips the fsyncs (cache clips: an interrupted run redoes them; a kill still leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open_new(tmp) as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, err) from None
    if sync:
        _fsync_folder(path.parent)


def atomic_torch_save(obj, path: str | os.PathLike, before_replace: Callable[[], None] | None = None) -> None:
    """torch.save through atomic_write: readers never see half a file."""
    atomic_write(path, lambda f: torch.save(obj, f), before_replace)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


_write_fd = os.write  # append_text's write: tests replace it to inject a full disk


def append_text(text: str, path: str | os.PathLike) -> None:
    """Append `text` (a few CSV rows) to `path` in one O_APPEND write. A failed write (a full disk) cuts the file
    back to where it was, so no half row is left for the next append to run into, and names the file."""
    path, data = Path(path), text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            if _write_fd(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as err:
            os.ftruncate(fd, size)
            raise _write_error(path, err) from None
    finally:
        os.close(fd)


HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
OTHER_HOST_TEMP_SECONDS = 3600  # another machine's temp (a shared file system) is stale after an hour


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temp file an atomic write of `path` goes through: .<name>.tmp<pid>@<host><suffix>, in the same folder
    (so that the rename is atomic) and named by its writer, so that remove_stale_temps can tell a killed
    writer's temp from a live one's, also across the machines of a shared file system (SLURM array shards)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}@{HOST}{suffix}")


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temp files (.<name>.tmp<pid>[@<host>]*) that killed writers left in `folder` (a kill -9 during
    a large write can leave a file as big as the result). Kept: the temps of a process still running on this
    machine, and those of another machine younger than an hour. Returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp*"):
        m = re.search(r"\.tmp(\d+)(?:@([A-Za-z0-9-]+))?", tmp.name)
        if m and m[2] not in (None, HOST):
            if time.time() - tmp.stat().st_mtime < OTHER_HOST_TEMP_SECONDS:
                continue
        elif m and int(m[1]) != os.getpid() and _alive(int(m[1])):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22  # another user's process (or an impossible pid: not alive)
    return True


class LockHeld(RuntimeError):
    """Another writer holds a FolderLock; str(err) names the lock file and its holder (host, pid, start)."""


class FolderLock:
    """An exclusive writer's lock: a lock file holding 'host=<host> pid=<pid> started=<time>', locked with
    fcntl.flock while held, so the kernel frees it when the holder dies however it dies (kill -9).

    acquire() raises LockHeld when a live process holds the file (or when it names another machine, whose
    processes cannot be checked from here); a file left by a dead process of this machine is taken over, and
    acquire() returns a warning that says so. release() deletes the file. Use as a context manager. On a file
    system without flock (some cluster mounts) the file's host and pid alone decide."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.fd, self.warning = Path(path), None, None

    def acquire(self) -> str | None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = _flock(fd, fcntl.LOCK_EX)
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # released (and deleted) between our open and our flock: retry
                same_file = False
            if same_file:
                break
            os.close(fd)
        old = _read_fd(fd)
        held = _live_holder(old, locked)
        if held:
            os.close(fd)
            raise LockHeld(f"{self.path}: held by {held}")
        if old:
            self.warning = (f"warning: {self.path}: took over the lock of {_holder(old)}, "
                            "which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host={HOST} pid={os.getpid()} started={time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self.warning

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(path: str | os.PathLike) -> str | None:
    """'host H, pid P, started T' of the live holder of lock file `path` (FolderLock), else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        locked = _flock(fd, fcntl.LOCK_SH)
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return _live_holder(_read_fd(fd), locked)
    finally:
        os.close(fd)


def _flock(fd: int, kind: int) -> bool | None:
    """flock without waiting: True (locked), False (another process holds it), None (no flock here)."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, ENOSYS, EOPNOTSUPP: a file system without locks
        return None
    return True


def _live_holder(text: str, locked: bool | None) -> str | None:
    """Who holds a lock file with content `text`, given our flock attempt on it (see _flock); None: nobody.
    A file naming another machine counts as held: its process cannot be checked from here."""
    fields = _lock_fields(text)
    if locked is False:
        return _holder(text)
    if not text:
        return None
    if fields.get("host") != HOST:
        return f"{_holder(text)} (another machine: if that run is gone, delete the lock file)"
    pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else 0
    if locked is None and pid and pid != os.getpid() and _alive(pid):
        return _holder(text)
    return None


def _read_fd(fd: int) -> str:
    return os.pread(fd, 512, 0).decode(errors="replace").strip()


def _lock_fields(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def _holder(text: str) -> str:
    fields = _lock_fields(text)
    if "pid" not in fields:
        return f"an unknown writer ({text[:80]!r})"
    return f"host {fields.get('host', '?')}, pid {fields['pid']}, started {fields.get('started', '?')}"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (results provenance, embedding cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """torch.load of one of this package's checkpoints (they hold configs and RNG states, so not weights_only),
    with an error that names the file when it is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated file, not a torch file, unpickling errors...
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint of this package (no 'config' entry)")
    return ckpt
