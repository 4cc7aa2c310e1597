"""Datasets over a feature cache written by preprocess.py.

The cache is the contract between preprocessing and everything else:

    CACHE/manifest.csv      one row per clip: id, logmel, wave, label, split, fold, duration, source, extras
    CACHE/logmel/<id>.npy   float32 [64, T] log-mel (the seed's front end, EVAR evar/ar_base.py)
    CACHE/wave/<id>.npy     float32 [L] 16 kHz waveform (only with preprocess.py --waveform)

    df = read_manifest("cache/esc50")
    train = select(df, folds=[1, 2, 3, 4])
    labels = LabelMap.from_labels(df.label)
    ds = LogMelCrops("cache/esc50", train, labels, frames=96, random_crop=True)
    logmel, y = ds[0]   # [1, 64, 96], int

Arrays are opened with np.load(mmap_mode="r") so that a data loader only touches the frames it
crops. `preprocess.py --pack` (its workers, as they go) or `pack_logmels(cache)` also write all log-mels
time-major into shard files CACHE/packed/logmel-*.bin of up to 2 GiB, [sum T, F] each, with
CACHE/packed/index.npz (ids, shard, offsets, lengths, files, n_mels, dtype); LogMelCrops then slices those
memory maps instead of opening a file per clip (see `bench.py loader` and `bench.py scale`). Log-mels may be
float16 (preprocess.py --dtype float16); every dataset returns float32.
Cropping follows EVAR (nttcslab/eval-audio-repr data.py): shorter clips are zero-padded on the right; longer ones are
cropped at random for training and from the start for evaluation.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from audio import LOG_SILENCE, fix_length
from files import atomic_write

MANIFEST_COLUMNS = ["id", "logmel", "wave", "label", "split", "fold", "duration", "source"]


def cache_params(folder: str | os.PathLike) -> dict:
    """The cache's preprocess.json params; without the file (a cache written by hand), 16 kHz and hop 160
    (the seed's front end, EVAR evar/ar_base.py) with a printed warning, and data set None (not checked)."""
    path = Path(folder) / "preprocess.json"
    if not path.is_file():
        print(f"warning: {path}: not found; assuming 16000 Hz and log-mel hop 160, data set not checked",
              file=sys.stderr)
        return {"dataset": None, "sample_rate": 16000, "logmel": {"hop_length": 160}}
    try:
        params = json.loads(path.read_text())["params"]
        int(params["sample_rate"]), int(params["logmel"]["hop_length"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: unreadable (no params.sample_rate / params.logmel.hop_length); "
                         "rebuild the cache with preprocess.py") from None
    return params


TRAIN_COLUMNS = ["id", "logmel", "split"]  # all a log-mel pretraining set reads (start-up: docs/scale.md)


def read_manifest(cache: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read CACHE/manifest.csv with stable dtypes (label and split as str, fold as nullable int); `columns`
    reads only those (a 2 M-clip manifest opens in about 3 s with TRAIN_COLUMNS, 5 s whole)."""
    path = Path(cache) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run preprocess.py to build the cache first")
    wanted = MANIFEST_COLUMNS if columns is None else columns
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    df = pd.read_csv(path, dtype={"id": str, "label": str, "split": str, "logmel": str, "wave": str},
                     keep_default_na=False, usecols=None if columns is None else columns)
    if "fold" in df:
        df["fold"] = pd.to_numeric(df["fold"], errors="coerce").astype("Int64")
    return df


def select(df: pd.DataFrame, split: str | list[str] | None = None, folds: list[int] | None = None,
           where: dict | None = None) -> pd.DataFrame:
    """Rows of the given split(s) and/or fold(s), and with column == value for each item of `where`."""
    mask = pd.Series(True, index=df.index)
    if split is not None:
        mask &= df["split"].isin([split] if isinstance(split, str) else split)
    if folds is not None:
        mask &= df["fold"].isin(folds)
    for column, value in (where or {}).items():
        mask &= df[column].astype(str) == str(value)
    return df[mask].reset_index(drop=True)


def assign_splits(labels: list[str], percent: tuple[int, int, int], seed: int = 0) -> list[str]:
    """train / valid / test for each clip of a data set that has no split of its own (preprocess.py --split), in
    `percent` (summing to 100), stratified: each class's clips, in the given order, are shuffled by
    numpy.random.default_rng(seed) (classes in sorted order) and the first round(n * test / 100) go to test, the
    next round(n * valid / 100) to valid, the rest to train. Unlabelled clips ("") all go to train: they can
    only serve pretraining, and `data.split=train` keeps pretraining off the valid and test clips."""
    if len(percent) != 3 or sum(percent) != 100 or min(percent) < 0:
        raise ValueError(f"split percentages train,valid,test must be three numbers >= 0 summing to 100, "
                         f"got {','.join(map(str, percent))}")
    out = ["train"] * len(labels)
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for label in sorted(by_label):
        if label == "":
            continue
        idx = [by_label[label][j] for j in rng.permutation(len(by_label[label]))]
        n_test, n_valid = round(len(idx) * percent[2] / 100), round(len(idx) * percent[1] / 100)
        for k, i in enumerate(idx):
            out[i] = "test" if k < n_test else "valid" if k < n_test + n_valid else "train"
    return out


@dataclass
class LabelMap:
    """Class name <-> index, sorted by name so that every process and run agrees."""

    names: list[str]

    @classmethod
    def from_labels(cls, labels) -> LabelMap:
        return cls(sorted({str(x) for x in labels if str(x) != ""}))

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, labels) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.names)}
        return np.array([index.get(str(x), -1) for x in labels], dtype=np.int64)


def stratified_subset(labels, fraction: float | None = None, per_class: int | None = None,
                      seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified subset: `fraction` of each class (at least one) or `per_class` items.

    Reproducible for a given seed; a larger fraction with the same seed contains the smaller one.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n = per_class if per_class is not None else max(1, int(round(fraction * len(members))))
        keep.append(members[:min(n, len(members))])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def load_array(cache: str | os.PathLike, relpath: str) -> np.ndarray:
    """Memory-map one cached array."""
    path = Path(cache) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path}: listed in {Path(cache) / 'manifest.csv'} but missing; "
                                "re-run preprocess.py with the same arguments to rebuild it")
    return np.load(path, mmap_mode="r")


def crop_frames(logmel: np.ndarray, frames: int, random_crop: bool,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop or right-pad [F, T] to [F, frames]; the crop start is random or 0 (nttcslab/eval-audio-repr).

    Padding is log-mel silence (LOG_SILENCE), as if the waveform had been zero-padded (EVAR).
    """
    total = logmel.shape[-1]
    start = 0
    if random_crop and total > frames:
        start = int((rng or np.random.default_rng()).integers(0, total - frames + 1))
    return np.asarray(fix_length(logmel, frames, start, value=LOG_SILENCE), dtype=np.float32)


PACKED_DIR = "packed"
SHARD_BYTES = 2 << 30  # a pack shard file is closed once it holds 2 GiB


class PackWriter:
    """Appends log-mels [F, T] time-major ([T, F], so a crop is one contiguous block) to raw shard files
    CACHE/packed/logmel-<tag>-<pid>-<k>.bin of at most `shard_bytes` each. One writer per process, so that
    preprocessing workers pack as they go; `append` returns the clip's (file name, frame offset, frames)."""

    def __init__(self, folder: str | os.PathLike, tag: str, dtype: str = "float32", shard_bytes: int | None = None):
        self.folder, self.tag, self.dtype = Path(folder), tag, np.dtype(dtype)
        self.shard_bytes = shard_bytes or SHARD_BYTES
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path: Path | None = None
        self.k = 0

    def _next_file(self) -> Path:
        while True:
            self.k += 1
            path = self.folder / f"logmel-{self.tag}-{os.getpid()}-{self.k:03d}.bin"
            if not path.exists():
                return path

    def append(self, logmel: np.ndarray) -> tuple[str, int, int]:
        block = np.ascontiguousarray(logmel.T, dtype=self.dtype)
        if self.path is None or self.path.stat().st_size + block.nbytes > self.shard_bytes:
            self.path = self._next_file()
            self.path.touch()
        offset = self.path.stat().st_size // (block.shape[1] * self.dtype.itemsize)
        with open(self.path, "ab") as f:
            f.write(block.tobytes())
        return self.path.name, int(offset), int(block.shape[0])


def write_pack_index(folder: Path, name: str, entries: dict[str, tuple[str, int, int]], ids: list[str],
                     n_mels: int, dtype: str) -> None:
    """Write packed/<name> atomically for the `ids` that have an entry (id -> (file, frame offset, frames)):
    npz of ids, shard (file number per clip), offsets, lengths, files, n_mels, dtype."""
    ids = [cid for cid in ids if cid in entries]
    files = sorted({entries[cid][0] for cid in ids})
    number = {f: i for i, f in enumerate(files)}
    atomic_write(folder / name, lambda f: np.savez(
        f, ids=np.array(ids, dtype=str), files=np.array(files, dtype=str),
        shard=np.array([number[entries[c][0]] for c in ids], dtype=np.int32),
        offsets=np.array([entries[c][1] for c in ids], dtype=np.int64),
        lengths=np.array([entries[c][2] for c in ids], dtype=np.int32), n_mels=n_mels, dtype=dtype))


def read_pack_index(path: Path) -> dict[str, tuple[str, int, int]]:
    """id -> (file, frame offset, frames) of one sharded pack index."""
    index = np.load(path)
    if "files" not in index:
        return {}
    files = index["files"].tolist()
    return {cid: (files[f], int(o), int(n)) for cid, f, o, n in
            zip(index["ids"].tolist(), index["shard"].tolist(), index["offsets"].tolist(), index["lengths"].tolist())}


def pack_logmels(cache: str | os.PathLike, df: pd.DataFrame | None = None, dtype: str | None = None) -> Path:
    """Pack every clip's per-clip log-mel file into CACHE/packed (see PackWriter) and write index.npz; for caches
    built without preprocess.py --pack, which packs as it goes. Returns the folder."""
    cache = Path(cache)
    df = read_manifest(cache) if df is None else df
    first = load_array(cache, df["logmel"].iloc[0])
    folder = cache / PACKED_DIR
    shutil.rmtree(folder, ignore_errors=True)  # a full repack
    writer = PackWriter(folder, "all", dtype or str(first.dtype))
    entries = {cid: writer.append(load_array(cache, path)) for cid, path in zip(df["id"], df["logmel"])}
    write_pack_index(folder, "index.npz", entries, df["id"].tolist(), first.shape[0], str(writer.dtype))
    return folder


class Packed:
    """Read access to CACHE/packed for a list of ids: clip(i) = the i-th id's log-mel [F, T] (a view).

    The compact index: per clip only its shard number, frame offset and frame count (int32 + int64 + int32 = 16
    bytes), in numpy arrays that forked loader workers share instead of copying. Shard files are memory-mapped
    (`clip`) or read with one pread of just the crop (`crop_pread`). Also reads the single-file layout of earlier
    versions (packed/logmel.npy + index.npz with ids/offsets/lengths).
    """

    def __init__(self, maps: list[np.ndarray], file: np.ndarray, offsets: np.ndarray, lengths: np.ndarray):
        self.maps, self.file, self.offsets, self.lengths = maps, file, offsets, lengths
        self.arrays = [np.asarray(m) for m in maps]  # plain views of the maps: slicing them costs less
        self._fds: dict[int, int] = {}  # per process: opened lazily, so that forked workers open their own
        self._pid = -1

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes of the per-clip index arrays."""
        return self.file.nbytes + self.offsets.nbytes + self.lengths.nbytes

    @property
    def frame_bytes(self) -> int:
        return self.maps[0].shape[1] * self.maps[0].dtype.itemsize

    @property
    def pack_bytes(self) -> int:
        return sum(m.nbytes for m in self.maps)

    def clip(self, i: int) -> np.ndarray:
        offset = self.offsets[i]
        return self.arrays[self.file[i]][offset:offset + self.lengths[i]].T

    def _fd(self, shard: int, direct: bool = False) -> int | None:
        """This process's descriptor of a shard (opened again after a fork). `direct`: the O_DIRECT one (reads that
        bypass the page cache), or None where the platform or the file system refuses O_DIRECT (said once; the
        reads fall back to buffered pread)."""
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        key = -1 - shard if direct else shard  # the O_DIRECT descriptors beside the buffered ones
        if key not in self._fds:
            path = self.maps[shard].filename
            self._fds[key] = open_direct(path) if direct else os.open(path, os.O_RDONLY)
        return self._fds[key]

    def crop_pread(self, i: int, start: int, frames: int) -> np.ndarray:
        """Frames [start, start + frames) of clip i as [F, frames] (frames within the clip), read with one pread:
        the kernel reads just these bytes, where a memory map may read ahead far past a random crop."""
        shard, m = int(self.file[i]), self.maps[int(self.file[i])]
        size = frames * self.frame_bytes
        buf = os.pread(self._fd(shard), size, m.offset + int(self.offsets[i] + start) * self.frame_bytes)
        if len(buf) != size:
            raise OSError(f"{m.filename}: short read of clip {i} (pack truncated?); rebuild with preprocess.py --pack")
        return np.frombuffer(buf, dtype=m.dtype).reshape(frames, m.shape[1]).T

    def read_crops(self, indices: np.ndarray, starts: np.ndarray, counts: np.ndarray, out: np.ndarray,
                   threads: int = 1, direct: bool = False) -> None:
        """Frames [starts[k], starts[k] + counts[k]) of clip indices[k] into out[k, :counts[k]] (out: [B, frames, F]
        time-major, the pack's dtype), one preadv each straight into `out`, `threads` reads in flight (preadv
        releases the GIL: the disk works on several random reads at once). `direct`: O_DIRECT reads of the
        4 KB-aligned span around each crop into an aligned buffer, the crop's bytes copied out (about half the
        kernel time of a cold buffered read; no page cache); buffered pread where O_DIRECT is refused."""
        shards = self.file[indices]
        fds = {int(s): self._fd(int(s)) for s in np.unique(shards)}  # opened here, not in the reading threads
        dfds = {s: self._fd(s, direct=True) if direct and _DIRECT["ok"] else None for s in fds}
        bases = np.array([m.offset for m in self.maps], dtype=np.int64)[shards]
        where = bases + (self.offsets[indices] + starts) * self.frame_bytes
        jobs = [(fds[s], dfds[s], out[k, :c], o, c * self.frame_bytes)
                for k, (s, o, c) in enumerate(zip(shards.tolist(), where.tolist(), counts.tolist()))]

        def read(part: list) -> None:
            for fd, dfd, view, offset, size in part:
                if dfd is not None and _DIRECT["ok"] and read_direct(dfd, view, offset, size):
                    continue
                if os.preadv(fd, [view], offset) != size:
                    raise _short_read(offset)

        if threads > 1 and len(jobs) > 1:
            list(_read_pool(threads).map(read, [jobs[t::threads] for t in range(threads)]))
        else:
            read(jobs)

    def will_need(self, first: int, last: int) -> None:
        """Ask the kernel to read clips first..last (consecutive in one shard) in the background, in one sequential
        read (posix_fadvise WILLNEED); the page cache it fills is shared by every loader worker."""
        shard = int(self.file[first])
        begin = self.maps[shard].offset + int(self.offsets[first]) * self.frame_bytes
        end = self.maps[shard].offset + int(self.offsets[last] + self.lengths[last]) * self.frame_bytes
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd(shard), begin, end - begin, os.POSIX_FADV_WILLNEED)

    def blocks(self, block_clips: int) -> list[np.ndarray]:
        """The clips in pack order (shard, then offset) cut into blocks of up to `block_clips` consecutive clips;
        a block never spans two shards. Each block is an array of indices into this Packed."""
        order = np.lexsort((self.offsets, self.file))
        cuts = np.flatnonzero(np.diff(self.file[order])) + 1  # shard boundaries
        blocks = []
        for run in np.split(order, cuts):
            blocks += [run[k:k + block_clips] for k in range(0, len(run), block_clips)]
        return blocks


_POOL: dict[str, object] = {}


def _read_pool(threads: int):
    """This process's thread pool for reads in flight (made again after a fork: threads do not survive one)."""
    from concurrent.futures import ThreadPoolExecutor
    if _POOL.get("pid") != (os.getpid(), threads):
        _POOL.update(pid=(os.getpid(), threads), pool=ThreadPoolExecutor(threads, thread_name_prefix="pread"))
    return _POOL["pool"]


DIRECT_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffers aligned to the logical block size (4 KB covers it)
_DIRECT = {"ok": True}  # False once O_DIRECT was refused in this process (and in workers forked after that)
_BUFFERS = threading.local()  # one page-aligned buffer per reading thread


def _short_read(offset: int) -> OSError:
    return OSError(f"short read at byte {offset} of a pack shard (pack truncated?); rebuild it with preprocess.py "
                   "--pack")


def _direct_refused(path: str, error: BaseException | str) -> None:
    if _DIRECT["ok"]:
        _DIRECT["ok"] = False
        warnings.warn(f"{path}: O_DIRECT reads refused ({error}); reading the pack with buffered pread instead",
                      RuntimeWarning, stacklevel=3)


def open_direct(path: str | os.PathLike) -> int | None:
    """A read-only O_DIRECT descriptor of `path`, or None (said once) where the platform has no O_DIRECT or the
    file system refuses it (tmpfs, some network file systems)."""
    if not _DIRECT["ok"]:
        return None
    if not hasattr(os, "O_DIRECT"):
        _direct_refused(str(path), "not available on this platform")
        return None
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as error:
        _direct_refused(str(path), error)
        return None


def read_direct(fd: int, view: np.ndarray, offset: int, size: int) -> bool:
    """Bytes [offset, offset + size) of the O_DIRECT descriptor `fd` into the contiguous array `view`: one read
    of the aligned span that covers them into this thread's page-aligned buffer, then a copy. False (nothing
    read; said once) where the file system refuses the read."""
    begin = offset - offset % DIRECT_ALIGN
    span = -(-(offset + size) // DIRECT_ALIGN) * DIRECT_ALIGN - begin
    buf = getattr(_BUFFERS, "buf", None)
    if buf is None or len(buf) < span:
        buf = _BUFFERS.buf = mmap.mmap(-1, span)  # anonymous maps are page-aligned
    try:
        got = os.preadv(fd, [memoryview(buf)[:span]], begin)  # a short read only at the end of the file
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        _direct_refused(f"descriptor {fd}", error)
        return False
    if got < offset + size - begin:
        raise _short_read(offset)
    view.reshape(-1).view(np.uint8)[:] = np.frombuffer(buf, np.uint8, size, offset - begin)
    return True


def open_direct_probe(packed: Packed) -> bool:
    """Whether the pack's file system takes O_DIRECT reads: one aligned read of its first shard (said once,
    here in the training process, where it does not; the loader workers then read with buffered pread)."""
    fd = open_direct(packed.maps[0].filename)
    if fd is None:
        return False
    try:
        return read_direct(fd, np.empty(1, np.uint8), 0, 1)
    finally:
        os.close(fd)


def open_packed(cache: str | os.PathLike, ids: list[str]) -> Packed | None:
    """The packed log-mels of `ids` when CACHE/packed/index.npz holds all of them, else None."""
    folder = Path(cache) / PACKED_DIR
    if not (folder / "index.npz").exists():
        return None
    index = np.load(folder / "index.npz")
    rows = pd.Index(index["ids"]).get_indexer(pd.Index(ids, dtype=object))
    if len(rows) and rows.min() < 0:
        return None
    if "files" not in index:  # single-file layout
        if not (folder / "logmel.npy").exists():
            return None
        maps, file = [np.load(folder / "logmel.npy", mmap_mode="r")], np.zeros(len(rows), dtype=np.int32)
    else:
        n_mels, dtype = int(index["n_mels"]), np.dtype(str(index["dtype"]))
        maps = []
        for name in index["files"].tolist():
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {folder / 'index.npz'} but missing; re-run "
                                        "preprocess.py --pack with the same arguments to rebuild the pack")
            frames = path.stat().st_size // (n_mels * dtype.itemsize)
            maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(frames, n_mels)))
        file = index["shard"][rows]
    return Packed(maps, file, index["offsets"][rows], index["lengths"][rows])


