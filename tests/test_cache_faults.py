"""Preprocessing faults (cache.py, issue 16): a changed source is never served from the cache (every clip keyed on its
source's size, mtime and sha256, the feature parameters and the generator's seed), and two writers of one
cache never destroy each other (a lock file holding host and pid)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import soundfile as sf

import cache
import data
import synthdata
from tests.test_cache import make_esc50, run, tone


def logmels(out) -> dict[str, np.ndarray]:
    df = data.read_manifest(out)
    return {cid: np.load(out / path) for cid, path in zip(df["id"], df["logmel"])}


def edit_in_place(path, freq: float, later_s: float = 5.0) -> None:
    """Rewrite a WAV with other audio of the same size (and so the same header), its mtime `later_s` later."""
    before = os.stat(path)
    sf.write(path, tone(freq, 44100, 1.0), 44100)
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + int(later_s * 1e9)))


def test_a_source_edited_in_place_is_recomputed_and_reported(tmp_path, capsys):
    root = make_esc50(tmp_path / "esc", n=4)
    out = tmp_path / "cache"
    run(dataset="esc50", root=root, out=out, waveform=True, pack=True)
    before = logmels(out)
    edited = root / "audio" / "2-1001-A-1.wav"
    edit_in_place(edited, freq=1234.0)
    capsys.readouterr()
    summary = run(dataset="esc50", root=root, out=out, waveform=True)  # no --pack this time
    said = capsys.readouterr().out
    assert (summary["written"], summary["recomputed"], summary["already_done"]) == (1, 1, 3)
    assert "1 cached clips are stale" in said and "1 clips written (1 of them recomputed: stale)" in said
    after = logmels(out)
    run(dataset="esc50", root=root, out=tmp_path / "fresh")
    fresh = logmels(tmp_path / "fresh")
    assert all(np.array_equal(after[cid], fresh[cid]) for cid in fresh)  # equal to a cache built from scratch
    assert not np.array_equal(after["2-1001-A-1"], before["2-1001-A-1"])
    assert all(np.array_equal(after[c], before[c]) for c in before if c != "2-1001-A-1")
    # the pack no longer serves the old log-mel: the edited clip left its index, so readers use the files
    assert "2-1001-A-1" not in data.read_pack_index(out / "packed" / "index.npz")
    assert data.open_packed(out, list(after)) is None
    # a second run: nothing is stale any more
    again = run(dataset="esc50", root=root, out=out, waveform=True)
    assert (again["written"], again["recomputed"], again["already_done"]) == (0, 0, 4)


def test_a_touched_or_copied_source_with_the_same_bytes_is_kept(tmp_path):
    """Another mtime, same size: the bytes are hashed, equal, so the clip is reused (its key takes the new mtime)."""
    root = make_esc50(tmp_path / "esc", n=3)
    out = tmp_path / "cache"
    run(dataset="esc50", root=root, out=out)
    st = os.stat(root / "audio" / "1-1000-A-0.wav")
    os.utime(root / "audio" / "1-1000-A-0.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    summary = run(dataset="esc50", root=root, out=out)
    assert (summary["written"], summary["recomputed"], summary["already_done"]) == (0, 0, 3)
    key = pd.read_csv(out / "manifest.csv").set_index("id").loc["1-1000-A-0", cache.KEY_COLUMN]
    assert key.split(":")[2] == str(st.st_mtime_ns + 10**10)
    assert run(dataset="esc50", root=root, out=out)["already_done"] == 3


def test_a_cache_without_keys_trusts_only_features_newer_than_their_source(tmp_path):
    """Caches written before keys (no source_key column): a clip is reused when its feature file is newer than
    its source, as make decides, and gets its key; an older one is recomputed."""
    root = make_esc50(tmp_path / "esc", n=3)
    out = tmp_path / "cache"
    run(dataset="esc50", root=root, out=out)
    manifest = pd.read_csv(out / "manifest.csv").drop(columns=[cache.KEY_COLUMN])
    manifest.to_csv(out / "manifest.csv", index=False)
    edit_in_place(root / "audio" / "3-1002-A-2.wav", freq=777.0, later_s=3600)  # newer than its features
    summary = run(dataset="esc50", root=root, out=out)
    assert (summary["written"], summary["recomputed"], summary["already_done"]) == (1, 1, 2)
    assert pd.read_csv(out / "manifest.csv")[cache.KEY_COLUMN].str.count(":").eq(3).all()


def test_synthetic_with_another_seed_over_a_seed_0_cache_is_regenerated(tmp_path, monkeypatch):
    """Regression: `--dataset synthetic --seed 1` over a seed-0 cache reported "already done" and kept every
    seed-0 log-mel and wave. Now every clip is recomputed, and the cache equals a seed-1 cache built fresh."""
    monkeypatch.setitem(synthdata.SIZES, "small", (10, 5, 0.25))  # 50 clips of 0.25 s
    synth = {"dataset": "synthetic", "size": "small", "waveform": True}
    run(**synth, root=tmp_path / "synth", out=tmp_path / "cache")
    seed0 = logmels(tmp_path / "cache")
    summary = run(**synth, root=tmp_path / "synth", out=tmp_path / "cache", seed=1)
    assert (summary["written"], summary["recomputed"], summary["already_done"]) == (50, 50, 0)
    run(**synth, root=tmp_path / "synth1", out=tmp_path / "fresh1", seed=1)
    seed1, fresh1 = logmels(tmp_path / "cache"), logmels(tmp_path / "fresh1")
    assert seed1.keys() == fresh1.keys() == seed0.keys()
    assert all(np.array_equal(seed1[c], fresh1[c]) and not np.array_equal(seed1[c], seed0[c]) for c in seed1)
    df = data.read_manifest(tmp_path / "cache")
    waves = [np.load(tmp_path / "cache" / p) for p in df["wave"]]
    fresh_df = data.read_manifest(tmp_path / "fresh1")
    assert all(np.array_equal(w, np.load(tmp_path / "fresh1" / p)) for w, p in zip(waves, fresh_df["wave"]))


def test_the_clip_key_covers_feature_parameters_and_generator_seed():
    params = {"sample_rate": 16000, "logmel": {"n_mels": 64}, "log_offset": "x", "dtype": "float32"}
    keys = {cache.feature_key(params), cache.feature_key(params, seed=0),
            cache.feature_key(params, seed=1), cache.feature_key({**params, "dtype": "float16"}),
            cache.feature_key({**params, "logmel": {"n_mels": 128}})}
    assert len(keys) == 5
    assert cache.feature_key({**params, "waveform": True, "size": "x"}) == cache.feature_key(params)
