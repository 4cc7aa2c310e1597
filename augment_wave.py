"""CLAR's waveform augmentations (Al-Tahan and Mohsenzadeh 2021, Sec. 3.3): the per-sample cores and WaveAugment,
and BatchWaveAugment, the batched view maker pretrain_clar.py calls on the training device.

    augment = BatchWaveAugment(["fade", "time_mask"], p=1.0)
    params = augment.draw(n_global, L, randomness.key_generator(seed, step, view, device=wave.device))
    view = augment.apply(wave, params, rows=slice(rank, None, world))    # wave [b, L] -> this process's view

Every augmentation exposes its deterministic core (a function of explicit parameters) separately from its random
draws, so the core is tested exactly and the batched version is checked against the per-sample one for the same
drawn parameters (tests/test_augment_wave.py, tests/test_batched_augment.py). The spectrogram augmentations of
MSN and BYOL-A are in augment.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from augment import randint_rows

# ============================================================================ waveform (CLAR)
# CLAR's waveform augmentations (CLAR paper, Sec. 3.3). Each deterministic core takes a wave [..., L] and explicit
# parameters; `WaveAugment` draws those parameters from torch's global RNG (captured by randomness.rng_state)
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
    """Phase-vocoder time stretch by `rate` in [0.5, 1.5], then crop or pad to the original length (CLAR paper,
    Sec. 3.3)."""
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
    return color_noise(torch.randn(length), color)


def color_noise(noise: torch.Tensor, color: str = "white") -> torch.Tensor:
    """Deterministic core of colored_noise: white Gaussian noise [..., L] -> unit-RMS noise of that color."""
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")
    length = noise.shape[-1]
    if color != "white":
        spec = torch.fft.rfft(noise)
        freqs = torch.arange(spec.shape[-1], dtype=torch.float32).clamp_min(1.0)
        spec = spec / freqs.to(spec.device) ** (0.5 if color == "pink" else 1.0)
        spec[..., 0] = 0
        noise = torch.fft.irfft(spec, n=length)
    return noise / noise.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """wave + g * noise with g chosen so that 10 log10(mean(wave^2) / mean((g noise)^2)) = snr_db.

    Unlike the reference's mixed noise, the sum is not clipped to [0, 1] (CLAR paper, Sec. 3.3).
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
    """CLAR view generator (CLAR paper, Sec. 3.3): for one wave [L], apply each augmentation in `names`, in that order,
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


# ============================================================================ batched, on the training device
# BatchWaveAugment draws the parameters of the GLOBAL batch as vectors from an explicit torch.Generator and each
# process applies the rows it holds (the conventions of augment.py's batched section).


def fade_gain_batch(length: int, fade_in: torch.Tensor, fade_out: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Gains [B, length] of `fade` for per-sample fade_in, fade_out [B] and shape indices [B] into FADE_SHAPES."""
    pos = torch.arange(length, device=fade_in.device, dtype=torch.float32)[None]

    def curve(t):  # [B, L] -> each row's shape (fade_curve at t = i / (n - 1))
        curves = torch.stack([t, torch.log10(1 + 9 * t), t * 2 ** (5 * (t - 1))])
        return curves.gather(0, shape.view(1, -1, 1).expand(1, *t.shape))[0]

    def linspace(i, n):  # torch.linspace(0, 1, n)[i] as torch computes it: from both ends, fp32 step, one rounding
        step = (1.0 / (n - 1).clamp_min(1).float()).double()
        value = torch.where(i < n // 2, step * i, 1.0 - step * (n - 1 - i)).float()
        return torch.where(n > 1, value, 0.0)

    fade_in, fade_out = fade_in[:, None], fade_out[:, None]
    gain_in = torch.where(pos < fade_in, curve(linspace(pos, fade_in)), 1.0)
    from_end = length - 1 - pos
    gain_out = torch.where(from_end < fade_out, curve(linspace(from_end, fade_out)), 1.0)
    return gain_in * gain_out


class BatchWaveAugment(WaveAugment):
    """WaveAugment for a batch of waves [B, L] on their own device (same names, order, probability and ranges).

        augment = BatchWaveAugment(["fade", "time_mask"], p=1.0)
        params = augment.draw(n_global, L, randomness.key_generator(seed, step, view, device=wave.device))
        view = augment.apply(wave, params, rows=slice(rank, None, world))    # this process's rows [b, L]

    `draw` returns, per augmentation in order, the per-sample parameters of the whole (global) batch, including
    its noise; `apply` is batched for fade, time_mask, time_shift, white_noise and mixed_noise, and loops over
    the selected clips (on the device) for time_stretch and pitch_shift, whose phase vocoder output lengths differ
    per clip. `apply_sample` is the per-sample version for the same parameters.
    """

    def draw(self, n: int, length: int, generator: torch.Generator) -> list[tuple[str, dict]]:
        g, device = generator, generator.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=g, device=device)

        params = []
        for name in self.names:
            p = {"on": torch.rand(n, generator=g, device=device) < self.p}
            if name == "fade":
                limit = int(self.max_fade * length)
                p.update(shape=randint_rows(g, 0, 2, n), fade_in=randint_rows(g, 0, limit, n),
                         fade_out=randint_rows(g, 0, limit, n))
            elif name == "time_mask":
                limit = int(self.max_mask * length)
                size = randint_rows(g, 0, limit, n)
                p.update(length=size, start=randint_rows(g, 0, length - size, n),
                         noisy=torch.rand(n, generator=g, device=device) < 0.5,
                         noise=torch.randn(n, max(limit, 1), generator=g, device=device) * self.mask_noise_std)
            elif name == "time_stretch":
                p["rate"] = uniform(*self.stretch)
            elif name == "pitch_shift":
                p["semitones"] = uniform(-self.max_semitones, self.max_semitones)
            elif name == "time_shift":
                limit = int(self.max_shift * length)
                p["shift"] = randint_rows(g, -limit, limit, n)
            else:  # white_noise, mixed_noise: color index into NOISE_COLORS (0 = white)
                color = randint_rows(g, 0, 2, n) if name == "mixed_noise" else torch.zeros(n, dtype=torch.long,
                                                                                          device=device)
                p.update(color=color, snr=uniform(*self.snr_db),
                         white=torch.randn(n, length, generator=g, device=device))
            params.append((name, p))
        return params

    def apply(self, wave: torch.Tensor, params: list[tuple[str, dict]], rows=None) -> torch.Tensor:
        """wave [b, L] = rows `rows` of the drawn batch (all rows when None) -> augmented [b, L]."""
        for name, p in params:
            p = {key: value[rows if rows is not None else slice(None)].to(wave.device) for key, value in p.items()}
            if p["on"].any():
                wave = torch.where(p["on"][:, None], getattr(self, "_batch_" + name)(wave, p), wave)
        return wave

    def apply_sample(self, wave: torch.Tensor, params: list[tuple[str, dict]], index: int) -> torch.Tensor:
        """The per-sample version: clip `index` of the drawn batch, wave [L], with WaveAugment's cores."""
        for name, p in params:
            p = {key: value[index] for key, value in p.items()}
            if not p["on"]:
                continue
            if name == "fade":
                wave = fade(wave, int(p["fade_in"]), int(p["fade_out"]), FADE_SHAPES[int(p["shape"])])
            elif name == "time_mask":
                size = int(p["length"])
                wave = time_mask(wave, int(p["start"]), size, p["noise"][:size] if p["noisy"] else 0.0)
            elif name == "time_stretch":
                wave = time_stretch(wave, float(p["rate"]), self.n_fft, self.hop)
            elif name == "pitch_shift":
                wave = pitch_shift(wave, float(p["semitones"]), self.n_fft, self.hop)
            elif name == "time_shift":
                wave = time_shift(wave, int(p["shift"]))
            else:
                wave = add_noise(wave, color_noise(p["white"], NOISE_COLORS[int(p["color"])]), float(p["snr"]))
        return wave

    def _batch_fade(self, wave, p):
        return wave * fade_gain_batch(wave.shape[-1], p["fade_in"], p["fade_out"], p["shape"])

    def _batch_time_mask(self, wave, p):
        pos = torch.arange(wave.shape[-1], device=wave.device)[None]
        offset = pos - p["start"][:, None]
        inside = (offset >= 0) & (offset < p["length"][:, None])
        noise = p["noise"].gather(1, offset.clamp(0, p["noise"].shape[1] - 1))
        fill = torch.where(p["noisy"][:, None], noise, torch.zeros_like(noise))
        return torch.where(inside, fill, wave)

    def _batch_time_shift(self, wave, p):
        n = wave.shape[-1]
        pos = torch.arange(n, device=wave.device)[None]
        return wave.gather(1, (pos - p["shift"][:, None]) % n)

    def _batch_noise(self, wave, p):
        noise = p["white"] / p["white"].pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        for index, color in enumerate(NOISE_COLORS[1:], start=1):
            chosen = p["color"] == index
            if chosen.any():
                noise[chosen] = color_noise(p["white"][chosen], color)
        return add_noise(wave, noise, p["snr"][:, None])

    _batch_white_noise = _batch_mixed_noise = _batch_noise

    def _per_clip(self, wave, p, core, key):
        out = wave.clone()
        for b in torch.nonzero(p["on"]).flatten().tolist():
            out[b] = core(wave[b], float(p[key][b]), self.n_fft, self.hop)
        return out

    def _batch_time_stretch(self, wave, p):
        return self._per_clip(wave, p, time_stretch, "rate")

    def _batch_pitch_shift(self, wave, p):
        return self._per_clip(wave, p, pitch_shift, "semitones")