class _CacheDataset(Dataset):
    column = ""

    def __init__(self, cache: str | os.PathLike, df: pd.DataFrame, labels: LabelMap | None = None,
                 random_crop: bool = False):
        self.cache, self.df = Path(cache), df.reset_index(drop=True)
        if self.column not in self.df or (self.df[self.column] == "").any():
            raise ValueError(f"{self.cache}: manifest has no '{self.column}' features for every row"
                             + (" (rebuild with preprocess.py --waveform)" if self.column == "wave" else ""))
        self.paths = self.df[self.column].array  # no per-process copy of N path strings
        self.targets = labels.encode(self.df["label"]) if labels else np.full(len(self.df), -1)
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.targets)

    def _rng(self) -> np.random.Generator:
        # torch's per-worker seed makes crops reproducible under torch.manual_seed, workers or not
        return np.random.default_rng(torch.randint(0, 2**62, ()).item())


CROP_DRAW = 0x63726F70  # "crop": keys the batch reads' crop draw apart from the other draws keyed by (seed, step)
READ_THREADS = 4  # reads in flight per loader process in batch reads with pread (bench.py scale)


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 tensor; in a DataLoader worker in shared memory (as torch's default_collate allocates its
    output), so that handing the batch to the training process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape)
    return torch.empty(0).new(torch.UntypedStorage._new_shared(int(np.prod(shape)) * 4)).view(shape)


