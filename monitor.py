"""The kNN monitor of every training run (train.monitor): DINO's weighted kNN accuracy of the frozen encoder on a
labelled cache (Caron et al. 2021, eval_knn.py: cosine similarity, k 20, T 0.07, votes weighted by exp(sim/T);
probe.knn_accuracy), cheap enough to run during training. trainer.train calls it before the first step and every
train.monitor.every epochs.

    monitor = Monitor({"cache": "cache/synth_small", "every": 1, "k": 20, "temperature": 0.07}, "logmel", device)
    accuracy = monitor(encoder)        # 0-1; the encoder is back in train mode afterwards
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn

import data
import models


class Monitor:
    """train.monitor: the frozen encoder's weighted kNN accuracy (DINO: cosine, k 20, T 0.07; probe.knn_accuracy)
    on a labelled cache, every `every` epochs and before the first step (the random-init starting point).

    Train items: the cache's train split (or every fold but the last); test items: its test split (or the last
    fold). Clips are cut or padded to the median length from their start; log-mels are normalised with the
    scalar mean/std of the training items (as linear_eval.py). Runs on rank 0 under a forked RNG, so it
    never changes what training draws; its time is left out of the log's `seconds`."""

    def __init__(self, mcfg: dict, input_kind: str, device: torch.device):
        cache = Path(mcfg["cache"])
        df = data.read_manifest(cache)
        df = df[df["label"] != ""].reset_index(drop=True)
        if (df["split"] == "train").any() and (df["split"] == "test").any():
            is_train, is_test = df["split"] == "train", df["split"] == "test"
        elif df["fold"].notna().any():
            last = df["fold"].max()
            is_train, is_test = df["fold"].notna() & (df["fold"] != last), df["fold"] == last
        else:
            raise ValueError(f"train.monitor.cache {cache}: needs train/test splits or folds to score a kNN monitor")
        self.labels = data.LabelMap.from_labels(df.loc[is_train, "label"])
        self.k, self.temperature, self.device, self.kind = mcfg["k"], mcfg["temperature"], device, input_kind
        self.mean, self.std = (0.0, 1.0)
        if input_kind == "logmel":
            frames = sorted(data.load_array(cache, p).shape[-1] for p in df["logmel"][:200])[min(len(df), 200) // 2]
            make = lambda part: data.LogMelCrops(cache, part, self.labels, frames=frames, random_crop=False)
            self.mean, self.std = data.logmel_stats(cache, df[is_train], max_clips=1000)
        else:
            rate = int(data.cache_params(cache)["sample_rate"])
            samples = int(round(float(df["duration"].astype(float).median()) * rate))
            make = lambda part: data.WaveClips(cache, part, self.labels, samples=samples)
        self.train_set, self.test_set = make(df[is_train]), make(df[is_test])
        self.seconds, self.last = 0.0, None

    def embed(self, encoder: nn.Module, clips) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [N, D] and label indices [N] of a monitor split (log-mels standardised by the train stats)."""
        norm = (self.mean, self.std) if self.kind == "logmel" else None
        x = models.embed_dataset(encoder, clips, batch_size=64, device=self.device, desc="monitor", norm=norm)
        return torch.from_numpy(x), torch.from_numpy(clips.targets)

    def __call__(self, encoder: nn.Module) -> float:
        """kNN accuracy (0-1) of the encoder's current weights; the encoder is back in train mode afterwards."""
        import probe
        started = time.time()
        encoder.eval()
        with torch.random.fork_rng(devices=[]):
            train_x, train_y = self.embed(encoder, self.train_set)
            test_x, test_y = self.embed(encoder, self.test_set)
        encoder.train()
        accuracy = probe.knn_accuracy(train_x, train_y, test_x, test_y, len(self.labels), self.k, self.temperature)
        self.seconds += time.time() - started
        self.last = accuracy
        return accuracy
