"""Audio I/O and feature extraction: the one place where waveforms become features.

    wave = load_audio("clip.flac")              # mono float32 numpy [L] at 16 kHz
    logmel = LogMel()(torch.from_numpy(wave))   # float32 [64, T], the seed's front end, EVAR evar/ar_base.py

Every loader error is an `AudioError` whose message names the file and the problem, so a
preprocessing run can skip the clip, record the reason and carry on.
"""
from __future__ import annotations

import functools
import os
import re

import numpy as np
import soundfile as sf
import torch
import torchaudio

# The feature front ends live in the one-file encoder module (what an installed encoder computes), used here as is:
# LogMel(Config) the log-mel of every log-mel encoder, ClarFeatures(Config) CLAR's 3-channel input.
from audio_ssl_repro import (  # noqa: F401  (re-exported: audio is where waveforms become features)
    LOG_EPS,
    LOG_SILENCE,
    SAMPLE_RATE,
    ClarFeatureConfig,
    ClarFeatures,
    LogMel,
    LogMelConfig,
)


class AudioError(Exception):
    """A clip cannot be used; str(err) is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample the last axis with torchaudio's windowed-sinc resampler (the seed's front end, EVAR evar/ar_base.py)."""
    if orig_sr == new_sr:
        return wave
    return _resampler(orig_sr, new_sr)(wave)


@functools.lru_cache(maxsize=8)
def _resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    # the module precomputes its sinc kernel once; functional.resample rebuilds it on every call
    return torchaudio.transforms.Resample(orig_sr, new_sr)


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, min_seconds: float = 0.0) -> np.ndarray:
    """Read any file soundfile can decode and return mono float32 [L] at `sr`.

    Channels are averaged (EVAR/BYOL-A: mono = mean of channels), then resampled with torchaudio.
    Raises AudioError for an unreadable, empty, too short (< `min_seconds` after resampling) or
    non-finite clip, and for a file whose header does not parse (guessed_format_reason).
    """
    if not os.path.isfile(path):
        raise AudioError(path, "missing (no such file)")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            if f.format == "RAW":
                raise AudioError(path, guessed_format_reason(f))
            data, file_sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except AudioError:
        raise
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


def guessed_format_reason(f: sf.SoundFile) -> str:
    """The errors.csv reason for a file whose header did not parse: libsndfile then guesses a headerless (RAW)
    format from the extension alone (.au/.snd: u-law at 8000 Hz, .vox: VOX ADPCM, .gsm: GSM 6.10), which
    decodes any bytes as noise. Such a file is skipped, never decoded by guessing."""
    return (f"header does not parse (damaged or not a {os.path.splitext(f.name)[1]} file); libsndfile would guess "
            f"headerless {f.subtype} at {f.samplerate} Hz from the extension, so it is not decoded")


def truncation_warning(path: str | os.PathLike) -> str | None:
    """'loaded, truncated: ...' when a file's header declares more audio data than the file holds (a cut
    download or copy; libsndfile then reads what is there without an error), else None. libsndfile reports it
    in its header dump as 'data : <declared> (should be <present>)' (WAV/RF64/W64; other formats: None)."""
    try:
        info = sf.info(str(path))
    except Exception:  # unreadable files are reported by load_audio
        return None
    m = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", info.extra_info, re.MULTILINE)
    if not m or int(m[2]) >= int(m[1]) or not info.frames or not int(m[2]):
        return None
    declared = int(m[1]) / (int(m[2]) / info.frames) / info.samplerate
    return f"loaded, truncated: header says {declared:.3f} s, data ends at {info.duration:.3f} s"


def fix_length(wave: np.ndarray | torch.Tensor, length: int, offset: int = 0, value: float = 0.0):
    """Crop `wave` [..., L] to `length` samples from `offset`, or pad on the right with `value` (EVAR: zeros).

    For a log-mel, pad with LOG_SILENCE (what a zero-padded waveform gives), not 0, which is loud.
    """
    n = wave.shape[-1]
    if n >= length:
        return wave[..., offset:offset + length]
    pad = length - n
    if isinstance(wave, torch.Tensor):
        return torch.nn.functional.pad(wave, (0, pad), value=value)
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(0, pad)], constant_values=value)
