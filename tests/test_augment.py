"""Spectrogram augmentations (SPEC B2): deterministic cores against hand computations."""
from __future__ import annotations

import math

import numpy as np
import torch

import augment


def test_log_mixup_exp_matches_formula():
    xa, xb = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, -1.0]])
    out = augment.log_mixup_exp(xa, xb, 0.25)
    eps = float(np.finfo(np.float32).eps)
    expected = [math.log(0.25 * 1 + 0.75 * math.exp(2) + eps), math.log(0.25 * math.e + 0.75 * math.exp(-1) + eps)]
    assert torch.allclose(out[0], torch.tensor(expected), atol=1e-6)
