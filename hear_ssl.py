"""HEAR 2021 module for every encoder of this package (hearbenchmark.com, hear-eval-kit "common API").

    import hear_ssl
    model = hear_ssl.load_model("encoder.pt")   # export.py's file, or a training checkpoint runs/X/ckpt_last.pt
    scene = hear_ssl.get_scene_embeddings(audio, model)        # audio [n, samples] 16 kHz in [-1, 1] -> [n, D]
    emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)  # [n, T, D] float32, [n, T] ms
    hear-validator hear_ssl -m encoder.pt --device cpu         # what `make hear-check` runs (hear_check.py)

The model is a torch.nn.Module with the HEAR attributes sample_rate (16000), scene_embedding_size and
timestamp_embedding_size (= encoder.embed_dim, Python ints). The audio is moved to the model's device (the
validator's .to(device) picks CPU or CUDA). Log-mel encoders get audio.LogMel (the training cache's settings)
and the scalar normalisation that travels with the model (portable.py: MSN's RunningNorm state, BYOL-A v2's
precomputed statistics), not a task's statistics as linear_eval.py (EVAR) uses.

Audio with NaN or inf is a ValueError naming the sounds; a sound shorter than one frame (MIN_SAMPLES = 1024
samples, 64 ms; even 0 samples) is right-padded with zeros to it and still gets the shapes below (check_audio).

Scene embedding: encoder.embed(whole clip, long="chunk", pool="cls"), the embedding linear_eval.py probes.
Timestamp embeddings, every clip length, a regular hop <= 50 ms, first timestamp within one hop of 0, the
last within one hop of the end and never past it:
- audiontt2022 (BYOL-A): its own per-frame features (models.AudioNTT2022.frames) on the whole clip: one per 4
  log-mel frames, so 40 ms apart, centred at 40 k + 15 ms; the log-mel is right-padded with silence to the
  last frame that starts in the clip.
- ViTs (MSN) and ResNets (CLAR): a training-length window (model.crop_frames log-mel frames or
  model.clip_seconds of wave) centred on each timestamp 50 k ms, padded with silence at the clip's edges,
  embedded as a clip (CLS token / average pool). Patch tokens would be 80-320 ms apart (patch width, or 96
  frames resized to 7 ViT-B/32 columns) and the ResNets' last maps 2-256 ms apart with a receptive field of
  whole seconds; one window per timestamp gives every encoder the input it was trained on.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import portable
from audio import SAMPLE_RATE

WINDOW_HOP_MS = 50           # timestamps of the windowed encoders (ViT, ResNet)
MIN_SAMPLES = 1024           # one frame (a log-mel window, 64 ms): shorter audio is right-padded with zeros to it
FRAME_STEP = 4               # log-mel frames per AudioNTT2022 frame (two 2x max-pools)
BATCH = 64                   # encoder inputs (clips or windows) per forward pass


class HearModel(nn.Module):
    """An encoder of this package behind the HEAR API: encoder + Frontend (wave -> encoder input)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, bundle: dict):
        super().__init__()
        self.encoder = encoder.eval()
        self.frontend = portable.Frontend(encoder.input_kind, bundle["logmel"], bundle["norm"])
        self.scene_embedding_size = int(encoder.embed_dim)
        self.timestamp_embedding_size = int(encoder.embed_dim)
        self.arch = bundle["config"]["model"]["arch"]
        model_cfg = bundle["config"]["model"]
        if encoder.input_kind == "logmel":
            self.window = int(model_cfg.get("crop_frames", 96))  # in log-mel frames
        else:
            self.window = int(encoder.clip_samples)               # in samples


def load_model(model_file_path: str = "") -> HearModel:
    """HEAR load_model: an export.py encoder file or a training checkpoint of this package -> HearModel."""
    if not model_file_path:
        raise ValueError("hear_ssl.load_model: pass the path of an encoder file (export.py) or a checkpoint")
    if not os.path.isfile(model_file_path):
        raise FileNotFoundError(f"{model_file_path}: encoder file not found")
    encoder, bundle = portable.load(model_file_path)
    return HearModel(encoder, bundle)


