"""Shared pytest fixtures: a tiny feature cache in the exact layout preprocess.py writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (SCRIPT relative to the repository) as a subprocess: tests call scripts only this way."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True)
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def write_tiny_cache(out: Path, n_classes: int = 4, per_class: int = 6, frames: int = 120,
                     samples: int = 16000, seed: int = 0) -> Path:
    """A cache of class-dependent random log-mels [64, frames] and waves [samples], 5 folds, splits.

    Class c has a bright band at mel bins 8c..8c+8 and a tone of 300*(c+1) Hz, so tiny models can learn it.
    """
    rng = np.random.default_rng(seed)
    (out / "logmel").mkdir(parents=True, exist_ok=True)
    (out / "wave").mkdir(parents=True, exist_ok=True)
    rows = []
    t = np.arange(samples) / 16000
    for c in range(n_classes):
        for k in range(per_class):
            cid = f"c{c}_{k:02d}"
            logmel = rng.normal(-6.0, 1.0, size=(64, frames)).astype(np.float32)
            logmel[8 * c:8 * c + 8] += 4.0
            wave = (0.3 * np.sin(2 * np.pi * 300 * (c + 1) * t + rng.uniform(0, 6.28))
                    + 0.05 * rng.normal(size=samples)).astype(np.float32)
            np.save(out / "logmel" / f"{cid}.npy", logmel)
            np.save(out / "wave" / f"{cid}.npy", wave)
            fold = k % 5 + 1
            split = "test" if fold == 5 else ("valid" if fold == 4 else "train")
            rows.append(dict(id=cid, logmel=f"logmel/{cid}.npy", wave=f"wave/{cid}.npy", label=f"class{c}",
                             split=split, fold=fold, duration=samples / 16000, source=f"audio/{cid}.wav"))
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    return out


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Path:
    return write_tiny_cache(tmp_path / "cache")


def model_cfg(partial: dict) -> dict:
    """A complete `model` config section for partial["arch"]: the model defaults of the registry method that trains
    that architecture (the builders in models.py have no defaults of their own), updated with `partial`."""
    import methods
    owner = {"vit_b_32": "msn", "vit_audio": "msn", "resnet18_2d": "clar", "resnet18_1d": "clar",
             "audiontt2022": "byola"}[partial["arch"]]
    return {**methods.get(owner).defaults()["model"], **partial}