READS = ("mmap", "pread", "direct")  # LogMelCrops.read: memory map, buffered pread, O_DIRECT batch reads


class LogMelCrops(_CacheDataset):
    """(logmel [1, F, frames] float32 tensor, label index) items; frames=None keeps the whole clip.

    Reads CACHE/packed when it holds every clip (no file opened per item), else the per-clip files. With the pack,
    only the crop is read: `read="mmap"` slices the memory map, `read="pread"` reads the crop's bytes with one
    pread (no read-ahead: the better choice for random crops from a pack larger than RAM; see docs/scale.md),
    `read="direct"` too, but batch reads bypass the page cache (O_DIRECT; buffered pread where refused).
    After `use_blocks(blocks)` (block order, BlockBatches), the first read from a block asks the kernel to read the
    whole block sequentially (posix_fadvise WILLNEED), so the crops that follow come from the page cache.

    Batch reads (`batch_reads=True`; randomness.KeyedItems hands `read_batch` a whole batch): one keyed draw of all
    crop starts per batch, the crops read into one array (with pread: `read_threads` reads in flight), one
    float32 conversion per batch: about a quarter of the CPU time of item reads. They draw other crops than item
    reads (another generator), and read the same bytes as each other with mmap or pread; data.training_batches
    turns them on in block order and for a pack larger than RAM (docs/scale.md).
    """

    column = "logmel"

    def __init__(self, cache, df, labels=None, frames: int | None = 96, random_crop: bool = False,
                 use_packed: bool = True, read: str = "mmap", batch_reads: bool = False,
                 read_threads: int = READ_THREADS):
        super().__init__(cache, df, labels, random_crop)
        if read not in READS:
            raise ValueError(f"read={read!r}: expected one of {', '.join(READS)}")
        self.frames, self.read = frames, read
        self.batch_reads, self.read_threads = batch_reads, read_threads
        self.packed = open_packed(self.cache, self.df["id"].tolist()) if use_packed else None
        if self.packed is not None:  # the compact index: keep only numpy arrays, which forked workers share
            self.df, self.paths = None, None
        if batch_reads and frames is None:
            raise ValueError("batch_reads needs crops of a fixed length (frames)")
        self.blocks: list[np.ndarray] | None = None
        self._advised: set[int] = set()

    def use_blocks(self, blocks: list[np.ndarray]) -> None:
        """Read in block order: `blocks` = Packed.blocks(...) of this dataset's pack."""
        self.blocks = blocks
        self.block_of = np.empty(len(self), dtype=np.int32)
        for b, members in enumerate(blocks):
            self.block_of[members] = b

    def _clip(self, i: int) -> np.ndarray:
        """Clip i's whole log-mel [F, T] as a view of the packed map or of its memory-mapped file."""
        if self.packed is None:
            return load_array(self.cache, self.paths[i])
        return self.packed.clip(i)

    def _advise_block(self, block: int) -> None:
        if block not in self._advised:
            if len(self._advised) > 256:
                self._advised.clear()
            self._advised.add(block)
            members = self.blocks[block]
            self.packed.will_need(int(members[0]), int(members[-1]))

    def _packed_crop(self, i: int) -> np.ndarray:
        """Clip i cropped to [F, self.frames] reading only the crop's frames (same draws as crop_frames)."""
        total = int(self.packed.lengths[i])
        rng = self._rng() if self.random_crop else None  # drawn as in crop_frames, so the crops are unchanged
        start = int(rng.integers(0, total - self.frames + 1)) if rng is not None and total > self.frames else 0
        n = min(self.frames, total)
        if self.read != "mmap":
            part = self.packed.crop_pread(i, start, n)
        else:
            part = self.packed.clip(i)[:, start:start + n]
        return fix_length(np.asarray(part, dtype=np.float32), self.frames, 0, value=LOG_SILENCE)  # f32 silence

    def __getitem__(self, i: int):
        if self.blocks is not None:
            self._advise_block(int(self.block_of[i]))
        if self.packed is not None and self.frames is not None:
            logmel = self._packed_crop(i)
        else:
            logmel = self._clip(i)
            if self.frames is not None:
                rng = self._rng() if self.random_crop else None
                logmel = crop_frames(logmel, self.frames, self.random_crop, rng)
        return torch.from_numpy(np.array(logmel, dtype=np.float32))[None], int(self.targets[i])

    def crop_starts(self, totals: np.ndarray, key: tuple[int, int], positions: np.ndarray) -> np.ndarray:
        """Batch reads: the crop start of each item of one global batch. A generator keyed by (seed, step) draws
        one uniform number per global batch position 0..max(positions) (a process reading positions r::N draws
        the same numbers, a prefix of one stream) and item k takes its position's; start = floor(u x (T - frames
        + 1)), 0 for a clip of at most `frames` frames or without random_crop."""
        if not self.random_crop:
            return np.zeros(len(totals), dtype=np.int64)
        u = np.random.default_rng([*key, CROP_DRAW]).random(int(positions.max()) + 1)[positions]
        room = np.maximum(totals - self.frames, 0) + 1
        return np.minimum((u * room).astype(np.int64), room - 1)

    def read_batch(self, indices: list[int], key: tuple[int, int], positions: list[int]) -> tuple:
        """Items indices[k] of the global batch `key` = (seed, step) at global positions positions[k] (see
        crop_starts), read together and collated: (logmel [B, 1, F, frames] float32, labels [B] int64)."""
        indices, positions = np.asarray(indices, dtype=np.int64), np.asarray(positions, dtype=np.int64)
        clips = [self._clip(int(i)) for i in indices] if self.packed is None or self.read == "mmap" else None
        totals = (self.packed.lengths[indices].astype(np.int64) if clips is None
                  else np.array([c.shape[-1] for c in clips], dtype=np.int64))
        starts, counts = self.crop_starts(totals, key, positions), np.minimum(totals, self.frames)
        if self.blocks is not None:
            for block in np.unique(self.block_of[indices]).tolist():
                self._advise_block(block)
        like = self.packed.maps[0] if self.packed is not None else clips[0].T
        raw = np.empty((len(indices), self.frames, like.shape[1]), dtype=like.dtype)  # time-major, as packed
        if clips is None:
            self.packed.read_crops(indices, starts, counts, raw, self.read_threads, direct=self.read == "direct")
        else:
            for k, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
                raw[k, :c] = clips[k][:, s:s + c].T
        out = _batch_tensor((len(indices), 1, raw.shape[2], self.frames))
        out[:, 0].copy_(torch.from_numpy(raw).transpose(1, 2))  # one transposing float32 conversion per batch
        for k in np.flatnonzero(counts < self.frames).tolist():
            out[k, :, :, counts[k]:] = LOG_SILENCE  # short clips: padded with silence (crop_frames)
        return out, torch.from_numpy(self.targets[indices].astype(np.int64))


