"""Training infrastructure shared by the pretraining and evaluation scripts.

Schedules are plain functions of the global step (DINO style), so a resumed run needs only the
step. Checkpoints are written atomically (temp file + rename). Distributed helpers are no-ops in a
single process and work unchanged under torchrun (they read only what torch.distributed needs).
"""
from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.distributed as dist

# ----------------------------------------------------------------------------- reproducibility


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a training step draws from (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit() -> str:
    """The package's git commit (with '+dirty' for uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

# ----------------------------------------------------------------------------- files


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


class CSVLog:
    """Append rows to a CSV file; on resume, rows at or after `resume_step` are dropped first (atomically), and
    the columns are the file's followed by any new ones (a resumed run may log more, e.g. a monitor)."""

    def __init__(self, path: str | os.PathLike, fields: list[str], resume_step: int | None = None):
        self.path, self.fields = Path(path), fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            with open(self.path) as f:
                reader = csv.DictReader(f)
                kept = [r for r in reader if int(r["step"]) < resume_step]
                self.fields = list(reader.fieldnames or []) + [k for k in fields if k not in (reader.fieldnames or [])]
            text = io.StringIO()
            writer = csv.DictWriter(text, self.fields, restval="")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(text.getvalue(), self.path)
        else:
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fields).writeheader()

    def write(self, row: dict) -> None:
        text = io.StringIO()
        csv.DictWriter(text, self.fields, restval="").writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        append_text(text.getvalue(), self.path)


class NonFiniteLoss(RuntimeError):
    """Training stopped on a non-finite loss or non-finite weights (trainer.py names the step and checkpoint)."""

# ----------------------------------------------------------------------------- distributed


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1); return (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (a no-op alone); returns x."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x).div_(world_size())


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the summed gradient (SimCLR)."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [N, ...] from every process in rank order, keeping gradients; identity alone."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return _GatherWithGrad.apply(x)
    return x


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch [world * b, ...] from every process's x [b, ...], no gradient; identity alone.

    Rows come back in global position order: process r holds positions r, r + world, r + 2 world, ...
    (DistributedSampler's rank::world slicing), so `gather_batch(x)[rank::world]` is x again.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)


class _SumOverProcesses(torch.autograd.Function):
    """Sum over processes; the backward sums the upstream gradients too (every process's loss depends on
    every process's contribution), which with DDP's gradient averaging gives the global-batch gradient."""

    @staticmethod
    def forward(ctx, x):
        return all_reduce_sum(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.clone())


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm over the batch of ALL processes, for backends where torch's SyncBatchNorm does not run
    (gloo on CPU). Same parameters, buffers and state_dict keys as BatchNorm1d/2d; alone or in eval mode it
    is plain batch norm. Statistics in fp32, two passes (mean, then the centred second moment)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = all_reduce_sum(torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device))
        mean = _SumOverProcesses.apply(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = _SumOverProcesses.apply(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of `module` normalises over the global batch: torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere (torch's SyncBatchNorm refuses CPU tensors). Parameters and buffers are kept."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out.to(next(iter(module.state_dict().values())).device).train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module

# ----------------------------------------------------------------------------- keyed randomness
# Training draws that must not depend on the number of processes (augmentation parameters, crop starts,
# MSN's token mask) come from generators seeded by a key such as (seed, step, stream, global position).
# A 2-process run then draws exactly what a 1-process run on the same global batch draws, and a resumed
# run needs only the step.


def key_seed(*key: int) -> int:
    """A 63-bit seed from non-negative integers (NumPy SeedSequence: nearby keys give unrelated seeds)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> np.uint64(1))


def key_generator(*key: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with key_seed(*key)."""
    return torch.Generator(device=device).manual_seed(key_seed(*key))


class KeyedItems(torch.utils.data.Dataset):
    """Items are (index, key) pairs, key = (seed, step, global batch position): dataset[index] is read with
    torch's RNG seeded by key_seed(*key), so a clip's random crop depends on its key, not on which process or
    loader worker reads it. A dataset with `batch_reads` on gets the whole batch at once instead
    (`read_batch(indices, (seed, step), positions)`: one keyed draw per batch; data.LogMelCrops)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, key = item
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a CUDA seed with a stack trace on CUDA builds
            # (about 0.13 ms an item, more than reading the crop; bench.py scale)
            torch.default_generator.manual_seed(key_seed(*key))
            return self.dataset[index]

    @staticmethod
    def collate(items: list | tuple):
        """The DataLoader's collate_fn: torch's default_collate of a list of items; a tuple is a batch that
        read_batch collated itself."""
        return items if isinstance(items, tuple) else torch.utils.data.default_collate(items)

    def __getitems__(self, items: list) -> list | tuple:
        """A batch (torch's DataLoader calls this with the batch sampler's list): a list of items, or with
        batch reads the collated batch."""
        if not getattr(self.dataset, "batch_reads", False):
            return [self[item] for item in items]
        seed, step, _ = items[0][1]
        return self.dataset.read_batch([index for index, _ in items], (seed, step), [key[2] for _, key in items])


class KeyedBatches:
    """A batch sampler for KeyedItems: this process's batches (lists of dataset indices, the i-th at global
    batch position rank + world * i) with each index paired with its key (seed, step, position)."""

    def __init__(self, batches, seed: int, first_step: int, rank: int = 0, world: int = 1):
        self.batches, self.seed, self.first_step, self.rank, self.world = batches, seed, first_step, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for step, batch in enumerate(self.batches, self.first_step):
            yield [(int(index), (self.seed, step, self.rank + self.world * i)) for i, index in enumerate(batch)]
