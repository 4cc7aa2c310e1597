"""The EVAR linear evaluation of a frozen encoder (nttcslab/eval-audio-repr) that linear_eval.py runs: tasks and
their folds, the encoder of a checkpoint / encoder file / random:CONFIG / hear:MODULE / byola:PATH, embeddings at
the task's unit length (cached on disk), the probe per fold and seed (probe.py), one results row. The steps, with
their references, are in linear_eval.py's docstring (`python linear_eval.py --help`).

    cfg = evaluation.config(["probe.lr=1e-2"])              # DEFAULTS + key=value overrides, checked
    row = evaluation.run("runs/demo_msn/ckpt_last.pt", "cache/demo_small", cfg, seeds=[0, 1])
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import Dataset

import data
import hear_adapter
import methods
import models
import official
from audio import LOG_SILENCE, fix_length
from config import ConfigError, apply_overrides, load_config
from data import LabelMap, load_array, read_manifest, select, stratified_subset
from datasets import REGISTRY, all_tasks, find_task
from files import atomic_write, file_sha256, remove_stale_temps
from probe import append_result, carve_validation, fit_linear_probe, mean_ci95
from runlog import git_commit

DEFAULTS = {
    "data": {name: entry.cache for name, entry in REGISTRY.items()},  # default cache folders (datasets.py)
    "eval": {
        "long": "chunk",         # ViT inputs longer than the training crop: pad (the seed) | resize | chunk
        "pool": "cls",           # ViT embedding: cls token | mean of patch tokens
        "unit_seconds": None,    # clip length fed to the encoder; null = the task's (nttcslab/eval-audio-repr)
        "protocol": "auto",      # auto | folds (cross-validation) | splits (train/valid/test)
        "label_column": None,    # null = the task's (datasets.py; e.g. nsynth_pitch: pitch)
        "batch_size": 32,        # embedding batch
        "workers": 0,            # data loader workers for embedding
        "norm_clips": 5000,      # clips for the log-mel mean/std (EVAR: up to 5000)
        "embed_dir": "cache/embeddings",
        "device": "auto",        # auto | cpu | cuda
        "random_seed": 0,        # seed of the encoder's initialisation for --ckpt random:CONFIG
    },
    "probe": {  # EVAR lineareval.py + general-learning TorchMLPClassifier2
        "lr": 3e-4,
        "weight_decay": 1e-8,
        "epochs": 200,
        "patience": 20,          # <= 0: no early stop (the best epoch is still restored, as EVAR)
        "batch_size": 200,       # min(batch_size, N)
        "valid_fraction": 0.1,   # held out of the training fold when a task has no validation split
        "standard_scaler": True,
    },
}

# the tasks (row filter, unit seconds, label column; nttcslab/eval-audio-repr) are datasets.REGISTRY's
TASKS = tuple(all_tasks())

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


def resolve_task(task: str, cfg: dict, cache: str | None = None) -> Task:
    """TASK name (datasets.REGISTRY) or cache folder -> Task (nttcslab/eval-audio-repr task table)."""
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
    params = data.cache_params(folder)
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


def random_config(path: str) -> dict:
    """The complete config of `random:PATH`: a file of the registry (config/*.yaml, a delta on its method's
    defaults) resolved by its method; any other file (a run's config.yaml) is complete as it is."""
    try:
        method = methods.for_config(path)
    except KeyError:
        return load_config(path)
    return method.resolve(path)


def load_encoder(ckpt: str, random_seed: int = 0) -> tuple[nn.Module, dict]:
    """A checkpoint or export.py file, `random:<config.yaml>`, `hear:MODULE[:WEIGHTS]` or `byola:<official BYOL-A
    weight file>` -> (encoder in eval mode, info: model, ckpt_sha256, config)."""
    if ckpt.startswith("hear:"):
        return hear_adapter.load_hear(ckpt)
    if ckpt.startswith("random:"):
        cfg = random_config(ckpt.split(":", 1)[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed)
            encoder = models.build_encoder(cfg)
        name = cfg["_meta"]["config_name"]
        text = json.dumps({k: v for k, v in cfg.items() if k != "_meta"}, sort_keys=True)
        sha = "random-" + hashlib.sha256(f"{text}|seed={random_seed}".encode()).hexdigest()
        return encoder.eval(), {"model": f"{name}-random", "ckpt_sha256": sha, "config": name}
    if ckpt.startswith(official.PREFIX):  # a published BYOL-A weight file, read as export.py would
        path = ckpt[len(official.PREFIX):]
        bundle = official.byola_bundle(path)
        encoder = models.build_encoder(bundle["config"])
        encoder.load_state_dict(bundle["encoder"])
        name = bundle["config"]["_meta"]["config_name"]
        return encoder.eval(), {"model": name, "ckpt_sha256": bundle["source"]["sha256"], "config": name}
    encoder, state = models.load_encoder_file(ckpt)  # a training checkpoint or an export.py file
    name = state["config"].get("_meta", {}).get("config_name", Path(ckpt).stem)
    return encoder.eval(), {"model": name, "ckpt_sha256": file_sha256(ckpt), "config": name}


class UnitClips(Dataset):
    """Clip i as encoder input at the unit length (EVAR code): normalised log-mel [1, F, frames] or wave [samples].

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


def unit_logmel_stats(clips: Dataset, max_clips: int) -> tuple[float, float]:
    """Scalar mean and std (ddof 0) over the first `max_clips` unit-length training inputs, padding and crops
    included, as EVAR's ar.precompute sees them (EVAR's RunningMean drops its first batch, we do not)."""
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
    safe_model = re.sub(r"[^\w.=+-]", "_", info["model"])  # hear:MODULE labels hold a colon
    path = Path(ecfg["embed_dir"]) / f"{task.name}-{safe_model}-{key}.npy"
    if path.is_file():
        print(f"embeddings: {path} (cached)")
        return np.load(path)
    dataset = UnitClips(task.cache, task.df, kind, unit_samples, random_crop, mean, std, hop=task.hop)
    X = models.embed_dataset(encoder, dataset, ecfg["long"], ecfg["pool"], ecfg["batch_size"], ecfg["workers"],
                           device, desc=f"embed {task.name}")
    bad = task.df["id"][~np.isfinite(X).all(axis=1)].tolist()
    if bad:  # a NaN or inf in a cached clip (or a diverged encoder): name the clips, never probe NaN
        raise ValueError(f"{info['model']}: non-finite embeddings on {task.name} for {len(bad)} of {len(X)} clips "
                         f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); check those clips' cache files")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    atomic_write(path, lambda f: np.save(f, X))
    print(f"embeddings: {path} {X.shape}")
    return X

# ============================================================================ evaluation and results


def evaluate_embeddings(X: np.ndarray, task: Task, cfg: dict, seeds: list[int], folds: list[int] | None = None,
                        label_fraction: float | None = None, shots: int | None = None,
                        device="cpu") -> dict:
    """Probe accuracy (%) per (seed, held-out fold), seed-major; the mean training-set size; the best epoch of
    each probe, and how many of them fell in the last 10 % of probe.epochs (not converged: a warning)."""
    pcfg, y_all = cfg["probe"], task.labels.encode(task.df["label"])
    holdouts = holdout_folds(task, folds)
    accs, n_train, best_epochs = [], [], []
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
            best_epochs.append(probe.best_epoch + 1)
    late = sum(not_converged(e, pcfg["epochs"]) for e in best_epochs)
    if late:
        print(f"warning: {late} of {len(best_epochs)} probes had their best validation epoch in the last 10 % of "
              f"probe.epochs={pcfg['epochs']} (best epochs {best_epochs}): the probe may not have converged; "
              "raise probe.epochs or probe.lr", file=sys.stderr)
    return {"acc": accs, "folds": holdouts, "n_train": float(np.mean(n_train)), "best_epochs": best_epochs,
            "not_converged": late}


def not_converged(best_epoch: int, epochs: int) -> bool:
    """True when the best epoch (1-based) lies in the last 10 % of the allowed epochs."""
    return best_epoch > 0.9 * epochs


def result_row(task: Task, info: dict, cfg: dict, seeds: list[int], scores: dict,
               label_fraction: float | None, shots: int | None) -> dict:
    """One results.csv row (RESULT_FIELDS)."""
    mean, ci = mean_ci95(scores["acc"])
    hear = info["ckpt_sha256"].startswith("hear-")  # long / pool are this package's ViT settings
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "task": task.name, "model": info["model"], "ckpt_sha256": info["ckpt_sha256"], "config": info["config"],
        "long": "" if hear else cfg["eval"]["long"], "pool": "" if hear else cfg["eval"]["pool"],
        "label_fraction": "" if label_fraction is None else f"{label_fraction:g}",
        "shots": "" if shots is None else str(shots),
        "seeds": " ".join(str(s) for s in seeds),
        "folds": " ".join("test" if f is None else str(f) for f in scores["folds"]),
        "fold_acc": " ".join(f"{a:.2f}" for a in scores["acc"]),
        "mean": f"{mean:.2f}", "ci95": "" if math.isnan(ci) else f"{ci:.2f}", "n": str(len(scores["acc"])),
        "unit_seconds": f"{task.unit_seconds:g}", "lr": f"{cfg['probe']['lr']:g}",
        "n_train": f"{scores['n_train']:g}", "commit": git_commit(),
        "best_epochs": " ".join(str(e) for e in scores["best_epochs"]),
        "not_converged": str(scores["not_converged"]),
    }


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config(overrides: list[str]) -> dict:
    """DEFAULTS with `key=value` overrides (unknown keys are errors), eval.long and eval.pool checked."""
    cfg = apply_overrides(DEFAULTS, overrides)
    if cfg["eval"]["long"] not in ("pad", "resize", "chunk") or cfg["eval"]["pool"] not in ("cls", "mean"):
        raise ConfigError("eval.long must be pad, resize or chunk and eval.pool cls or mean")
    return cfg


def run(ckpt: str, task: str, cfg: dict, *, seeds: Sequence[int] = (0,), folds: list[int] | None = None,
        label_fraction: float | None = None, shots: int | None = None, cache: str | None = None,
        results: str = "results/results.csv", name: str | None = None) -> dict:
    """Evaluate the encoder of `ckpt` on `task` (a task name or a cache folder) with the complete config `cfg`,
    append its row to `results` and return the row. `folds`: held-out folds (None: all); `name`: the model name
    in the row (default: the config name); `cache`: the task's cache folder (overrides data.<set>)."""
    seeds = list(seeds)
    device = pick_device(cfg["eval"]["device"])
    task = resolve_task(task, cfg, cache)
    holdout_folds(task, folds)  # fail on bad folds before embedding
    encoder, info = load_encoder(ckpt, cfg["eval"]["random_seed"])
    if isinstance(encoder, hear_adapter.HearEncoder):
        encoder.input_rate = task.sample_rate
    if name:
        info["model"] = name
    print(f"{info['model']} on {task.name}: {len(task.df)} clips, {len(task.labels)} classes, "
          f"{task.protocol}, unit {task.unit_seconds:g} s, input {encoder.input_kind}, device {device}")
    X = task_embeddings(encoder, info, task, cfg, device)
    scores = evaluate_embeddings(X, task, cfg, seeds, folds, label_fraction, shots, device)
    row = result_row(task, info, cfg, seeds, scores, label_fraction, shots)
    append_result(results, row)
    ci = f" +- {row['ci95']}" if row["ci95"] else ""
    print(f"{info['model']} {task.name}: {row['mean']}{ci} % over {row['n']} fold x seed runs -> {results}")
    return row
