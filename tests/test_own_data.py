"""Your own data, end to end, with the commands README.md shows (issue 20): a folder of audio with and without
labels -> preprocess.py --split -> pretraining on the train split (BYOL-A data.split=train; CLAR its split keys,
unlabelled clips included) -> linear_eval.py on the folder's cache -> export.py -> audio_ssl_repro, as commands."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import audio_ssl_repro
import data

ROOT = Path(__file__).resolve().parents[1]


def command(*args) -> str:
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def test_a_folder_of_audio_to_a_probe_and_an_encoder_file(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for cls, f0 in (("dog", 300.0), ("bird", 2500.0)):
        for i in range(10):
            wave = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.05 * rng.random()) * t) + 0.02 * rng.standard_normal(len(t))
            (tmp_path / "audio" / cls).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "audio" / cls / f"{i}.wav", wave.astype(np.float32), 16000)
    for i in range(4):  # unlabelled recordings in the root
        sf.write(tmp_path / "audio" / f"field{i}.flac", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    cache, run = tmp_path / "cache", tmp_path / "runs" / "mine"
    command("preprocess.py", "--dataset", "folder", "--root", tmp_path / "audio", "--out", cache, "--split", "60,20,20",
            "--waveform", "--workers", "1")
    df = data.read_manifest(cache)
    assert len(df) == 24 and (df["split"] == "train").sum() == 16
    assert set(df.loc[df["label"] == "", "split"]) == {"train"}
    out = command("pretrain_byola.py", "--config", "config/demo_byola.yaml", f"data.cache={cache}", "data.split=train",
                  f"train.out_dir={run}", "train.epochs=1", "optim.batch_size=8")
    assert "byola: 16 clips" in out  # the train split only: 12 labelled + 4 unlabelled
    out = command("pretrain_clar.py", "--config", "config/demo_clar.yaml", f"data.cache={cache}", "encoder=1d",
                  "data.train_folds=null", "data.test_folds=null", "data.train_split=train", "data.test_split=test",
                  f"train.out_dir={tmp_path / 'runs' / 'clar'}", "train.max_steps=2", "optim.batch_size=8",
                  "train.final_probe=false")
    assert "clar: 16 clips" in out and "loss nan" not in out  # unlabelled clips train the contrastive loss only
    command("linear_eval.py", "--ckpt", run / "ckpt_last.pt", "--task", cache, "--results", tmp_path / "results.csv",
            "probe.epochs=20")
    with open(tmp_path / "results.csv") as f:
        row = next(csv.DictReader(f))
    assert 0.0 <= float(row["mean"]) <= 100.0 and row["task"] == "cache"
    command("export.py", "--ckpt", run / "ckpt_last.pt", "--out", tmp_path / "mine.pt")
    model = audio_ssl_repro.load_model(str(tmp_path / "mine.pt"))
    scene = audio_ssl_repro.get_scene_embeddings(torch.zeros(2, 16000), model)
    assert scene.shape == (2, model.scene_embedding_size) and torch.isfinite(scene).all()
