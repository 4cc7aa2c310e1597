"""Audio I/O and feature extraction: the one place where waveforms become features.

    wave = load_audio("clip.flac")              # mono float32 numpy [L] at 16 kHz
    logmel = LogMel()(torch.from_numpy(wave))   # float32 [64, T], SPEC A1

Every loader error is an `AudioError` whose message names the file and the problem, so a
preprocessing run can skip the clip, record the reason and carry on.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, as BYOL-A / EVAR: ln(mel + eps)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioError(Exception):
    """A clip cannot be used; str(err) is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample the last axis with torchaudio's windowed-sinc resampler (SPEC A1)."""
    if orig_sr == new_sr:
        return wave
    return torchaudio.functional.resample(wave, orig_sr, new_sr)


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, min_seconds: float = 0.0) -> np.ndarray:
    """Read any file soundfile can decode and return mono float32 [L] at `sr`.

    Channels are averaged (EVAR/BYOL-A: mono = mean of channels), then resampled with torchaudio.
    Raises AudioError for an unreadable, empty, too short (< `min_seconds` after resampling) or
    non-finite clip.
    """
    if not os.path.isfile(path):
        raise AudioError(path, "missing (no such file)")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AudioError(path, f"unreadable ({reason})") from None
    if data.size == 0:
        raise AudioError(path, "empty (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "non-finite samples (NaN or Inf)")
    mono = torch.from_numpy(data.mean(axis=1))
    wave = resample(mono, int(file_sr), sr).numpy().astype(np.float32, copy=False)
    if len(wave) < min_seconds * sr:
        raise AudioError(path, f"too short ({len(wave) / sr:.3f} s < {min_seconds} s)")
    return wave


@dataclass
class LogMelConfig:
    """Log-mel front end of SPEC A1 (MSN-audio seed, BYOL-A/EVAR conventions)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    mel_scale: str = "slaney"  # "htk" (with no filter norm) = BYOL-A v1 torchaudio default

    def to_dict(self) -> dict:
        return asdict(self)


class LogMel(torch.nn.Module):
    """waveform [..., L] -> ln(mel power + eps) [..., n_mels, 1 + L // hop].

    Centred STFT with reflect padding, periodic Hann, power 2; Slaney mel scale with Slaney area
    normalisation (= librosa/nnAudio, what EVAR and BYOL-A v2 use) unless mel_scale="htk".
    """

    def __init__(self, cfg: LogMelConfig | None = None):
        super().__init__()
        self.cfg = cfg or LogMelConfig()
        slaney = self.cfg.mel_scale == "slaney"
        if self.cfg.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {self.cfg.mel_scale!r}")
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.cfg.sample_rate, n_fft=self.cfg.n_fft, win_length=self.cfg.win_length,
            hop_length=self.cfg.hop_length, f_min=self.cfg.f_min, f_max=self.cfg.f_max,
            n_mels=self.cfg.n_mels, power=2.0, center=True, pad_mode="reflect",
            mel_scale="slaney" if slaney else "htk", norm="slaney" if slaney else None,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave.float()) + LOG_EPS)


def fix_length(wave: np.ndarray | torch.Tensor, length: int, offset: int = 0):
    """Crop `wave` [..., L] to `length` samples from `offset`, or zero-pad on the right (EVAR)."""
    n = wave.shape[-1]
    if n >= length:
        return wave[..., offset:offset + length]
    pad = length - n
    if isinstance(wave, torch.Tensor):
        return torch.nn.functional.pad(wave, (0, pad))
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, pad)])
