"""Linear evaluation of a frozen encoder, following EVAR (nttcslab/eval-audio-repr) exactly (SPEC A4, B3).

    python linear_eval.py --ckpt runs/msn/ckpt_last.pt --task esc50
    python linear_eval.py --ckpt random:config/msn.yaml --task gtzan          # the random-init baseline
    python linear_eval.py --ckpt CKPT --task nsynth --label-fraction 0.01 --seeds 0,1,2
    python linear_eval.py --ckpt CKPT --task cache/synth_small --folds 5 eval.long=chunk probe.lr=3e-5

TASK is a task of datasets.REGISTRY (esc50, esc10, gtzan, nsynth, nsynth_pitch, sc35, sc10) or a cache folder
written by preprocess.py; a named task refuses a cache that preprocess.json says holds another data set. The
checkpoint carries its resolved config, so `models.build_encoder` rebuilds its encoder and front end
(log-mel or waveform input) with no other flag. Steps:

1. Clips at the task's unit length (ESC 5 s, GTZAN 30 s, NSynth 4 s, Speech Commands 1 s; a cache folder:
   the manifest's median duration): shorter clips are right-padded with silence, longer ones cropped at a
   random (fixed per clip) start for train/valid and from the start for test (EVAR data.py). Log-mel inputs
   are normalised with a scalar mean/std from the task's TRAIN split (EVAR ar_base.precompute; for
   cross-validation tasks, the training folds of the first held-out fold, as EVAR computes it once).
2. Embeddings `encoder.embed(x, long, pool)` for every clip, once, cached on disk under eval.embed_dir and
   keyed by the checkpoint's sha256, the task, the clip list and every input setting.
3. Per held-out fold (ESC-50: 5-fold CV; others: the official train/valid/test split) and seed: the
   EVAR probe (`fit_linear_probe`): StandardScaler, one nn.Linear, Adam (lr 3e-4, wd 1e-8), batch
   min(200, N), <= 200 epochs, early stopping on validation accuracy (patience 20, later ties win, best
   weights restored). Tasks with no validation split hold out a random 10 % of the training fold,
   redrawn until every class is in it (EVAR / general-learning train_test_sure_split).
4. Low-shot (`--label-fraction F` or `--shots N`): the same stratified subset rule (data.stratified_subset,
   seeded) is applied to the training and to the validation labels; the StandardScaler still sees the
   whole (unlabelled) training fold.
5. One row per evaluation appended to results/results.csv (RESULT_FIELDS): accuracy per fold and seed,
   mean and the t-distribution 95 % CI over folds x seeds, with provenance.

Options other than the flags are `key=value` overrides of DEFAULTS (unknown keys are errors).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import math
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from audio import LOG_SILENCE, fix_length
from config import ConfigError, apply_overrides, load_config
from data import LabelMap, load_array, read_manifest, select, stratified_subset
from datasets import REGISTRY, all_tasks, find_task
from utils import atomic_write_text, git_commit, load_checkpoint, remove_stale_temps, temp_path

DEFAULTS = {
    "data": {name: entry.cache for name, entry in REGISTRY.items()},  # default cache folders (datasets.py)
    "eval": {
        "long": "chunk",         # ViT inputs longer than the training crop: pad (the seed) | resize | chunk
        "pool": "cls",           # ViT embedding: cls token | mean of patch tokens
        "unit_seconds": None,    # clip length fed to the encoder; null = the task's (SPEC B3)
        "protocol": "auto",      # auto | folds (cross-validation) | splits (train/valid/test)
        "label_column": None,    # null = the task's (datasets.py; e.g. nsynth_pitch: pitch)
        "batch_size": 32,        # embedding batch
        "workers": 0,            # data loader workers for embedding
        "norm_clips": 5000,      # clips for the log-mel mean/std (EVAR: up to 5000)
        "embed_dir": "cache/embeddings",
        "device": "auto",        # auto | cpu | cuda
        "random_seed": 0,        # seed of the encoder's initialisation for --ckpt random:CONFIG
    },
    "probe": {  # EVAR lineareval.py + general-learning TorchMLPClassifier2 (SPEC B3)
        "lr": 3e-4,
        "weight_decay": 1e-8,
        "epochs": 200,
        "patience": 20,          # <= 0: no early stop (the best epoch is still restored, as EVAR)
        "batch_size": 200,       # min(batch_size, N)
        "valid_fraction": 0.1,   # held out of the training fold when a task has no validation split
        "standard_scaler": True,
    },
}

# the tasks (row filter, unit seconds, label column; SPEC B3) are datasets.REGISTRY's
TASKS = tuple(all_tasks())

RESULT_FIELDS = ["date", "task", "model", "ckpt_sha256", "config", "long", "pool", "label_fraction", "shots",
                 "seeds", "folds", "fold_acc", "mean", "ci95", "n", "unit_seconds", "lr", "n_train", "commit"]

# ============================================================================ the EVAR probe


@dataclass
class StandardScaler:
    """Per-feature (x - mean) / std with the population std; constant features keep scale 1 (sklearn)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> StandardScaler:
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)


