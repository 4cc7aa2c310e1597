"""Objectives: MSN tests are named test_msn_*, NT-Xent/CLAR tests test_ntxent_* / test_clar_*."""
from __future__ import annotations

import math

import torch

import losses
