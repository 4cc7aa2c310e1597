"""Portable encoder files, the training side: a training checkpoint -> the encoder file that audio_ssl_repro.py
(the one-file, installable encoder module) reads.

    python export.py --ckpt runs/demo_msn/ckpt_last.pt --out encoder.pt   # writes one (export.py)
    encoder, bundle = portable.load("encoder.pt")   # or a training checkpoint, converted in memory
    frontend = portable.Frontend(encoder.input_kind, bundle["logmel"], bundle["norm"])
    emb = encoder.embed(frontend(wave))             # wave [B, L] at 16 kHz -> [B, embed_dim]

The encoders returned here are audio_ssl_repro's (chosen by the architecture in the file), the very networks an
installed copy builds. File layout (FORMAT; tensors, str, numbers, lists, dicts and None only):

    format    FORMAT
    kind      the training method: msn | clar | byola
    config    the resolved training config: models.build_encoder(config) rebuilds the encoder
    encoder   the encoder's state_dict (MSN: the EMA target; BYOL-A: the online encoder; CLAR: the encoder)
    logmel    audio.LogMelConfig as a dict, read from the training cache's preprocess.json (None: wave input)
    norm      {"source": running | precomputed | none, "mean": float, "std": float}: the scalar normalisation
              of the log-mel that training applied (MSN's RunningNorm state, BYOL-A v2's PrecomputedNorm stats)
    source    {"ckpt", "sha256", "step", "git", "logmel_from"}: where it came from

linear_eval.py ignores `norm` (EVAR normalises with the task's own statistics); the HEAR module uses it.
Per-batch normalisation of the training views (MSN aug.normalize_batch, BYOL-A v2's NormalizeBatch) belongs to
the augmentations and is not part of the encoder's input.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.nn as nn

import audio_ssl_repro
from audio import LogMelConfig
from audio_ssl_repro import FORMAT, Frontend  # noqa: F401  (Frontend: the encoder input, re-exported)
from augment import RunningNorm
from files import atomic_torch_save, file_sha256, load_checkpoint

WAVE_ARCHS = ("resnet18_1d", "resnet18_2d")


def input_norm(ckpt: dict, path: str | os.PathLike) -> dict:
    """The scalar log-mel normalisation a training checkpoint used: aug.norm=running -> the RunningNorm state of
    process 0 (mean mu, std as RunningNorm.std), precomputed -> meta["norm_stats"], none (or a wave encoder) ->
    identity."""
    cfg = ckpt["config"]
    mode = "none" if cfg["model"]["arch"] in WAVE_ARCHS else cfg.get("aug", {}).get("norm", "none")
    if mode == "running":
        state = ckpt["per_process"][0]["state"]["views"]["norm"]
        if not state or state["n"] == 0:
            raise ValueError(f"{path}: aug.norm=running but the RunningNorm state has seen no clip")
        norm = RunningNorm(1)
        norm.load_state_dict(state)
        return {"source": "running", "mean": float(norm.mu), "std": float(norm.std)}
    if mode == "precomputed":
        stats = (ckpt.get("meta") or {}).get("norm_stats")
        if stats is None:
            raise ValueError(f"{path}: aug.norm=precomputed but meta has no norm_stats (a checkpoint written before "
                             "they were stored; train again)")
        return {"source": "precomputed", "mean": float(stats[0]), "std": float(stats[1])}
    if mode != "none":
        raise ValueError(f"{path}: unknown aug.norm {mode!r}")
    return {"source": "none", "mean": 0.0, "std": 1.0}


def logmel_config(cfg: dict) -> tuple[dict | None, str]:
    """(LogMelConfig dict, where it came from) of the cache the encoder was trained on; None for wave encoders.
    A cache that is gone leaves audio.LogMelConfig's defaults (what preprocess.py writes unless --mel-scale htk)."""
    if cfg["model"]["arch"] in WAVE_ARCHS:
        return None, "wave input"
    meta = Path(cfg.get("data", {}).get("cache", "")) / "preprocess.json"
    if meta.is_file():
        return {**LogMelConfig().to_dict(), **json.loads(meta.read_text())["params"]["logmel"]}, str(meta)
    print(f"portable: {meta} not found; assuming the default log-mel front end (audio.LogMelConfig)", file=sys.stderr)
    return LogMelConfig().to_dict(), "audio.LogMelConfig defaults"


def from_checkpoint(ckpt: dict, path: str | os.PathLike) -> dict:
    """A training checkpoint (trainer.CHECKPOINT_KEYS) -> the portable layout (module docstring)."""
    missing = [k for k in ("kind", "config", "encoder") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a pretraining checkpoint (missing {missing})")
    logmel, logmel_from = logmel_config(ckpt["config"])
    return {"format": FORMAT, "kind": ckpt["kind"], "config": ckpt["config"],
            "encoder": {k: v.detach().cpu().clone() for k, v in ckpt["encoder"].items()},
            "logmel": logmel, "norm": input_norm(ckpt, path),
            "source": {"ckpt": str(path), "sha256": file_sha256(path), "step": int(ckpt.get("step", 0)),
                       "git": str(ckpt.get("git", "")), "logmel_from": logmel_from}}


def load(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """An export.py file or a training checkpoint -> (audio_ssl_repro encoder with its weights in eval mode, the
    file's dict, the checkpoint converted in memory)."""
    state = load_checkpoint(path)
    if "encoder" not in state:
        raise ValueError(f"{path}: no 'encoder' entry (not a checkpoint or encoder file of this package)")
    bundle = state if state.get("format") == FORMAT else from_checkpoint(state, path)
    return audio_ssl_repro.encoder_from_bundle(bundle, path), bundle


def save(bundle: dict, out: str | os.PathLike) -> None:
    atomic_torch_save(bundle, out)


def export(ckpt: str, out: str | os.PathLike, norm_stats: tuple[float, float] | None = None) -> dict:
    """Read the training checkpoint `ckpt` (or `byola:PATH`, a published BYOL-A weight file: official.py), write
    its encoder file to `out` (what export.py does); returns the file's dict. `norm_stats` (mean, std) applies to
    published weights only: a checkpoint carries its own normalisation."""
    import official  # official.py builds its bundles with this module's FORMAT

    if ckpt.startswith(official.PREFIX):
        bundle = official.bundle(ckpt[len(official.PREFIX):], norm_stats)
    elif norm_stats is not None:
        raise ValueError(f"--norm-stats applies to {official.PREFIX} weight files only (a checkpoint carries its own)")
    else:
        bundle = from_checkpoint(load_checkpoint(ckpt), ckpt)
    save(bundle, out)
    return bundle
