"""Augmentations: spectrogram views for MSN (BYOL-A, SPEC B2) and waveform views for CLAR (SPEC A3).

Every augmentation exposes its deterministic core (a function of explicit parameters) separately
from its random draws, so the core can be tested exactly and the batched version can be checked
against the per-sample one for the same drawn parameters.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ============================================================================ spectrogram (MSN / BYOL-A)


# ============================================================================ waveform (CLAR)