class WaveClips(_CacheDataset):
    """(wave [samples] float32 tensor, label index) items of a fixed length (nttcslab/eval-audio-repr crop/pad)."""

    column = "wave"

    def __init__(self, cache, df, labels=None, samples: int = 16000, random_crop: bool = False):
        super().__init__(cache, df, labels, random_crop)
        self.samples = samples

    def __getitem__(self, i: int):
        wave = load_array(self.cache, self.paths[i])
        start = 0
        if self.random_crop and len(wave) > self.samples:
            start = int(self._rng().integers(0, len(wave) - self.samples + 1))
        wave = np.array(fix_length(wave, self.samples, start), dtype=np.float32)
        return torch.from_numpy(wave), int(self.targets[i])


def logmel_stats(cache: str | os.PathLike, df: pd.DataFrame, max_clips: int = 10000,
                 seed: int = 0, frames: int | None = None) -> tuple[float, float]:
    """Scalar mean and std (ddof 0) over up to `max_clips` randomly chosen clips, as BYOL-A v2 calc_norm_stats
    (train_v2.py): with `frames`, over one random crop of that many frames per clip (crop_frames: what the
    training step sees; short clips padded with log-mel silence), else over whole clips."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(df))[:max_clips]
    total = total_sq = count = 0.0
    for r in rows:
        x = load_array(cache, df["logmel"].iloc[r])
        x = (x if frames is None else crop_frames(x, frames, True, rng)).astype(np.float64)
        total, total_sq, count = total + x.sum(), total_sq + (x * x).sum(), count + x.size
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))

# ----------------------------------------------------------------------------- training batches
# Every pretraining script draws its epochs as GLOBAL batches of dataset indices; trainer.py gives process r
# positions r::world of each batch, so the batches do not depend on the number of processes.


class EpochBatches:
    """len(self) = n // batch_size global batches per epoch (drop last) of a permutation seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self) -> int:
        return self.n // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return [order[b * self.batch_size:(b + 1) * self.batch_size].tolist() for b in range(len(self))]


