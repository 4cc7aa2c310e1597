"""Networks: ViT encoders for MSN (torchvision vit_b_32 and an audio-native ViT), 1D/2D ResNet18 for
CLAR, and their heads.

Every encoder built by `build_encoder(cfg)` has the same evaluation interface, used by linear_eval.py:

    encoder.input_kind   "logmel" (x = normalised log-mel [B, 1, F, T]) or "wave" (x = [B, L] at 16 kHz)
    encoder.embed_dim    size of the embedding
    encoder.embed(x, long="chunk", pool="cls") -> [B, embed_dim]

so a checkpoint, which carries its resolved config, rebuilds its encoder with no other information.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ============================================================================ ViT encoders (MSN)


# ============================================================================ ResNet18 1D / 2D (CLAR)


# ============================================================================ factory


def build_encoder(cfg: dict) -> nn.Module:
    """The encoder named by cfg["model"]["arch"]: vit_b_32 | vit_audio | resnet18_2d | resnet18_1d."""
    arch = cfg["model"]["arch"]
    if arch in ("vit_b_32", "vit_audio"):
        return build_vit(cfg["model"])
    if arch in ("resnet18_2d", "resnet18_1d"):
        return build_resnet(cfg["model"])
    raise ValueError(f"unknown model.arch {arch!r}; expected vit_b_32, vit_audio, resnet18_2d or resnet18_1d")
