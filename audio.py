"""Audio I/O and feature extraction: the one place where waveforms become features.

    wave = load_audio("clip.flac")              # mono float32 numpy [L] at 16 kHz
    logmel = LogMel()(torch.from_numpy(wave))   # float32 [64, T], SPEC A1

Every loader error is an `AudioError` whose message names the file and the problem, so a
preprocessing run can skip the clip, record the reason and carry on.
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

SAMPLE_RATE = 16000
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, as BYOL-A / EVAR: ln(mel + eps)
LOG_SILENCE = float(np.log(LOG_EPS))  # -15.94: the log-mel of digital silence


class AudioError(Exception):
    """A clip cannot be used; str(err) is '<path>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Resample the last axis with torchaudio's windowed-sinc resampler (SPEC A1)."""
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
    """waveform [..., L] -> ln(mel power + eps) [..., n_mels, 1 + L // hop], for every L >= 0.

    Centred STFT with reflect padding, periodic Hann, power 2; Slaney mel scale with Slaney area
    normalisation (= librosa/nnAudio, what EVAR and BYOL-A v2 use) unless mel_scale="htk". Reflect padding
    needs more than n_fft // 2 samples: a shorter wave (even 0 samples) is taken as the clip followed by silence
    (n_fft // 2 + 1 zeros appended, which its 1 + L // hop frames see and which nothing reflects).
    """

    def __init__(self, cfg: LogMelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LogMelConfig()
        if cfg.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {cfg.mel_scale!r}")
        slaney = cfg.mel_scale == "slaney"
        fbank = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate,
            norm="slaney" if slaney else None, mel_scale=cfg.mel_scale)
        self.register_buffer("fbank", fbank, persistent=False)  # [n_fft // 2 + 1, n_mels]
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # = torchaudio MelSpectrogram(power=2) (tested); re^2 + im^2 is ~4x faster than |S|.pow(2) on CPU
        shape = wave.shape
        frames = 1 + shape[-1] // self.cfg.hop_length
        flat = wave.float().reshape(math.prod(shape[:-1]), shape[-1])
        if shape[-1] <= self.cfg.n_fft // 2:  # too short to reflect: the clip followed by silence (docstring)
            flat = torch.nn.functional.pad(flat, (0, self.cfg.n_fft // 2 + 1))
        spec = torch.stft(flat, self.cfg.n_fft, self.cfg.hop_length, self.cfg.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [N, n_fft // 2 + 1, frames]
        mel = torch.matmul(power.transpose(1, 2), self.fbank).transpose(1, 2)
        return torch.log(mel[..., :frames] + LOG_EPS).reshape(*shape[:-1], self.cfg.n_mels, frames)


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


@dataclass
class ClarFeatureConfig:
    """CLAR's 3-channel time-frequency input (SPEC A3 / B4).

    Default = the paper: 16 ms window (256 samples) and 8 ms stride (128) at 16 kHz, linear STFT bins
    0..n_mels-1 (the Nyquist bin is dropped so that 129 bins stack with 128 mels). The code's variant is
    n_fft=2048, win_length=2048, freq_scale="log": 128 DFT bins at f_min * (f_max / f_min)^(k / 128) Hz.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 256
    win_length: int = 256
    hop_length: int = 128
    n_mels: int = 128
    f_min: float = 40.0
    f_max: float = 8000.0
    freq_scale: str = "linear"  # "log" = the code's log-frequency STFT kernels
    amin: float = 1e-10  # power floor of the log: 10 log10(max(|S|^2, amin))

    def to_dict(self) -> dict:
        return asdict(self)


class ClarFeatures(torch.nn.Module):
    """wave [B, L] -> [B, 3, n_mels, 1 + L // hop]: stacked (10 log10 |S|^2, angle(S), 10 log10 mel power), for
    every L >= 0 (a wave of at most n_fft // 2 samples is the clip followed by silence, as in LogMel).

    Centred STFT with reflect padding and a periodic Hann window, batched on the wave's device. Mel:
    Slaney scale and area normalisation (as A1), f_min..f_max. With the paper's 16 ms window about 13 of the
    128 lowest mel filters fall between STFT bins and stay empty (constant 10 log10(amin)); that is the
    paper's setting, kept as is. Buffers are not persistent, so the module adds nothing to a state_dict.
    """

    def __init__(self, cfg: ClarFeatureConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ClarFeatureConfig()
        if cfg.freq_scale not in ("linear", "log"):
            raise ValueError(f"freq_scale must be 'linear' or 'log', got {cfg.freq_scale!r}")
        n_freqs = cfg.n_fft // 2 + 1
        if cfg.freq_scale == "linear" and n_freqs - 1 < cfg.n_mels:
            raise ValueError(f"n_fft {cfg.n_fft} gives {n_freqs} bins; need at least n_mels + 1 = {cfg.n_mels + 1}")
        window = torch.hann_window(cfg.win_length)
        self.register_buffer("window", window, persistent=False)
        import warnings

        with warnings.catch_warnings():  # the empty low filters of the paper's setting are documented above
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            fbank = torchaudio.functional.melscale_fbanks(n_freqs, cfg.f_min, cfg.f_max, cfg.n_mels,
                                                          cfg.sample_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fbank", fbank, persistent=False)
        if cfg.freq_scale == "log":  # DFT rows at log-spaced frequencies over the zero-padded n_fft frame
            freqs = cfg.f_min * (cfg.f_max / cfg.f_min) ** (torch.arange(cfg.n_mels) / cfg.n_mels)
            n = torch.arange(cfg.n_fft)
            basis = torch.exp(-2j * np.pi * freqs[:, None].double() * n[None].double() / cfg.sample_rate)
            self.register_buffer("log_basis", basis.to(torch.complex64), persistent=False)  # [n_mels, n_fft]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        frames = 1 + wave.shape[-1] // cfg.hop_length
        if wave.shape[-1] <= cfg.n_fft // 2:  # too short to reflect: the clip followed by silence (as LogMel)
            wave = torch.nn.functional.pad(wave, (0, cfg.n_fft // 2 + 1))
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop_length, cfg.win_length, self.window, center=True,
                              pad_mode="reflect", return_complex=True)  # [B, n_freqs, T]
            power = spec.real ** 2 + spec.imag ** 2
            mel = torch.einsum("bft,fm->bmt", power, self.mel_fbank)
            if cfg.freq_scale == "linear":
                spec = spec[:, :cfg.n_mels]
            else:
                spec = self._log_frequency_stft(wave.float())
            magnitude_db = 10 * torch.log10((spec.real ** 2 + spec.imag ** 2).clamp_min(cfg.amin))
            mel_db = 10 * torch.log10(mel.clamp_min(cfg.amin))
            return torch.stack([magnitude_db, torch.angle(spec), mel_db], dim=1)[..., :frames]

    def _log_frequency_stft(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        padded = torch.nn.functional.pad(wave[:, None], (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")[:, 0]
        frames = padded.unfold(-1, cfg.n_fft, cfg.hop_length)  # [B, T, n_fft]
        left = (cfg.n_fft - cfg.win_length) // 2
        window = torch.nn.functional.pad(self.window, (left, cfg.n_fft - cfg.win_length - left))
        return torch.einsum("btn,kn->bkt", (frames * window).to(torch.complex64), self.log_basis)
