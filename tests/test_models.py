"""Encoders: ViT (MSN) tests are named test_vit_*, ResNet (CLAR) tests test_resnet_*."""
from __future__ import annotations

import torch

import models

VIT_B32 = {"arch": "vit_b_32", "image_size": 224, "crop_frames": 96, "pretrained": None}