class EarlyStopping:
    """general-learning EarlyStopping (SPEC B3): keep the weights of the best validation accuracy, ties to the
    later epoch (`>=`); stop once `patience` epochs in a row have not reached the best (never if patience <= 0).
    """

    def __init__(self, patience: int):
        self.patience, self.best_acc, self.best_epoch, self.best_state, self.wait = patience, 0.0, -1, None, 0

    def update(self, epoch: int, acc: float, model: nn.Module) -> bool:
        """Record epoch's validation accuracy; True when training should stop."""
        if acc >= self.best_acc:
            self.best_acc, self.best_epoch, self.wait = acc, epoch, 1
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        stop = self.patience > 0 and self.wait >= self.patience
        self.wait += 1
        return stop


@dataclass
class LinearProbe:
    """A fitted probe: scaler + linear layer (best epoch restored) and its per-epoch history."""

    scaler: StandardScaler | None
    linear: nn.Linear
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self.scaler.transform(X) if self.scaler is not None else np.asarray(X, dtype=np.float32)
        device = self.linear.weight.device
        return self.linear(torch.from_numpy(X).to(device)).argmax(-1).cpu().numpy()

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())


def fit_linear_probe(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray,
                     n_classes: int, *, lr: float = 3e-4, weight_decay: float = 1e-8, epochs: int = 200,
                     patience: int = 20, batch_size: int = 200, seed: int = 0, standard_scaler: bool = True,
                     scaler_data: np.ndarray | None = None, device: str | torch.device = "cpu") -> LinearProbe:
    """Train EVAR's linear probe on embeddings X [N, D] with labels y [N] in 0..n_classes-1 (SPEC B3).

    StandardScaler fitted on `scaler_data` (default X_train); nn.Linear(D, C) with torch's default init;
    Adam(lr, betas (0.9, 0.999), eps 1e-8, weight_decay); loss -mean(onehot * log_softmax) = CE / C;
    shuffled batches of min(batch_size, N), last one kept; validation accuracy every epoch; EarlyStopping.
    """
    scaler = StandardScaler.fit(X_train if scaler_data is None else scaler_data) if standard_scaler else None
    prep = scaler.transform if scaler else (lambda X: np.asarray(X, dtype=np.float32))
    x_tr = torch.from_numpy(prep(X_train)).to(device)
    y_tr = torch.as_tensor(np.asarray(y_train), dtype=torch.long, device=device)
    x_va = torch.from_numpy(prep(X_valid)).to(device)
    y_va = torch.as_tensor(np.asarray(y_valid), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(x_tr.shape[1], n_classes).to(device)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=weight_decay)
    n, bs = len(x_tr), min(batch_size, len(x_tr))
    stopper, history = EarlyStopping(patience), []
    for epoch in range(epochs):
        linear.train()
        order, total = torch.randperm(n, generator=generator).to(device), 0.0
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            loss = F.cross_entropy(linear(x_tr[idx]), y_tr[idx]) / n_classes
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        linear.eval()
        with torch.no_grad():
            valid_acc = (linear(x_va).argmax(-1) == y_va).float().mean().item()
        history.append({"epoch": epoch, "loss": total / n, "valid_acc": valid_acc})
        if stopper.update(epoch, valid_acc, linear):
            break
    linear.load_state_dict(stopper.best_state)
    linear.eval()
    return LinearProbe(scaler, linear, stopper.best_epoch, history)


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of the t-distribution 95 % confidence interval (nan for one value)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)

