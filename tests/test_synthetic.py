"""The built-in data set: deterministic, ESC-50 layout, structured classes, hard for a mean-spectrum probe."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import synthdata
from synthdata import CATEGORIES, SAMPLE_RATE, generate_synthetic, make_event

ESC50_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "small", size="small", seed=0)


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_size(monkeypatch):
    """A 10-class x 5-clip x 0.25 s size, for the file-handling tests."""
    monkeypatch.setitem(synthdata.SIZES, "tiny", (10, 5, 0.25))
    return "tiny"


def test_same_seed_gives_identical_files(small_set, tmp_path):
    again = generate_synthetic(tmp_path / "again", size="small", seed=0)
    assert folder_bytes(again) == folder_bytes(small_set)


def test_other_seed_gives_other_clips_under_the_same_names(tmp_path, tiny_size):
    seed0 = folder_bytes(generate_synthetic(tmp_path / "seed0", size=tiny_size, seed=0) / "audio")
    seed1 = folder_bytes(generate_synthetic(tmp_path / "seed1", size=tiny_size, seed=1) / "audio")
    assert seed0.keys() == seed1.keys()
    assert all(seed0[name] != seed1[name] for name in seed0)


def test_layout_and_csv_schema_match_esc50(small_set):
    meta = pd.read_csv(small_set / "meta" / "esc50.csv")
    assert list(meta.columns) == ESC50_COLUMNS
    assert len(meta) == 10 * 20
    assert sorted(p.name for p in (small_set / "audio").iterdir()) == sorted(meta.filename)
    counts = meta.groupby(["fold", "target"]).size()
    assert sorted(meta.fold.unique()) == [1, 2, 3, 4, 5]
    assert len(counts) == 5 * 10 and (counts == 4).all()  # every fold holds every class equally
    for row in meta.itertuples():
        match = re.fullmatch(r"(\d)-(\d+)-([A-Z])-(\d+)\.wav", row.filename)
        assert match, row.filename
        assert (int(match[1]), int(match[2]), match[3], int(match[4])) == (row.fold, row.src_file, row.take,
                                                                           row.target)
        assert row.category == CATEGORIES[row.target]
    assert meta.esc10.dtype == bool
    esc10 = meta.groupby("target").esc10.agg(["min", "max"])
    assert (esc10["min"] == esc10["max"]).all()  # esc10 is a property of the class
    assert esc10["min"].sum() == 5


def test_clips_are_16khz_mono_pcm16_of_the_size_duration(small_set):
    for path in sorted((small_set / "audio").iterdir()):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (SAMPLE_RATE, 1, "PCM_16", 32000)
        wave, _ = sf.read(str(path))
        assert np.abs(wave).max() > 1e-3 and np.abs(wave).max() < 1.0


def centroid_track(wave: np.ndarray, frame: int = 1024) -> np.ndarray:
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(frame, 1 / SAMPLE_RATE)
    return (power * freqs).sum(1) / power.sum(1)


@pytest.mark.parametrize("seed", range(4))
def test_chirp_classes_sweep_in_their_direction(seed):
    for name, sign in (("up_chirp", 1), ("down_chirp", -1)):
        event = make_event(CATEGORIES.index(name), np.random.default_rng(seed), SAMPLE_RATE)
        centroid = centroid_track(event)
        quarter = len(centroid) // 4
        assert sign * (centroid[-quarter:].mean() - centroid[:quarter].mean()) > 0, (name, seed)


def pulse_rate(wave: np.ndarray) -> float:
    """Pulses per second: the strongest 1-15 Hz component of the 5 ms RMS envelope's spectrum."""
    hop = SAMPLE_RATE // 200
    envelope = np.sqrt((wave[: len(wave) // hop * hop].reshape(-1, hop) ** 2).mean(1))
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean(), 8192))
    freqs = np.fft.rfftfreq(8192, 1 / 200)
    band = (freqs >= 1) & (freqs <= 15)
    return float(freqs[band][np.argmax(spectrum[band])])


@pytest.mark.parametrize("seed", range(4))
def test_pulse_classes_repeat_at_their_tempo(seed):
    slow = pulse_rate(make_event(CATEGORIES.index("slow_pulses"), np.random.default_rng(seed), 3 * SAMPLE_RATE))
    fast = pulse_rate(make_event(CATEGORIES.index("fast_pulses"), np.random.default_rng(seed), 3 * SAMPLE_RATE))
    assert 1.4 <= slow <= 3.2 and 5.5 <= fast <= 10.5, (slow, fast)


def test_mean_logmel_probe_is_far_from_perfect_but_time_aware_probe_does_better(small_set):
    """The EVAR probe (lr 1e-2, as the demo runs it), 5-fold CV: measured 32.5 % vs 73.5 % (chance 10 %)."""
    features, _, _ = synthdata.probe_features(small_set)
    assert features["mean_logmel"].shape == (200, 64)
    results = synthdata.hardness_check(small_set, lr=1e-2)
    mean_logmel, time_aware = results["mean_logmel"]["cv"], results["time_aware"]["cv"]
    assert 0.15 < mean_logmel < 0.95  # above chance (0.1): the spectrum says something, not everything
    assert time_aware > mean_logmel + 0.2
    assert results["time_aware"]["fold5"] == results["time_aware"]["folds"][4]


def interrupt_at_clip(monkeypatch, n: int):
    """Make synthdata.make_clip raise KeyboardInterrupt (a kill) on its n-th call; returns the real one."""
    real_make_clip, calls = synthdata.make_clip, []

    def failing_make_clip(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_make_clip(*args)

    monkeypatch.setattr(synthdata, "make_clip", failing_make_clip)
    return real_make_clip


def test_complete_set_is_not_rewritten(tmp_path, tiny_size):
    root = generate_synthetic(tmp_path / "set", size=tiny_size)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    generate_synthetic(root, size=tiny_size)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_missing_or_truncated_clip_is_regenerated(tmp_path, tiny_size):
    root = generate_synthetic(tmp_path / "set", size=tiny_size)
    reference = folder_bytes(root)
    clips = sorted((root / "audio").iterdir())
    clips[0].unlink()
    clips[1].write_bytes(clips[1].read_bytes()[:100])
    generate_synthetic(root, size=tiny_size)
    assert folder_bytes(root) == reference


def test_interrupted_generation_leaves_no_half_files_and_resumes(tmp_path, tiny_size, monkeypatch):
    reference = folder_bytes(generate_synthetic(tmp_path / "clean", size=tiny_size))
    real_make_clip = interrupt_at_clip(monkeypatch, 17)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "cut", size=tiny_size)
    leftovers = list((tmp_path / "cut").rglob("*"))
    assert not [p for p in leftovers if p.name.startswith(".")]  # no temp files
    assert not (tmp_path / "cut" / "meta" / synthdata.MARKER).exists()
    assert len(list((tmp_path / "cut" / "audio").iterdir())) == 16
    monkeypatch.setattr(synthdata, "make_clip", real_make_clip)
    assert folder_bytes(generate_synthetic(tmp_path / "cut", size=tiny_size)) == reference


def test_interrupted_regeneration_of_an_existing_set_is_restartable(tmp_path, tiny_size, monkeypatch):
    """A kill while a complete set is regenerated (other seed) used to leave 'exists and is not a synthetic set'."""
    root = generate_synthetic(tmp_path / "set", size=tiny_size, seed=0)
    reference = folder_bytes(generate_synthetic(tmp_path / "clean", size=tiny_size, seed=1))
    real_make_clip = interrupt_at_clip(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(root, size=tiny_size, seed=1)
    assert (root / "meta" / synthdata.PARTIAL).exists() and not (root / "meta" / synthdata.MARKER).exists()
    monkeypatch.setattr(synthdata, "make_clip", real_make_clip)
    assert folder_bytes(generate_synthetic(root, size=tiny_size, seed=1)) == reference
    assert not (root / "meta" / synthdata.PARTIAL).exists()


def test_other_size_replaces_the_previous_clips(tmp_path, tiny_size, monkeypatch):
    monkeypatch.setitem(synthdata.SIZES, "tinier", (10, 10, 0.1))
    root = generate_synthetic(tmp_path / "set", size="tinier")
    generate_synthetic(root, size=tiny_size)
    meta = pd.read_csv(root / "meta" / "esc50.csv")
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(meta.filename)
    assert len(meta) == 50


def test_refuses_a_folder_holding_a_real_esc50(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(",".join(ESC50_COLUMNS) + "\n")
    with pytest.raises(FileExistsError, match="esc50.csv"):
        generate_synthetic(tmp_path, size="small")
    with pytest.raises(ValueError, match="unknown size"):
        generate_synthetic(tmp_path / "x", size="huge")


def test_handcrafted_result_rows_are_results_csv_rows(tmp_path):
    from probe import RESULT_FIELDS, append_result
    rows = synthdata.result_rows({"mean_logmel": {"folds": [0.3, 0.4, 0.5, 0.4, 0.4]}}, "demo_small", 1e-2)
    assert list(rows[0]) == RESULT_FIELDS and rows[0]["model"] == "handcrafted:mean_logmel"
    assert rows[0]["mean"] == "40.00" and rows[0]["fold_acc"] == "30.00 40.00 50.00 40.00 40.00"
    assert float(rows[0]["ci95"]) == pytest.approx(2.776445 * np.std([30, 40, 50, 40, 40], ddof=1) / 5 ** 0.5, abs=0.01)
    append_result(tmp_path / "r.csv", rows[0])
    assert pd.read_csv(tmp_path / "r.csv")["model"].tolist() == ["handcrafted:mean_logmel"]