def _device(model: HearModel) -> torch.device:
    return next(model.encoder.parameters()).device


def check_audio(audio: torch.Tensor) -> torch.Tensor:
    """HEAR audio [n_sounds, n_samples] checked and made usable: a ValueError names a wrong shape or the sounds
    with NaN or inf samples (they would give NaN embeddings); a sound shorter than one frame (MIN_SAMPLES,
    even 0 samples) is right-padded with zeros to one frame (its timestamps still come from its own length)."""
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples], got shape {tuple(audio.shape)}")
    bad = (~torch.isfinite(audio)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        listed = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"audio has NaN or inf samples in {len(bad)} of {len(audio)} sounds (index {listed}); "
                         "HEAR audio must be finite, in [-1, 1]")
    return F.pad(audio, (0, MIN_SAMPLES - audio.shape[1])) if audio.shape[1] < MIN_SAMPLES else audio


def _embed(model: HearModel, x: torch.Tensor) -> torch.Tensor:
    """encoder.embed over the first axis in batches of BATCH -> float32 [N, D]."""
    return torch.cat([model.encoder.embed(x[i:i + BATCH], long="chunk", pool="cls").float()
                      for i in range(0, len(x), BATCH)])


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """HEAR get_scene_embeddings: audio [n, samples] at 16 kHz -> float32 [n, scene_embedding_size]."""
    audio = check_audio(audio)
    with torch.no_grad():
        x = model.frontend(audio.to(_device(model), torch.float32))
        if model.arch == "audiontt2022" and x.shape[-1] < FRAME_STEP:  # its two pools need 4 frames
            x = F.pad(x, (0, FRAME_STEP - x.shape[-1]), value=model.frontend.silence)
        return _embed(model, x)


def timestamps(n_samples: int, hop: int, offset: int = 0, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Timestamps (ms, float32) offset + k * hop samples for k >= 0 up to the clip's end (at least one)."""
    count = max(1, (n_samples - offset) // hop + 1)
    return (offset + hop * torch.arange(count, dtype=torch.float64)) * 1000.0 / sample_rate


def centred_windows(x: torch.Tensor, step: int, count: int, width: int, value: float) -> torch.Tensor:
    """x [B, ..., T] -> [B * count, ..., width]: window k holds x[..., k*step - width//2 : k*step - width//2 + width],
    positions outside the clip filled with `value`."""
    left = width // 2
    right = max(0, (count - 1) * step + width - left - x.shape[-1])
    windows = F.pad(x, (left, right), value=value).unfold(-1, width, step)[..., :count, :]  # [B, ..., count, width]
    return windows.movedim(-2, 1).flatten(0, 1)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR get_timestamp_embeddings: audio [n, samples] at 16 kHz -> (float32 [n, T, timestamp_embedding_size],
    timestamps in ms [n, T]); see the module docstring for how each encoder family makes its frames."""
    n, n_samples, device = audio.shape[0], audio.shape[1], _device(model)  # timestamps: the sound's own length
    audio = check_audio(audio)
    with torch.no_grad():
        x = model.frontend(audio.to(device, torch.float32))
        hop = model.frontend.hop  # samples per input step (log-mel frame or sample)
        if model.arch == "audiontt2022":
            step = FRAME_STEP * hop
            ts = timestamps(n_samples, step, offset=(FRAME_STEP - 1) * hop // 2)  # frame centre, 1.5 log-mel frames
            need = FRAME_STEP * len(ts)
            x = F.pad(x, (0, max(0, need - x.shape[-1])), value=model.frontend.silence)
            emb = model.encoder.frames(x)[:, :len(ts)].float()
        else:
            step = WINDOW_HOP_MS * SAMPLE_RATE // 1000 // hop  # in input steps (5 log-mel frames, 800 samples)
            ts = timestamps(n_samples, step * hop)
            windows = centred_windows(x, step, len(ts), model.window, model.frontend.silence)
            emb = _embed(model, windows).view(n, len(ts), -1)
    return emb, ts.float().to(device).expand(n, -1).contiguous()
