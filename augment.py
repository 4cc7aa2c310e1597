"""Augmentations: spectrogram views for MSN (BYOL-A, SPEC B2) and waveform views for CLAR (SPEC A3).

Every augmentation exposes its deterministic core (a function of explicit parameters) separately
from its random draws, so the core can be tested exactly and the batched version can be checked
against the per-sample one for the same drawn parameters.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop as TorchvisionRandomResizedCrop

# ============================================================================ spectrogram (MSN / BYOL-A)
# All spectrogram augmentations take a batch logmel [B, 1, F, T] on any device and apply the reference's
# per-sample semantics sample by sample in batch order (SPEC B2). Random draws use the global NumPy /
# Python / torch RNGs exactly where the reference does, so utils.rng_state() captures them for resume.

LOG_EPS = float(np.finfo(np.float32).eps)


def log_mixup_exp(xa: torch.Tensor, xb: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """BYOL-A log-mixup-exp: log(alpha * exp(xa) + (1 - alpha) * exp(xb) + eps) (SPEC B2)."""
    return torch.log(alpha * xa.exp() + (1 - alpha) * xb.exp() + LOG_EPS)


class MixupBYOLA:
    """BYOL-A mixup with a FIFO memory of the last `n_memory` UNMIXED inputs (SPEC B2, v2 ratio 0.2).

    Per sample, in batch order: alpha = ratio * U[0, 1) (np.random); if the memory is non-empty, z = a
    uniformly drawn memory item (np.random.randint) and out = log_mixup_exp(x, z, 1 - alpha), else out = x;
    then x is appended to the memory. Inputs earlier in the same batch are in the memory for later ones.
    The memory is a ring buffer on the input's device; all inputs must have the same shape.

        mix = MixupBYOLA(ratio=0.2); views = mix(logmel)   # [B, 1, F, T] -> same shape
    """

    def __init__(self, ratio: float = 0.2, n_memory: int = 2048, log_mixup: bool = True):
        self.ratio, self.n_memory, self.log_mixup = ratio, n_memory, log_mixup
        self.ring: torch.Tensor | None = None  # [n_memory, 1, F, T]
        self.count, self.next = 0, 0  # items held, next write position

    def draw(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """alphas [B] and pool indices [B] (-1 = no mix); pool = the memory, oldest first, then the batch."""
        alphas, picks = np.zeros(batch), np.full(batch, -1)
        for b in range(batch):
            alphas[b] = self.ratio * np.random.random()
            available = min(self.count + b, self.n_memory)  # memory length when sample b is processed
            if available > 0:
                picks[b] = self.count + b - available + np.random.randint(available)
        return alphas, picks

    def mix(self, x: torch.Tensor, alphas: np.ndarray, picks: np.ndarray) -> torch.Tensor:
        """Deterministic core: mix x [B, 1, F, T] with the pool items `picks`, then push x into the memory."""
        if self.ring is None:
            self.ring = x.new_zeros(self.n_memory, *x.shape[1:])
        self.ring = self.ring.to(x)
        from_memory = picks < self.count
        z = x.detach().clone()
        if from_memory.any():
            slots = (self.next - self.count + picks[from_memory]) % self.n_memory
            z[torch.as_tensor(from_memory, device=x.device)] = self.ring[torch.as_tensor(slots, device=x.device)]
        in_batch = picks >= self.count
        if in_batch.any():
            z[torch.as_tensor(in_batch, device=x.device)] = x.detach()[torch.as_tensor(picks[in_batch] - self.count,
                                                                                      device=x.device)]
        lam = torch.as_tensor(1 - alphas, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        mixed = log_mixup_exp(x, z, lam) if self.log_mixup else lam * x + (1 - lam) * z
        keep = x.detach()[-self.n_memory:]
        slots = (self.next + torch.arange(len(x) - len(keep), len(x))) % self.n_memory
        self.ring[slots.to(x.device)] = keep
        self.next = (self.next + len(x)) % self.n_memory
        self.count = min(self.count + len(x), self.n_memory)
        return torch.where(torch.as_tensor(picks >= 0, device=x.device).view(-1, 1, 1, 1), mixed, x)

    @property
    def memory(self) -> torch.Tensor | None:
        """The held inputs [count, 1, F, T], oldest first."""
        if self.ring is None:
            return None
        return self.ring[(self.next - self.count + torch.arange(self.count)) % self.n_memory]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x, *self.draw(len(x)))

    def state_dict(self) -> dict:
        return {"memory": None if self.ring is None else self.memory.cpu()}

    def load_state_dict(self, state: dict) -> None:
        memory = state["memory"]
        self.ring, self.count, self.next = None, 0, 0
        if memory is not None:
            self.ring = memory.new_zeros(self.n_memory, *memory.shape[1:])
            self.ring[:len(memory)] = memory
            self.count, self.next = len(memory), len(memory) % self.n_memory


def _size2(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resized_crop(x: torch.Tensor, box: tuple[int, int, int, int], size, mode: str = "bilinear") -> torch.Tensor:
    """Crop x [..., F, T] to box (i, j, h, w) (top, left, height, width) and resize to `size`.

    bilinear: align_corners=False and no antialiasing (= torchvision resized_crop(antialias=False), the
    seed's crop); bicubic: align_corners=True (BYOL-A RandomResizeCrop).
    """
    i, j, h, w = box
    crop = x[..., i:i + h, j:j + w]
    shape = crop.shape
    crop = crop.reshape(-1, 1, h, w)
    align = None if mode in ("nearest", "area") else mode == "bicubic"
    out = F.interpolate(crop, size=_size2(size), mode=mode, align_corners=align)
    return out.reshape(*shape[:-2], *out.shape[-2:])


class RandomResizedCrop:
    """The seed's crop: torchvision RandomResizedCrop(size, scale, ratio (3/4, 4/3), antialias=False).

    Boxes are drawn per sample with torchvision's own sampler (torch RNG); the crop is `resized_crop`.
    """

    def __init__(self, size, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = _size2(size), tuple(scale), tuple(ratio)

    def draw(self, shape: torch.Size) -> list[tuple[int, int, int, int]]:
        dummy = torch.empty(1, shape[-2], shape[-1])  # get_params only reads the size
        return [TorchvisionRandomResizedCrop.get_params(dummy, list(self.scale), list(self.ratio))
                for _ in range(shape[0])]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([resized_crop(xb, box, self.size) for xb, box in zip(x, self.draw(x.shape))])


class RandomResizeCropBYOLA:
    """BYOL-A RandomResizeCrop (SPEC B2): zero canvas [F*v0, T*v1] with the input in its centre, a box of
    U(freq_scale)*F x U(time_scale)*T (np.random), position by Python random.randint, bicubic resize with
    align_corners=True to `size` (None = the input size, as in BYOL-A).
    """

    def __init__(self, size=None, virtual_crop_scale=(1.0, 1.5), freq_scale=(0.6, 1.5), time_scale=(0.6, 1.5)):
        self.size = None if size is None else _size2(size)
        self.virtual_crop_scale, self.freq_scale, self.time_scale = virtual_crop_scale, freq_scale, time_scale

    def canvas(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, F, T] pasted at the centre of a zero canvas [B, 1, int(F*v0), int(T*v1)]."""
        f, t = x.shape[-2:]
        cf, ct = int(f * self.virtual_crop_scale[0]), int(t * self.virtual_crop_scale[1])
        out = x.new_zeros(*x.shape[:-2], cf, ct)
        y0, x0 = (cf - f) // 2, (ct - t) // 2
        out[..., y0:y0 + f, x0:x0 + t] = x
        return out

    def draw(self, shape: torch.Size) -> list[tuple[int, int, int, int]]:
        f, t = shape[-2:]
        cf, ct = int(f * self.virtual_crop_scale[0]), int(t * self.virtual_crop_scale[1])
        boxes = []
        for _ in range(shape[0]):
            h = int(np.clip(int(np.random.uniform(*self.freq_scale) * f), 1, cf))
            w = int(np.clip(int(np.random.uniform(*self.time_scale) * t), 1, ct))
            i = random.randint(0, cf - h) if cf > h else 0
            j = random.randint(0, ct - w) if ct > w else 0
            boxes.append((i, j, h, w))
        return boxes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size or tuple(x.shape[-2:])
        canvas = self.canvas(x)
        return torch.stack([resized_crop(cb, box, size, mode="bicubic") for cb, box in zip(canvas, self.draw(x.shape))])


def linear_fade(x: torch.Tensor, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Add linspace(head[b], tail[b], T) to every frequency bin of x[b] [B, 1, F, T] (BYOL-A v2 fader)."""
    ramp = torch.linspace(0, 1, x.shape[-1], device=x.device, dtype=x.dtype)
    head = torch.as_tensor(head, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    tail = torch.as_tensor(tail, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return x + head + (tail - head) * ramp


class RandomLinearFader:
    """BYOL-A v2 RandomLinearFader(gain): per sample head, tail = gain * (2 * np.random.rand(2) - 1)."""

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def draw(self, batch: int) -> np.ndarray:
        return np.stack([self.gain * (2 * np.random.rand(2) - 1) for _ in range(batch)]).reshape(batch, 2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gains = self.draw(len(x))
        return linear_fade(x, gains[:, 0], gains[:, 1])


class RunningNorm:
    """BYOL-A v1 RunningNorm (SPEC B2): running scalar mean/std of the first epoch_samples*max_update_epochs
    samples, frozen afterwards. Each sample (in batch order) first updates the statistics, then is normalised
    with the updated ones: mu += (mean(x) - mu)/n; var += (mean((x - mu)^2) - var)/n; std clamped at eps.
    """

    def __init__(self, epoch_samples: int, max_update_epochs: int = 10):
        self.max_update = epoch_samples * max_update_epochs
        self.n, self.mu, self.var = 0, 0.0, 0.0

    def update(self, sample: torch.Tensor) -> None:
        self.n += 1
        self.mu += (sample.double().mean().item() - self.mu) / self.n
        self.var += (((sample.double() - self.mu) ** 2).mean().item() - self.var) / self.n

    @property
    def std(self) -> float:
        return min(max(math.sqrt(self.var), float(torch.finfo().eps)), float(torch.finfo().max))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.n >= self.max_update:  # frozen: one vectorised step
            return (x - self.mu) / self.std
        out = torch.empty_like(x)
        for b in range(len(x)):
            if self.n < self.max_update:
                self.update(x[b])
            out[b] = (x[b] - self.mu) / self.std
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "mu": self.mu, "var": self.var, "max_update": self.max_update}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.mu, self.var, self.max_update = state["n"], state["mu"], state["var"], state["max_update"]


class PrecomputedNorm:
    """BYOL-A v2 PrecomputedNorm: (x - mean) / std with dataset statistics (data.logmel_stats)."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalize_batch(x: torch.Tensor, dims=(0, 2, 3)) -> torch.Tensor:
    """BYOL-A NormalizeBatch: standardise over `dims` with the UNBIASED std clamped at float32 eps."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp(float(torch.finfo(torch.float32).eps), float(torch.finfo().max))
    return (x - mean) / std


# ============================================================================ waveform (CLAR)
# CLAR's waveform augmentations (SPEC A3). Each deterministic core takes a wave [..., L] and explicit
# parameters; `WaveAugment` draws those parameters from torch's global RNG (captured by utils.rng_state)
# and composes any subset, in any order, named in the config.

WAVE_AUGMENTATIONS = ("fade", "time_mask", "time_stretch", "pitch_shift", "time_shift", "white_noise", "mixed_noise")
FADE_SHAPES = ("linear", "log", "exponential")
NOISE_COLORS = ("white", "pink", "brown")


def fft_resample(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Band-limited resampling of [..., L] to `length` samples: truncate or zero-pad the spectrum."""
    n = wave.shape[-1]
    if n == length:
        return wave
    spec = torch.fft.rfft(wave)
    bins = length // 2 + 1
    spec = spec[..., :bins] if spec.shape[-1] >= bins else F.pad(spec, (0, bins - spec.shape[-1]))
    return torch.fft.irfft(spec, n=length) * (length / n)


def phase_vocoder_stretch(wave: torch.Tensor, rate: float, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """Change the speed of [..., L] by `rate` keeping the pitch (STFT -> phase vocoder -> inverse STFT).

    rate > 1 speeds up; the result has round(L / rate) samples.
    """
    from torchaudio.functional import phase_vocoder

    shape, n = wave.shape[:-1], wave.shape[-1]
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave.reshape(-1, n).float(), n_fft, hop, window=window, return_complex=True)  # [B, F, T]
    phase_advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=wave.device)[:, None]
    stretched = phase_vocoder(spec, rate, phase_advance)
    out = torch.istft(stretched, n_fft, hop, window=window, length=round(n / rate))
    return out.reshape(*shape, -1)


def crop_or_pad(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Keep the first `length` samples of [..., L], or zero-pad on the right."""
    n = wave.shape[-1]
    return wave[..., :length] if n >= length else F.pad(wave, (0, length - n))


def time_stretch(wave: torch.Tensor, rate: float, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """Phase-vocoder time stretch by `rate` in [0.5, 1.5], then crop or pad to the original length (SPEC A3)."""
    return crop_or_pad(phase_vocoder_stretch(wave, rate, n_fft, hop), wave.shape[-1])


def pitch_shift(wave: torch.Tensor, semitones: float, n_fft: int = 512, hop: int = 128) -> torch.Tensor:
    """Shift the pitch of [..., L] by `semitones`, same length: stretch to L * 2^(n/12) samples, resample to L.

    torchaudio.functional.pitch_shift does the same but resamples with a gcd-sized polyphase filter that
    takes seconds for most non-integer ratios; the band-limited FFT resampler is exact and fast.
    """
    factor = 2.0 ** (semitones / 12)
    return fft_resample(phase_vocoder_stretch(wave, 1.0 / factor, n_fft, hop), wave.shape[-1])


def colored_noise(length: int, color: str = "white") -> torch.Tensor:
    """Unit-RMS noise [length]: white (flat), pink (power ~ 1/f) or brown (power ~ 1/f^2), no DC."""
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")
    noise = torch.randn(length)
    if color != "white":
        spec = torch.fft.rfft(noise)
        freqs = torch.arange(spec.shape[-1], dtype=torch.float32).clamp_min(1.0)
        spec = spec / freqs ** (0.5 if color == "pink" else 1.0)
        spec[0] = 0
        noise = torch.fft.irfft(spec, n=length)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """wave + g * noise with g chosen so that 10 log10(mean(wave^2) / mean((g noise)^2)) = snr_db.

    Unlike the reference's mixed noise, the sum is not clipped to [0, 1] (SPEC A3).
    """
    p_wave = wave.pow(2).mean(-1, keepdim=True)
    p_noise = noise.pow(2).mean(-1, keepdim=True).clamp_min(1e-20)
    return wave + torch.sqrt(p_wave / (p_noise * 10 ** (snr_db / 10))) * noise


def fade_curve(n: int, shape: str = "linear") -> torch.Tensor:
    """Rising gain [n] from exactly 0 to exactly 1: linear t, log log10(1 + 9t), exponential t * 2^(5(t-1))."""
    t = torch.linspace(0, 1, n)
    if shape == "linear":
        return t
    if shape == "log":
        return torch.log10(1 + 9 * t)
    if shape == "exponential":
        return t * 2 ** (5 * (t - 1))
    raise ValueError(f"fade shape must be one of {FADE_SHAPES}, got {shape!r}")


def fade(wave: torch.Tensor, fade_in: int, fade_out: int, shape: str = "linear") -> torch.Tensor:
    """Fade the first `fade_in` samples in (gain 0 -> 1) and the last `fade_out` samples out (1 -> 0)."""
    n = wave.shape[-1]
    gain = torch.ones(n, device=wave.device)
    if fade_in > 0:
        gain[:fade_in] = fade_curve(fade_in, shape)
    if fade_out > 0:
        gain[n - fade_out:] *= fade_curve(fade_out, shape).flip(0).to(wave.device)
    return wave * gain


def time_mask(wave: torch.Tensor, start: int, length: int, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """A copy of wave with samples [start, start + length) replaced by `fill` (a constant or `length` samples)."""
    out = wave.clone()
    out[..., start:start + length] = fill
    return out


def time_shift(wave: torch.Tensor, shift: int) -> torch.Tensor:
    """Circular shift by `shift` samples (positive = later), i.e. torch.roll on the last axis."""
    return torch.roll(wave, shift, dims=-1)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] (both ends included)."""
    return int(torch.randint(low, high + 1, ()).item())


class WaveAugment:
    """CLAR view generator (SPEC A3): for one wave [L], apply each augmentation in `names`, in that order,
    with probability `p`, its strength drawn uniformly from the configured range.

        augment = WaveAugment(["fade", "time_mask"], p=1.0)
        view = augment(wave)   # [L]

    Ranges: pitch shift +-max_semitones; white noise, or mixed noise (white, pink or brown with 1/3 each), at
    an SNR in snr_db; fade in and out, shape linear/log/exponential, each up to max_fade * L; time mask of up
    to max_mask * L samples by N(0, mask_noise_std^2) noise or the constant 0 (1/2 each); circular shift up to
    max_shift * L either way; time stretch with a rate in `stretch`, cropped or padded back to L.
    """

    def __init__(self, names: list[str], p: float = 0.5, max_semitones: float = 15.0,
                 snr_db: list[float] = (0.0, 20.0), max_fade: float = 0.5, max_mask: float = 0.125,
                 mask_noise_std: float = 0.01, max_shift: float = 0.5, stretch: list[float] = (0.5, 1.5),
                 n_fft: int = 512, hop: int = 128):
        unknown = [name for name in names if name not in WAVE_AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown waveform augmentation(s) {unknown}; choose from {WAVE_AUGMENTATIONS}")
        self.names, self.p = list(names), p
        self.max_semitones, self.snr_db = max_semitones, tuple(snr_db)
        self.max_fade, self.max_mask, self.mask_noise_std = max_fade, max_mask, mask_noise_std
        self.max_shift, self.stretch, self.n_fft, self.hop = max_shift, tuple(stretch), n_fft, hop

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            if torch.rand(()).item() < self.p:
                wave = getattr(self, "_" + name)(wave)
        return wave

    def _fade(self, wave):
        n = wave.shape[-1]
        shape = FADE_SHAPES[_randint(0, 2)]
        return fade(wave, _randint(0, int(self.max_fade * n)), _randint(0, int(self.max_fade * n)), shape)

    def _time_mask(self, wave):
        n = wave.shape[-1]
        length = _randint(0, int(self.max_mask * n))
        start = _randint(0, n - length)
        fill = torch.randn(length) * self.mask_noise_std if torch.rand(()).item() < 0.5 else 0.0
        return time_mask(wave, start, length, fill)

    def _time_stretch(self, wave):
        return time_stretch(wave, _uniform(*self.stretch), self.n_fft, self.hop)

    def _pitch_shift(self, wave):
        return pitch_shift(wave, _uniform(-self.max_semitones, self.max_semitones), self.n_fft, self.hop)

    def _time_shift(self, wave):
        limit = int(self.max_shift * wave.shape[-1])
        return time_shift(wave, _randint(-limit, limit))

    def _white_noise(self, wave):
        return add_noise(wave, colored_noise(wave.shape[-1], "white"), _uniform(*self.snr_db))

    def _mixed_noise(self, wave):
        color = NOISE_COLORS[_randint(0, 2)]
        return add_noise(wave, colored_noise(wave.shape[-1], color), _uniform(*self.snr_db))