class BlockBatches:
    """Global batches in block order, for a pack larger than the page cache (webdataset-style shard shuffling).

    Each epoch visits the blocks (`Packed.blocks`: runs of consecutive clips of one shard) in a random order and
    shuffles the clips of every `open_blocks` consecutive blocks of that order together (a shuffle buffer of
    open_blocks x block clips), so the reads stay inside a few blocks that the loader fetches sequentially.
    A pure function of (seed, epoch); every clip once per epoch; n // batch_size batches (drop last).
    What it changes for training: a batch draws from open_blocks blocks, not the whole set (see docs/scale.md).
    """

    def __init__(self, blocks: list[np.ndarray], batch_size: int, seed: int = 0, open_blocks: int = 8):
        self.blocks, self.batch_size, self.seed, self.open_blocks = blocks, batch_size, seed, open_blocks
        self.n = int(sum(len(b) for b in blocks))
        self.window = open_blocks * max(len(b) for b in blocks)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        stream = np.concatenate([self.blocks[b] for b in rng.permutation(len(self.blocks))])
        window_of = np.arange(self.n) // self.window
        order = stream[np.lexsort((rng.random(self.n), window_of))]  # shuffled inside each window
        return [order[b * self.batch_size:(b + 1) * self.batch_size].tolist() for b in range(len(self))]


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


