"""Objectives: MSN (Assran et al. 2022; SPEC B1) and NT-Xent / CLAR (Chen et al. 2020; Al-Tahan and
Mohsenzadeh 2021; SPEC A3). All maths is done in fp32, also under bf16 autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils import all_reduce_sum, gather_with_grad, world_size

# ============================================================================ MSN


# ============================================================================ NT-Xent / CLAR
