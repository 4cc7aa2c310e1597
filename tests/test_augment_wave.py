"""CLAR waveform augmentations (augment.py, waveform section) and the CLAR feature front end (audio.ClarFeatures)."""
from __future__ import annotations

import math

import pytest
import torch

import augment
from audio import ClarFeatureConfig, ClarFeatures

SR = 16000


def tone(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def dominant_hz(wave: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave))).abs()
    return spectrum.argmax().item() * SR / len(wave)


@pytest.mark.parametrize("semitones, factor", [(12, 2.0), (-12, 0.5), (7, 2 ** (7 / 12))])
def test_pitch_shift_moves_the_dominant_frequency_and_keeps_length(semitones, factor):
    wave = tone(440.0)
    shifted = augment.pitch_shift(wave, semitones)
    assert shifted.shape == wave.shape
    assert dominant_hz(shifted) == pytest.approx(440.0 * factor, abs=3.0)


@pytest.mark.parametrize("rate", [0.5, 0.8, 1.5])
def test_time_stretch_keeps_length_and_pitch(rate):
    wave = tone(1000.0)
    stretched = augment.phase_vocoder_stretch(wave, rate)
    assert stretched.shape[-1] == round(len(wave) / rate)
    assert dominant_hz(stretched) == pytest.approx(1000.0, abs=3.0)
    out = augment.time_stretch(wave, rate)
    assert out.shape == wave.shape
    if rate > 1:  # sped up: the end is zero padding
        assert out[round(len(wave) / rate) + 1:].abs().max() == 0


