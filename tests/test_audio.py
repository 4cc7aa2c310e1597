"""audio.py: loading any format to mono 16 kHz float32, the log-mel front end (EVAR front end), resampling."""
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from audio import LOG_EPS, LOG_SILENCE, AudioError, LogMel, LogMelConfig, fix_length, load_audio


def tone(freq, sr, seconds, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def test_logmel_equals_torchaudio_slaney_then_log():
    wave = torch.from_numpy(np.random.default_rng(0).normal(size=16000).astype(np.float32))
    ref = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, win_length=1024, hop_length=160, f_min=60,
                                               f_max=7800, n_mels=64, power=2.0, mel_scale="slaney",
                                               norm="slaney")(wave)
    out = LogMel()(wave)
    assert out.shape == (64, 1 + 16000 // 160) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.log(ref + 1.1920929e-07))
    batch = LogMel()(torch.stack([wave, 0.5 * wave])[None])  # any leading batch shape
    assert batch.shape == (1, 2, 64, 101)
    torch.testing.assert_close(batch[0, 0], out)
    assert LOG_EPS == pytest.approx(1.1920929e-07)


def slaney_hz_to_mel(f):
    """Slaney (Auditory Toolbox) mel scale, written out: linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    return np.where(f < 1000, lin, 15.0 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0])
def test_pure_tone_lands_in_expected_mel_bin(freq):
    logmel = LogMel()(torch.from_numpy(tone(freq, 16000, 1.0)))
    peak = int(logmel[:, 10:-10].mean(dim=1).argmax())
    # Band k has its centre at mel_min + (k+1) * (mel_max - mel_min) / (n_mels + 1)
    mel_min, mel_max = slaney_hz_to_mel(60.0), slaney_hz_to_mel(7800.0)
    expected = (slaney_hz_to_mel(freq) - mel_min) / ((mel_max - mel_min) / 65) - 1
    assert abs(peak - expected) <= 1.0


def test_htk_option_differs_from_default():
    wave = torch.from_numpy(tone(440, 16000, 0.5))
    htk = LogMel(LogMelConfig(mel_scale="htk"))(wave)
    ref = torchaudio.transforms.MelSpectrogram(16000, n_fft=1024, hop_length=160, f_min=60, f_max=7800, n_mels=64)
    torch.testing.assert_close(htk, torch.log(ref(wave) + 1.1920929e-07))  # torchaudio's defaults: HTK, no norm
    assert htk.shape == (64, 51)
    assert (htk - LogMel()(wave)).abs().max() > 1.0  # un-normalised HTK filters: several nats apart


def test_resample_1khz_tone_44k1_to_16k(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, tone(1000, 44100, 2.0), 44100, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.shape == (32000,)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    assert np.fft.rfftfreq(len(wave), 1 / 16000)[spectrum.argmax()] == pytest.approx(1000, abs=1)


def test_stereo_48k_24bit_becomes_mono_mean(tmp_path):
    left, right = tone(500, 48000, 0.5), tone(2000, 48000, 0.5, amp=0.2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 48000, subtype="PCM_24")
    expected = torchaudio.functional.resample(torch.from_numpy((left + right) / 2), 48000, 16000).numpy()
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav"), expected, atol=1e-5)


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("WAV", "PCM_U8")])
def test_other_formats_load(tmp_path, fmt, subtype):
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, tone(440, 8000, 0.5), 8000, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.shape == (8000,) and np.abs(wave).max() > 0.3


def test_errors_name_file_and_problem(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all")
    sf.write(tmp_path / "short.wav", tone(440, 16000, 0.01), 16000)
    sf.write(tmp_path / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "noframes.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: empty file"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match=r"noframes\.wav: empty"):
        load_audio(tmp_path / "noframes.wav")
    with pytest.raises(AudioError, match=r"text\.wav: unreadable"):
        load_audio(tmp_path / "text.wav")
    with pytest.raises(AudioError, match=r"short\.wav: too short"):
        load_audio(tmp_path / "short.wav", min_seconds=0.1)
    with pytest.raises(AudioError, match=r"nan\.wav: non-finite"):
        load_audio(tmp_path / "nan.wav")


def test_fix_length_pads_right_and_crops():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(x, 7), [0, 1, 2, 3, 4, 0, 0])
    np.testing.assert_array_equal(fix_length(x, 3, offset=2), [2, 3, 4])
    assert torch.equal(fix_length(torch.ones(2, 3), 4), torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0]]))
    np.testing.assert_array_equal(fix_length(x, 6, value=-2.0), [0, 1, 2, 3, 4, -2])
    silent = LogMel()(torch.zeros(3200))
    assert silent.max().item() == pytest.approx(LOG_SILENCE)


@pytest.mark.parametrize("length", [0, 1, 10, 159, 300, 512])
def test_logmel_of_audio_shorter_than_half_a_window_is_the_clip_followed_by_silence(length):
    """Reflect padding needs > n_fft // 2 samples; a shorter clip (even 0 samples) gets 1 + L // hop frames that
    equal those of the same clip followed by silence (a long input, computed the ordinary way)."""
    torch.manual_seed(length)
    wave = torch.rand(2, length) * 2 - 1
    logmel = LogMel()(wave)
    padded = LogMel()(torch.nn.functional.pad(wave, (0, 4096 - length)))
    assert logmel.shape == (2, 64, 1 + length // 160) and torch.isfinite(logmel).all()
    torch.testing.assert_close(logmel, padded[..., :1 + length // 160], atol=1e-4, rtol=0)
    if length == 0:
        assert torch.equal(logmel, torch.full((2, 64, 1), LOG_SILENCE))


@pytest.mark.parametrize("freq_scale", ["linear", "log"])
@pytest.mark.parametrize("length", [0, 10, 128])
def test_clar_features_of_a_clip_shorter_than_half_a_window_are_the_clip_followed_by_silence(freq_scale, length):
    from audio import ClarFeatureConfig, ClarFeatures
    features = ClarFeatures(ClarFeatureConfig(freq_scale=freq_scale))
    torch.manual_seed(length)
    wave = torch.rand(2, length) * 2 - 1
    out = features(wave)
    padded = features(torch.nn.functional.pad(wave, (0, 2048 - length)))
    assert out.shape == (2, 3, 128, 1 + length // 128) and torch.isfinite(out).all()
    torch.testing.assert_close(out, padded[..., :1 + length // 128], atol=1e-3, rtol=0)