ORDERS = ("auto", "random", "block")


def training_batches(dataset: LogMelCrops, dcfg: dict, batch_size: int, seed: int) -> EpochBatches | BlockBatches:
    """The global batch order of a log-mel pretraining set (data.order): `random` = EpochBatches (per-clip random
    order; the default while the pack fits in half the RAM), `block` = BlockBatches over blocks of
    data.block_clips clips with data.open_blocks open at once (a pack larger than that). Block order, and random
    order on a pack larger than half the RAM, read with batch reads and pread (LogMelCrops), in random order with
    O_DIRECT where the file system takes it (the crops are cold reads; block order reads ahead through the page
    cache); random order on a pack that fits reads item by item from the memory map, as before batch reads
    existed (the same crops)."""
    order = dcfg["order"]
    if order not in ORDERS:
        raise ValueError(f"data.order={order!r}: expected one of {', '.join(ORDERS)}")
    packed = dataset.packed
    too_big = packed is not None and packed.pack_bytes > physical_memory() // 2
    if order == "auto":
        order = "block" if too_big else "random"
    if order == "block" and packed is None:
        raise ValueError(f"{dataset.cache}: data.order=block needs the packed cache (preprocess.py --pack)")
    if (order == "block" or too_big) and dataset.frames is not None:
        dataset.read, dataset.batch_reads = "pread", True
        if order == "random" and open_direct_probe(packed):  # random crops, cold: O_DIRECT (docs/scale.md)
            dataset.read = "direct"
    if order == "block":
        dataset.use_blocks(packed.blocks(dcfg["block_clips"]))
        return BlockBatches(dataset.blocks, batch_size, seed, dcfg["open_blocks"])
    return EpochBatches(len(dataset), batch_size, seed)