# ============================================================================ tasks and folds


@dataclass
class Task:
    """The labelled clips of one evaluation task and how they are split."""

    name: str
    cache: Path
    df: pd.DataFrame       # the task's rows (manifest order), each with a label
    protocol: str          # "folds" (hold each fold out in turn) or "splits" (official train/valid/test)
    unit_seconds: float
    labels: LabelMap
    sample_rate: int       # of the cache's features, from its preprocess.json
    hop: int               # log-mel hop in samples, from its preprocess.json


def cache_params(folder: Path) -> dict:
    """The cache's preprocess.json params; without the file (a cache written by hand), 16 kHz and hop 160
    (SPEC A1) with a printed warning, and data set None (not checked)."""
    path = folder / "preprocess.json"
    if not path.is_file():
        print(f"warning: {path}: not found; assuming 16000 Hz and log-mel hop 160 (SPEC A1), data set not checked",
              file=sys.stderr)
        return {"dataset": None, "sample_rate": 16000, "logmel": {"hop_length": 160}}
    try:
        params = json.loads(path.read_text())["params"]
        int(params["sample_rate"]), int(params["logmel"]["hop_length"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: unreadable (no params.sample_rate / params.logmel.hop_length); "
                         "rebuild the cache with preprocess.py") from None
    return params


def resolve_task(task: str, cfg: dict, cache: str | None = None) -> Task:
    """TASK name (datasets.REGISTRY) or cache folder -> Task (SPEC B3 task table)."""
    where, unit, label, dataset = None, None, "label", None
    if find_task(task):
        dataset, spec = find_task(task)
        where, unit, label = spec.where, spec.unit_seconds, spec.label
        folder = Path(cache or cfg["data"][dataset])
    elif Path(task).is_dir() or cache:
        folder = Path(cache or task)
    else:
        raise ValueError(f"unknown task {task!r}: expected one of {list(TASKS)} or a cache folder")
    df = read_manifest(folder)
    params = cache_params(folder)
    if dataset and params["dataset"] and params["dataset"] != dataset:
        raise ValueError(f"{folder / 'preprocess.json'}: this cache holds --dataset {params['dataset']}, but task "
                         f"{task} needs {dataset}; pass its cache with --cache, or the folder itself as --task")
    if where:
        missing = [c for c in where if c not in df.columns]
        if missing:
            raise ValueError(f"{folder / 'manifest.csv'}: task {task} needs column(s) {missing}")
        df = select(df, where=where)
    column = cfg["eval"]["label_column"] or label
    if column not in df.columns:
        raise ValueError(f"{folder / 'manifest.csv'}: no label column {column!r}")
    df = df.assign(label=df[column].astype(str))
    df = df[df["label"] != ""].reset_index(drop=True)
    if len(df) == 0:
        raise ValueError(f"{folder / 'manifest.csv'}: task {task} selects no labelled clips")
    has_splits, has_folds = (df["split"] != "").any(), df["fold"].notna().any()
    protocol = cfg["eval"]["protocol"]
    if protocol == "auto":
        protocol = "folds" if has_folds and not has_splits else "splits"
    if protocol not in ("folds", "splits"):
        raise ConfigError(f"eval.protocol must be auto, folds or splits, got {protocol!r}")
    if protocol == "splits":
        df = df[df["split"] != ""].reset_index(drop=True)  # e.g. GTZAN's 70 clips outside the filtered lists
        if not (df["split"] == "train").any() or not (df["split"] == "test").any():
            raise ValueError(f"{folder / 'manifest.csv'}: task {task} has no train/test split rows")
    elif not has_folds or df["fold"].isna().any():
        raise ValueError(f"{folder / 'manifest.csv'}: cross-validation needs a fold for every clip")
    unit = cfg["eval"]["unit_seconds"] or unit or float(np.median(df["duration"].astype(float)))
    return Task(task if dataset else folder.name, folder, df, protocol, float(unit), LabelMap.from_labels(df["label"]),
                int(params["sample_rate"]), int(params["logmel"]["hop_length"]))


def carve_validation(y: np.ndarray, fraction: float, rng: np.random.Generator, attempts: int = 100) -> np.ndarray:
    """Boolean mask of a random `fraction` (rounded up) of the items, redrawn until it holds every class
    (general-learning train_test_sure_split); a stratified draw if 100 random ones fail."""
    n, classes = len(y), np.unique(y)
    n_valid = min(max(math.ceil(fraction * n), len(classes)), n - 1)
    for _ in range(attempts):
        chosen = rng.permutation(n)[:n_valid]
        if len(np.unique(y[chosen])) == len(classes):
            mask = np.zeros(n, dtype=bool)
            mask[chosen] = True
            return mask
    mask = np.zeros(n, dtype=bool)
    first = [rng.choice(np.flatnonzero(y == c)) for c in classes]
    mask[first] = True
    rest = rng.permutation(np.flatnonzero(~mask))[:max(n_valid - len(first), 0)]
    mask[rest] = True
    return mask


def fold_indices(task: Task, holdout: int | None, seed: int, valid_fraction: float):
    """Row indices (into task.df) of train, valid and test for one held-out fold (or the official split).

    Folds: test = the held-out fold, train = every other fold (EVAR data.py), valid = a random part of it.
    """
    df = task.df
    if task.protocol == "folds":
        test = np.flatnonzero((df["fold"] == holdout).to_numpy())
        pool = np.flatnonzero((df["fold"] != holdout).to_numpy())
        valid = np.zeros(0, dtype=np.int64)
    else:
        test = np.flatnonzero((df["split"] == "test").to_numpy())
        pool = np.flatnonzero((df["split"] == "train").to_numpy())
        valid = np.flatnonzero((df["split"] == "valid").to_numpy())
    if len(valid) == 0:
        y = task.labels.encode(df["label"].iloc[pool])
        mask = carve_validation(y, valid_fraction, np.random.default_rng([seed, holdout or 0]))
        pool, valid = pool[~mask], pool[mask]
    return pool, valid, test


def low_shot(train: np.ndarray, valid: np.ndarray, y: np.ndarray, fraction: float | None, shots: int | None,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled part of train and valid (row indices, labels y[row]): the same stratified rule on each
    (`fraction` of every class, at least one, or `shots` per class; data.stratified_subset), or all of them."""
    if fraction is None and shots is None:
        return train, valid
    return (train[stratified_subset(y[train], fraction, shots, seed=seed)],
            valid[stratified_subset(y[valid], fraction, shots, seed=seed)])


def holdout_folds(task: Task, folds: list[int] | None) -> list[int | None]:
    if task.protocol == "splits":
        if folds:
            raise ValueError(f"--folds applies to cross-validation tasks; {task.name} uses train/valid/test splits")
        return [None]
    available = sorted(int(f) for f in task.df["fold"].unique())
    for f in folds or []:
        if f not in available:
            raise ValueError(f"--folds: fold {f} not in {task.name}'s folds {available}")
    return folds or available

# ============================================================================ encoder and embeddings


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_encoder(ckpt: str, random_seed: int = 0) -> tuple[nn.Module, dict]:
    """A checkpoint path or `random:<config.yaml>` -> (encoder in eval mode, info: model, ckpt_sha256, config)."""
    import models  # imported here so that the probe and tables work without the model code

    if ckpt.startswith("random:"):
        cfg = load_config(ckpt.split(":", 1)[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)
            encoder = models.build_encoder(cfg)
        name = cfg["_meta"]["config_name"]
        text = json.dumps({k: v for k, v in cfg.items() if k != "_meta"}, sort_keys=True)
        sha = "random-" + hashlib.sha256(f"{text}|seed={random_seed}".encode()).hexdigest()
        return encoder.eval(), {"model": f"{name}-random", "ckpt_sha256": sha, "config": name}
    state = load_checkpoint(ckpt)  # names the file when it is missing or not a checkpoint
    missing = [k for k in ("kind", "config", "encoder") if k not in state]
    if missing:
        raise ValueError(f"{ckpt}: not a pretraining checkpoint (missing {missing})")
    encoder = models.build_encoder(state["config"])
    encoder.load_state_dict(state["encoder"])
    name = state["config"].get("_meta", {}).get("config_name", Path(ckpt).stem)
    return encoder.eval(), {"model": name, "ckpt_sha256": file_sha256(ckpt), "config": name}


class UnitClips(Dataset):
    """Clip i as encoder input at the unit length (SPEC B3): normalised log-mel [1, F, frames] or wave [samples].

    Right padding is silence (zeros in the wave, ln(eps) in the log-mel); longer clips start at 0, or at a
    random start fixed per clip id where `random_crop[i]` (EVAR's train/valid crops, reproducible).
    """

    def __init__(self, cache: Path, df: pd.DataFrame, input_kind: str, unit_samples: int,
                 random_crop: np.ndarray, mean: float = 0.0, std: float = 1.0, *, hop: int):
        self.cache, self.input_kind, self.random_crop = cache, input_kind, random_crop
        self.paths, self.ids = df[input_kind].tolist(), df["id"].tolist()
        self.length = unit_samples if input_kind == "wave" else 1 + unit_samples // hop
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = load_array(self.cache, self.paths[i])
        start = 0
        if self.random_crop[i] and x.shape[-1] > self.length:
            rng = np.random.default_rng(zlib.crc32(self.ids[i].encode()))
            start = int(rng.integers(0, x.shape[-1] - self.length + 1))
        if self.input_kind == "wave":
            return torch.from_numpy(np.array(fix_length(x, self.length, start), dtype=np.float32))
        x = fix_length(np.asarray(x, dtype=np.float32), self.length, start, value=LOG_SILENCE)
        return torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))[None]


@torch.no_grad()
def compute_embeddings(encoder: nn.Module, dataset: Dataset, long: str, pool: str, batch_size: int = 32,
                       workers: int = 0, device: str | torch.device = "cpu", desc: str = "embed") -> np.ndarray:
    """encoder.embed over the dataset in order, with a progress bar -> float32 [N, D]."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    encoder.eval().to(device)
    out = [encoder.embed(x.to(device), long=long, pool=pool).float().cpu()
           for x in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True)]
    return torch.cat(out).numpy()


def unit_logmel_stats(clips: Dataset, max_clips: int) -> tuple[float, float]:
    """Scalar mean and std (ddof 0) over the first `max_clips` unit-length training inputs, padding and crops
    included, as EVAR's ar.precompute sees them (SPEC B3; EVAR's RunningMean drops its first batch, we do not)."""
    total = total_sq = count = 0.0
    for i in range(min(len(clips), max_clips)):
        x = clips[i].double()
        total, total_sq, count = total + x.sum().item(), total_sq + (x * x).sum().item(), count + x.numel()
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


def task_embeddings(encoder: nn.Module, info: dict, task: Task, cfg: dict, device) -> np.ndarray:
    """Embeddings [len(task.df), D] of every clip of the task, from the disk cache when the key matches."""
    ecfg, kind = cfg["eval"], encoder.input_kind
    if kind not in ("logmel", "wave"):
        raise ValueError(f"encoder input_kind must be 'logmel' or 'wave', got {kind!r}")
    if (task.df[kind] == "").any():
        raise ValueError(f"{task.cache / 'manifest.csv'}: no '{kind}' features for every clip; the encoder takes "
                         + ("waveforms: re-run preprocess.py with --waveform" if kind == "wave" else "log-mels"))
    random_crop = (task.df["split"].isin(["train", "valid"]) if task.protocol == "splits"
                   else pd.Series(False, index=task.df.index)).to_numpy()
    unit_samples = int(round(task.unit_seconds * task.sample_rate))
    mean, std = 0.0, 1.0
    if kind == "logmel":
        first = holdout_folds(task, None)[0]
        is_train = (task.df["split"] == "train") if task.protocol == "splits" else (task.df["fold"] != first)
        train = UnitClips(task.cache, task.df[is_train], kind, unit_samples, random_crop[is_train.to_numpy()],
                          hop=task.hop)
        mean, std = unit_logmel_stats(train, ecfg["norm_clips"])
    key_items = dict(ckpt=info["ckpt_sha256"], cache=str(task.cache.resolve()), task=task.name, kind=kind,
                     manifest=file_sha256(task.cache / "manifest.csv"), ids=task.df["id"].tolist(),
                     crop=random_crop.tolist(), unit=unit_samples, hop=task.hop, long=ecfg["long"], pool=ecfg["pool"],
                     mean=round(mean, 6), std=round(std, 6))
    key = hashlib.sha256(json.dumps(key_items).encode()).hexdigest()[:20]
    path = Path(ecfg["embed_dir"]) / f"{task.name}-{info['model']}-{key}.npy"
    if path.is_file():
        print(f"embeddings: {path} (cached)")
        return np.load(path)
    dataset = UnitClips(task.cache, task.df, kind, unit_samples, random_crop, mean, std, hop=task.hop)
    X = compute_embeddings(encoder, dataset, ecfg["long"], ecfg["pool"], ecfg["batch_size"], ecfg["workers"],
                           device, desc=f"embed {task.name}")
    if not np.isfinite(X).all():
        raise ValueError(f"{info['model']}: non-finite embeddings on {task.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = temp_path(path, ".npy")  # np.save adds .npy to any other name
    np.save(tmp, X)
    os.replace(tmp, path)
    print(f"embeddings: {path} {X.shape}")
    return X

# ============================================================================ evaluation and results


def evaluate_embeddings(X: np.ndarray, task: Task, cfg: dict, seeds: list[int], folds: list[int] | None = None,
                        label_fraction: float | None = None, shots: int | None = None,
                        device="cpu") -> dict:
    """Probe accuracy (%) per (seed, held-out fold), seed-major; also the mean training-set size."""
    pcfg, y_all = cfg["probe"], task.labels.encode(task.df["label"])
    holdouts = holdout_folds(task, folds)
    accs, n_train = [], []
    for seed in seeds:
        for holdout in holdouts:
            train, valid, test = fold_indices(task, holdout, seed, pcfg["valid_fraction"])
            # EVAR fits the scaler on X_train: the whole training fold when validation is carved out of it,
            # the training split alone when the task has an official validation split
            pool = np.concatenate([train, valid]) if task.protocol == "folds" else train
            train, valid = low_shot(train, valid, y_all, label_fraction, shots, seed)
            probe = fit_linear_probe(X[train], y_all[train], X[valid], y_all[valid], len(task.labels),
                                     lr=pcfg["lr"], weight_decay=pcfg["weight_decay"], epochs=pcfg["epochs"],
                                     patience=pcfg["patience"], batch_size=pcfg["batch_size"],
                                     seed=seed * 1000 + (holdout or 0), standard_scaler=pcfg["standard_scaler"],
                                     scaler_data=X[pool], device=device)
            acc = 100 * probe.accuracy(X[test], y_all[test])
            where = f"fold {holdout}" if holdout is not None else "test"
            print(f"seed {seed} {where}: {acc:.2f} % (train {len(train)}, valid {len(valid)}, test {len(test)}, "
                  f"best epoch {probe.best_epoch + 1})")
            accs.append(acc)
            n_train.append(len(train))
    return {"acc": accs, "folds": holdouts, "n_train": float(np.mean(n_train))}


def result_row(task: Task, info: dict, cfg: dict, seeds: list[int], scores: dict,
               label_fraction: float | None, shots: int | None) -> dict:
    """One results.csv row (RESULT_FIELDS)."""
    mean, ci = mean_ci95(scores["acc"])
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "task": task.name, "model": info["model"], "ckpt_sha256": info["ckpt_sha256"], "config": info["config"],
        "long": cfg["eval"]["long"], "pool": cfg["eval"]["pool"],
        "label_fraction": "" if label_fraction is None else f"{label_fraction:g}",
        "shots": "" if shots is None else str(shots),
        "seeds": " ".join(str(s) for s in seeds),
        "folds": " ".join("test" if f is None else str(f) for f in scores["folds"]),
        "fold_acc": " ".join(f"{a:.2f}" for a in scores["acc"]),
        "mean": f"{mean:.2f}", "ci95": "" if math.isnan(ci) else f"{ci:.2f}", "n": str(len(scores["acc"])),
        "unit_seconds": f"{task.unit_seconds:g}", "lr": f"{cfg['probe']['lr']:g}",
        "n_train": f"{scores['n_train']:g}", "commit": git_commit(),
    }


def append_result(path: str | os.PathLike, row: dict) -> None:
    """Append `row` to the results CSV (created with a header); a file with another header is an error."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.DictWriter(text, RESULT_FIELDS)
    if path.parent.is_dir():
        remove_stale_temps(path.parent)  # of a killed earlier run
    if not path.is_file() or path.stat().st_size == 0:
        writer.writeheader()
        writer.writerow(row)
        atomic_write_text(text.getvalue(), path)
        return
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if header != RESULT_FIELDS:
        raise ValueError(f"{path}: header {header} differs from {RESULT_FIELDS}; move the old file aside")
    writer.writerow(row)
    with open(path, "a", newline="") as f:  # one small O_APPEND write
        f.write(text.getvalue())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint path, or random:<config.yaml>")
    parser.add_argument("--task", required=True, help=f"{', '.join(TASKS)} or a cache folder")
    shots = parser.add_mutually_exclusive_group()
    shots.add_argument("--label-fraction", type=float, help="stratified fraction of the training labels")
    shots.add_argument("--shots", type=int, help="labelled training clips per class")
    parser.add_argument("--seeds", default="0", help="comma-separated probe / subset seeds")
    parser.add_argument("--folds", default="", help="held-out folds to evaluate (cross-validation tasks)")
    parser.add_argument("--cache", help="cache folder of the task's data set (overrides data.<set>)")
    parser.add_argument("--results", default="results/results.csv", help="CSV the result row is appended to")
    parser.add_argument("--name", help="model name in the results (default: the config name)")
    parser.add_argument("--long", choices=("pad", "resize", "chunk"),
                        help="ViT inputs longer than the training crop (= eval.long; pad is the seed's)")
    parser.add_argument("--pool", choices=("cls", "mean"), help="ViT embedding pooling (= eval.pool)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of DEFAULTS (e.g. eval.long=pad)")
    args = parser.parse_intermixed_args(argv)  # options may sit between key=value overrides
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        parser.error("--label-fraction must be in (0, 1]")
    if args.shots is not None and args.shots < 1:
        parser.error("--shots must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run one evaluation and append its row; returns the row (demo.py calls this or the command)."""
    args = parse_args(argv)
    flags = [f"eval.{k}={getattr(args, k)}" for k in ("long", "pool") if getattr(args, k) is not None]
    cfg = apply_overrides(DEFAULTS, args.overrides + flags)
    if cfg["eval"]["long"] not in ("pad", "resize", "chunk") or cfg["eval"]["pool"] not in ("cls", "mean"):
        raise ConfigError("eval.long must be pad, resize or chunk and eval.pool cls or mean")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    folds = [int(f) for f in args.folds.split(",") if f.strip()] or None
    device = pick_device(cfg["eval"]["device"])
    task = resolve_task(args.task, cfg, args.cache)
    holdout_folds(task, folds)  # fail on bad --folds before embedding
    encoder, info = load_encoder(args.ckpt, cfg["eval"]["random_seed"])
    if args.name:
        info["model"] = args.name
    print(f"{info['model']} on {task.name}: {len(task.df)} clips, {len(task.labels)} classes, "
          f"{task.protocol}, unit {task.unit_seconds:g} s, input {encoder.input_kind}, device {device}")
    X = task_embeddings(encoder, info, task, cfg, device)
    scores = evaluate_embeddings(X, task, cfg, seeds, folds, args.label_fraction, args.shots, device)
    row = result_row(task, info, cfg, seeds, scores, args.label_fraction, args.shots)
    append_result(args.results, row)
    ci = f" +- {row['ci95']}" if row["ci95"] else ""
    print(f"{info['model']} {task.name}: {row['mean']}{ci} % over {row['n']} fold x seed runs -> {args.results}")
    return row


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, ValueError, FileNotFoundError) as err:
        sys.exit(f"linear_eval.py: error: {err}")