def test_fft_resample_scales_frequency():
    """1 s of 500 Hz squeezed into 8000 samples plays (at 16 kHz) as 1000 Hz."""
    wave = tone(500.0)
    assert dominant_hz(augment.fft_resample(wave, SR // 2)) == pytest.approx(1000.0, abs=2.0)
    assert augment.fft_resample(wave, SR).equal(wave)


@pytest.mark.parametrize("shape", augment.FADE_SHAPES)
def test_fade_shapes_hit_zero_and_one_at_their_ends(shape):
    curve = augment.fade_curve(101, shape)
    assert curve[0].item() == 0 and curve[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert (curve.diff() >= 0).all()  # monotone rise
    out = augment.fade(torch.ones(1000), 100, 300, shape)
    assert out[0] == 0 and out[-1] == 0
    assert out[99].item() == pytest.approx(1.0, abs=1e-6) and out[700].item() == pytest.approx(1.0, abs=1e-6)
    assert (out[100:700] == 1).all()


def test_fade_log_and_exponential_bend_opposite_ways():
    assert augment.fade_curve(101, "log")[50] > 0.5 > augment.fade_curve(101, "exponential")[50]


def test_time_mask_covers_exactly_the_segment():
    wave = torch.randn(1000)
    out = augment.time_mask(wave, 200, 125, 0.0)
    changed = (out != wave).nonzero().squeeze(1)
    assert changed.min() == 200 and changed.max() == 324 and (out[200:325] == 0).all()
    noise = torch.full((125,), 7.0)
    assert (augment.time_mask(wave, 200, 125, noise)[200:325] == 7).all()
    assert (wave != 0).all(), "the input must not be modified in place"


@pytest.mark.parametrize("shift", [0, 5, -300, 999])
def test_time_shift_equals_roll(shift):
    wave = torch.randn(2, 1000)
    assert augment.time_shift(wave, shift).equal(torch.roll(wave, shift, -1))


@pytest.mark.parametrize("color", augment.NOISE_COLORS)
@pytest.mark.parametrize("snr", [0.0, 7.5, 19.0])
def test_noise_at_snr_measures_that_snr(color, snr):
    torch.manual_seed(0)
    wave = tone(300.0)
    noisy = augment.add_noise(wave, augment.colored_noise(len(wave), color), snr)
    noise = noisy - wave
    measured = 10 * torch.log10(wave.pow(2).mean() / noise.pow(2).mean()).item()
    assert abs(measured - snr) < 0.5


def test_colored_noise_spectral_slopes():
    torch.manual_seed(0)
    n = 4 * SR
    low_high = {}
    for color in augment.NOISE_COLORS:
        noise = augment.colored_noise(n, color)
        assert noise.pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)
        power = torch.fft.rfft(noise).abs().pow(2)
        low_high[color] = (power[4 * 100:4 * 200].mean() / power[4 * 4000:4 * 5000].mean()).item()
    # power ratio between ~150 Hz and ~4500 Hz: white 1, pink 30 (1/f), brown 900 (1/f^2)
    assert 0.7 < low_high["white"] < 1.4
    assert 15 < low_high["pink"] < 60
    assert 400 < low_high["brown"] < 2000


def test_wave_augment_composes_keeps_length_and_is_seeded():
    aug = augment.WaveAugment(list(augment.WAVE_AUGMENTATIONS), p=1.0)
    wave = tone(440.0, seconds=0.5)
    torch.manual_seed(3)
    first = aug(wave)
    torch.manual_seed(3)
    second = aug(wave)
    assert first.shape == wave.shape and torch.isfinite(first).all() and first.equal(second)
    assert not first.equal(wave)
    assert augment.WaveAugment(["fade", "time_mask"], p=0.0)(wave).equal(wave)
    with pytest.raises(ValueError, match="unknown waveform augmentation"):
        augment.WaveAugment(["time_warp"])


def test_wave_augment_order_matters():
    """A pair (a, b) applies a first: fade then shift differs from shift then fade."""
    wave = torch.ones(1000)
    torch.manual_seed(0)
    ab = augment.WaveAugment(["fade", "time_shift"], p=1.0)(wave)
    torch.manual_seed(0)
    ba = augment.WaveAugment(["time_shift", "fade"], p=1.0)(wave)
    assert not ab.equal(ba)

# ----------------------------------------------------------------------------- features


def test_clar_features_shapes_and_channels():
    features = ClarFeatures()
    x = features(torch.stack([tone(1000.0), tone(2000.0)]))
    assert x.shape == (2, 3, 128, 1 + SR // 128)
    assert x[:, 1].abs().max() <= math.pi + 1e-6  # phase channel
    assert x[:, 0].max() <= 10 * math.log10((0.5 * 128) ** 2) + 1e-3  # |S| <= amplitude * sum(window) / 2
    assert len(features.state_dict()) == 0


def test_clar_features_tone_peaks_in_the_right_bin():
    x = ClarFeatures()(tone(1000.0)[None])
    assert x[0, 0].mean(-1).argmax().item() == 1000 * 256 // SR  # bin 16 of the 16 ms STFT
    mel_peak = x[0, 2].mean(-1).argmax().item()
    assert 40 < mel_peak < 70  # 1000 Hz: Slaney mel 15.0 of 42.2 (40-8000 Hz) -> filter ~ 128 * 0.35


def test_clar_features_log_frequency_option_matches_code_bins():
    cfg = ClarFeatureConfig(n_fft=2048, win_length=2048, freq_scale="log")
    x = ClarFeatures(cfg)(tone(1000.0)[None])
    assert x.shape == (1, 3, 128, 126)
    freqs = 40 * 200 ** (torch.arange(128) / 128)
    peak = x[0, 0].mean(-1).argmax().item()
    assert abs(freqs[peak].item() - 1000) / 1000 < 0.05  # the nearest log-spaced bin


def test_clar_features_log_power_of_a_known_dft():
    """10 log10 |S|^2 of a bin-centred tone equals 20 log10(A * sum(window) / 2) in the middle frames."""
    x = ClarFeatures()(tone(1000.0, amplitude=0.5)[None])
    expected = 20 * math.log10(0.5 * torch.hann_window(256).sum().item() / 2)
    assert x[0, 0, 16, 10:-10].mean().item() == pytest.approx(expected, abs=0.05)