class RatioBatches:
    """Global batches with a fixed labelled/unlabelled ratio (CLAR's stratified sampling, CLAR paper, arXiv 2010.09542).

    Each epoch both pools are shuffled with (seed, epoch). A batch of `batch_size` holds
    round(batch_size * n_labelled / n) labelled clips (at least one if any) and the rest unlabelled; a pool
    that runs out is reshuffled and reused. There are n // batch_size batches (drop last).
    """

    def __init__(self, labelled: np.ndarray, batch_size: int, seed: int = 0):
        if batch_size > len(labelled):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(labelled)} training clips")
        self.labelled_idx, self.unlabelled_idx = np.flatnonzero(labelled), np.flatnonzero(~labelled)
        self.n_labelled = int(round(batch_size * len(self.labelled_idx) / len(labelled)))
        if len(self.labelled_idx):
            self.n_labelled = min(max(self.n_labelled, 1), batch_size - (1 if len(self.unlabelled_idx) else 0))
        self.batch_size, self.seed = batch_size, seed

    def __len__(self) -> int:
        return (len(self.labelled_idx) + len(self.unlabelled_idx)) // self.batch_size

    @staticmethod
    def _stream(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        rounds = -(-count // len(pool))
        return np.concatenate([pool[rng.permutation(len(pool))] for _ in range(rounds)])[:count]

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        n_labelled, n_unlabelled = self.n_labelled, self.batch_size - self.n_labelled
        labelled = self._stream(self.labelled_idx, len(self) * n_labelled, rng)
        unlabelled = self._stream(self.unlabelled_idx, len(self) * n_unlabelled, rng)
        return [np.concatenate([labelled[b * n_labelled:(b + 1) * n_labelled],
                                unlabelled[b * n_unlabelled:(b + 1) * n_unlabelled]]).tolist()
                for b in range(len(self))]


class TrainClips(Dataset):
    """(wave [L], training target (-1 = unlabelled), true label) of each training clip (CLAR)."""

    def __init__(self, clips: WaveClips, targets: np.ndarray):
        self.clips, self.targets = clips, targets

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        wave, label = self.clips[i]
        return wave, int(self.targets[i]), label
