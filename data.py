"""Datasets over a feature cache written by preprocess.py.

The cache is the contract between preprocessing and everything else:

    CACHE/manifest.csv      one row per clip: id, logmel, wave, label, split, fold, duration, source, extras
    CACHE/logmel/<id>.npy   float32 [64, T] log-mel (SPEC A1)
    CACHE/wave/<id>.npy     float32 [L] 16 kHz waveform (only with preprocess.py --waveform)

    df = read_manifest("cache/esc50")
    train = select(df, folds=[1, 2, 3, 4])
    labels = LabelMap.from_labels(df.label)
    ds = LogMelCrops("cache/esc50", train, labels, frames=96, random_crop=True)
    logmel, y = ds[0]   # [1, 64, 96], int

Arrays are opened with np.load(mmap_mode="r") so that a data loader only touches the frames it
crops. `pack_logmels(cache)` (or `preprocess.py --pack`) also writes all log-mels into one time-major
memory map, CACHE/packed/logmel.npy [sum T, F] with CACHE/packed/index.npz (ids, offsets, lengths);
LogMelCrops then slices that one map instead of opening a file per clip (see `bench.py loader`).
Cropping follows SPEC B3 (EVAR): shorter clips are zero-padded on the right; longer ones are
cropped at random for training and from the start for evaluation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from audio import LOG_SILENCE, fix_length

MANIFEST_COLUMNS = ["id", "logmel", "wave", "label", "split", "fold", "duration", "source"]


def read_manifest(cache: str | os.PathLike) -> pd.DataFrame:
    """Read CACHE/manifest.csv with stable dtypes (label and split as str, fold as nullable int)."""
    path = Path(cache) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run preprocess.py to build the cache first")
    df = pd.read_csv(path, dtype={"id": str, "label": str, "split": str, "logmel": str, "wave": str},
                     keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
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
    """Crop or right-pad [F, T] to [F, frames]; the crop start is random or 0 (SPEC B3).

    Padding is log-mel silence (LOG_SILENCE), as if the waveform had been zero-padded (EVAR).
    """
    total = logmel.shape[-1]
    start = 0
    if random_crop and total > frames:
        start = int((rng or np.random.default_rng()).integers(0, total - frames + 1))
    return np.asarray(fix_length(logmel, frames, start, value=LOG_SILENCE), dtype=np.float32)


PACKED_DIR = "packed"


def pack_logmels(cache: str | os.PathLike, df: pd.DataFrame | None = None) -> Path:
    """Concatenate every clip's log-mel [F, T] into CACHE/packed/logmel.npy [sum T, F] (time-major, so a
    crop is one contiguous block) plus index.npz (ids, offsets, lengths); atomic; returns the folder."""
    cache = Path(cache)
    df = read_manifest(cache) if df is None else df
    lengths = np.array([load_array(cache, p).shape[1] for p in df["logmel"]], dtype=np.int64)
    n_mels = load_array(cache, df["logmel"].iloc[0]).shape[0]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    folder = cache / PACKED_DIR
    folder.mkdir(exist_ok=True)
    tmp = folder / f".logmel.npy.tmp{os.getpid()}"
    packed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(int(lengths.sum()), n_mels))
    for path, offset, length in zip(df["logmel"], offsets, lengths):
        packed[offset:offset + length] = load_array(cache, path).T
    packed.flush()
    del packed
    with open(folder / f".index.npz.tmp{os.getpid()}", "wb") as f:
        np.savez(f, ids=df["id"].to_numpy(dtype=str), offsets=offsets, lengths=lengths)
    os.replace(tmp, folder / "logmel.npy")  # the map first, then the index that makes it valid
    os.replace(folder / f".index.npz.tmp{os.getpid()}", folder / "index.npz")
    return folder


def open_packed(cache: str | os.PathLike, ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(memmap [sum T, F], offsets, lengths) for `ids` when CACHE/packed holds all of them, else None."""
    folder = Path(cache) / PACKED_DIR
    if not (folder / "index.npz").exists() or not (folder / "logmel.npy").exists():
        return None
    index = np.load(folder / "index.npz")
    row = {cid: i for i, cid in enumerate(index["ids"].tolist())}
    if any(cid not in row for cid in ids):
        return None
    rows = np.array([row[cid] for cid in ids], dtype=np.int64)
    return np.load(folder / "logmel.npy", mmap_mode="r"), index["offsets"][rows], index["lengths"][rows]


class _CacheDataset(Dataset):
    column = ""

    def __init__(self, cache: str | os.PathLike, df: pd.DataFrame, labels: LabelMap | None = None,
                 random_crop: bool = False):
        self.cache, self.df = Path(cache), df.reset_index(drop=True)
        if self.column not in self.df or (self.df[self.column] == "").any():
            raise ValueError(f"{self.cache}: manifest has no '{self.column}' features for every row"
                             + (" (rebuild with preprocess.py --waveform)" if self.column == "wave" else ""))
        self.paths = self.df[self.column].tolist()
        self.targets = labels.encode(self.df["label"]) if labels else np.full(len(self.df), -1)
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self) -> np.random.Generator:
        # torch's per-worker seed makes crops reproducible under torch.manual_seed, workers or not
        return np.random.default_rng(torch.randint(0, 2**62, ()).item())


class LogMelCrops(_CacheDataset):
    """(logmel [1, F, frames] float32 tensor, label index) items; frames=None keeps the whole clip.

    Reads CACHE/packed when it holds every clip (one memory map, no file opened per item), else the
    per-clip files.
    """

    column = "logmel"

    def __init__(self, cache, df, labels=None, frames: int | None = 96, random_crop: bool = False,
                 use_packed: bool = True):
        super().__init__(cache, df, labels, random_crop)
        self.frames = frames
        self.packed = open_packed(self.cache, self.df["id"].tolist()) if use_packed else None

    def _clip(self, i: int) -> np.ndarray:
        """Clip i's whole log-mel [F, T] as a view of the packed map or of its memory-mapped file."""
        if self.packed is None:
            return load_array(self.cache, self.paths[i])
        packed, offsets, lengths = self.packed
        return packed[offsets[i]:offsets[i] + lengths[i]].T

    def __getitem__(self, i: int):
        logmel = self._clip(i)
        if self.frames is not None:
            rng = self._rng() if self.random_crop else None
            logmel = crop_frames(logmel, self.frames, self.random_crop, rng)
        return torch.from_numpy(np.array(logmel, dtype=np.float32))[None], int(self.targets[i])


class WaveClips(_CacheDataset):
    """(wave [samples] float32 tensor, label index) items of a fixed length (SPEC B3 crop/pad)."""

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
                 seed: int = 0) -> tuple[float, float]:
    """Scalar mean and std (ddof 0) over up to `max_clips` log-mels, as BYOL-A v2 PrecomputedNorm."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(df))[:max_clips]
    total = total_sq = count = 0.0
    for r in rows:
        x = load_array(cache, df["logmel"].iloc[r]).astype(np.float64)
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


class RatioBatches:
    """Global batches with a fixed labelled/unlabelled ratio (CLAR's stratified sampling, SPEC A3).

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
