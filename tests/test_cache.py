"""Preprocessing (cache.py, what preprocess.py runs): every adapter on a tiny data set written in the real layout,
bad files, resume, shards."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import cache
import datasets
import files
from data import read_manifest
from tests.conftest import ROOT, SHARED, run_script


def tone(freq=440.0, sr=16000, seconds=0.5, amp=0.3):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def write_wav(path, sr=16000, seconds=0.5, freq=440.0, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq, sr, seconds), sr, **kw)
    return path


def run(**options):
    """One preprocess.py run in this process (cache.build_cache), one worker; options: cache.CacheOptions's."""
    return cache.build_cache(cache.CacheOptions(workers=options.pop("workers", 1), **options))


def make_esc50(root, n=6):
    rows = []
    for i in range(n):
        fold, target = i % 5 + 1, i % 3
        name = f"{fold}-{1000 + i}-A-{target}.wav"
        write_wav(root / "audio" / name, sr=44100, seconds=1.0, freq=300 + 100 * target)
        rows.append(dict(filename=name, fold=fold, target=target, category=["dog", "rain", "clock_tick"][target],
                         esc10=target != 2, src_file=1000 + i, take="A"))
    (root / "meta").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "meta" / "esc50.csv", index=False)
    return root


def test_esc50_adapter_and_cache_contents(tmp_path):
    root, out = make_esc50(tmp_path / "ESC-50-master"), tmp_path / "cache"
    summary = run(dataset="esc50", root=root, out=out, waveform=True)
    df = read_manifest(out)
    assert summary["written"] == 6 and summary["skipped"] == 0
    assert list(df.columns[:8]) == ["id", "logmel", "wave", "label", "split", "fold", "duration", "source"]
    assert set(df.label) == {"dog", "rain", "clock_tick"} and sorted(df.fold) == [1, 1, 2, 3, 4, 5]
    assert df.set_index("id").loc["3-1002-A-2", "esc10"] in (False, "False")
    logmel = np.load(out / df.logmel[0])
    wave = np.load(out / df.wave[0])
    assert logmel.dtype == np.float32 and logmel.shape == (64, 1 + 16000 // 160)
    assert wave.dtype == np.float32 and wave.shape == (16000,) and df.duration[0] == pytest.approx(1.0)
    assert df.source[0] == "audio/1-1000-A-0.wav"
    meta = json.loads((out / "preprocess.json").read_text())
    assert meta["params"]["logmel"]["n_mels"] == 64 and "torch" in meta["versions"]
    assert pd.read_csv(out / "errors.csv").empty


def make_gtzan(root, folder="genres", genres=("blues", "rock"), n=4):
    for g in genres:
        for i in range(n):
            write_wav(root / folder / g / f"{g}.{i:05d}.wav", sr=22050, seconds=0.3)
    return root


def test_gtzan_with_fault_filtered_lists_from_shared_data(tmp_path):
    lists = SHARED / "data" / "gtzan_fault_filtered"
    train = (lists / "train_filtered.txt").read_text().split()
    test = (lists / "test_filtered.txt").read_text().split()
    listed = set(train) | set((lists / "valid_filtered.txt").read_text().split()) | set(test)
    assert len(train) == 443 and len(listed) == 930
    unlisted = next(f"{g}/{g}.{i:05d}.wav" for g in ["blues", "jazz", "rock"] for i in range(100)
                    if f"{g}/{g}.{i:05d}.wav" not in listed)
    root = tmp_path / "gtzan"
    for key in train[:3] + test[:2] + [unlisted]:
        write_wav(root / "genres_original" / key, sr=22050, seconds=0.3)
    run(dataset="gtzan", root=root, out=tmp_path / "c", split_dir=lists)
    df = read_manifest(tmp_path / "c")
    assert len(df) == 5 and unlisted.split(".wav")[0].replace("/", "__") not in set(df.id)
    assert sorted(df.split) == ["test"] * 2 + ["train"] * 3
    assert set(df.label) <= {k.split("/")[0] for k in listed}


def test_gtzan_without_lists_is_seeded_stratified_split(tmp_path):
    root = make_gtzan(tmp_path / "g", n=10)
    clips = datasets.adapt_gtzan(root).clips
    again = datasets.adapt_gtzan(root).clips
    assert [(c.key, c.split) for c in clips] == [(c.key, c.split) for c in again]
    for genre in ("blues", "rock"):
        splits = [c.split for c in clips if c.label == genre]
        assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (5, 2, 3)


def test_nsynth_adapter(tmp_path):
    root = tmp_path / "nsynth"
    for split, notes in {"train": ["bass_synthetic_033-022-050", "guitar_acoustic_010-060-100"],
                         "valid": ["bass_electronic_018-030-075"], "test": ["keyboard_electronic_001-021-127"]}.items():
        examples = {}
        for note in notes:
            write_wav(root / f"nsynth-{split}" / "audio" / f"{note}.wav", seconds=0.4)
            family, source = note.split("_")[:2]
            examples[note] = {"instrument_family_str": family, "instrument_source_str": source,
                              "pitch": int(note.split("-")[1]), "velocity": 50}
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(examples))
    run(dataset="nsynth", root=root, out=tmp_path / "c")
    df = read_manifest(tmp_path / "c").set_index("id")
    assert len(df) == 4 and df.loc["train__bass_synthetic_033-022-050", "pitch"] == 22
    assert df.loc["valid__bass_electronic_018-030-075", "split"] == "valid"
    assert df.loc["test__keyboard_electronic_001-021-127", "instrument_source_str"] == "electronic"
    assert sorted(df.label) == ["bass", "bass", "guitar", "keyboard"]


def test_speechcommands_adapter(tmp_path):
    root = tmp_path / "sc"
    for key in ["yes/a_nohash_0.wav", "yes/b_nohash_0.wav", "two/c_nohash_0.wav", "two/d_nohash_1.wav",
                "marvin/e_nohash_0.wav"]:
        write_wav(root / key, seconds=1.0)
    write_wav(root / "_background_noise_" / "white_noise.wav", seconds=2.0)
    (root / "validation_list.txt").write_text("yes/b_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("two/d_nohash_1.wav\nmarvin/e_nohash_0.wav\n")
    run(dataset="speechcommands", root=root, out=tmp_path / "c")
    df = read_manifest(tmp_path / "c").set_index("id")
    assert len(df) == 5 and not any("noise" in i for i in df.index)
    assert df.loc["yes__b_nohash_0", "split"] == "valid" and df.loc["two__d_nohash_1", "split"] == "test"
    assert df.loc["yes__a_nohash_0", "split"] == "train"
    assert df.sc10.astype(str).tolist().count("True") == 2


def test_audioset_tree_with_segment_labels(tmp_path):
    root = tmp_path / "as"
    write_wav(root / "bal" / "Y--PJHxphWEs_30.000.wav")
    write_wav(root / "unbal" / "part1" / "-0RWZT-miFs_420.flac", format="FLAC")
    (tmp_path / "labels.csv").write_text(
        "# Segments csv\n# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n')
    run(dataset="audioset", root=root, out=tmp_path / "c", labels=tmp_path / "labels.csv")
    df = read_manifest(tmp_path / "c")
    assert len(df) == 2 and sorted(df.split) == ["train", "unlabelled"]  # a CSV of another name: split train
    assert sorted(df.label) == ["", "/m/09x0r;/t/dd00088"]


def test_folder_adapter(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            write_wav(tmp_path / "f" / cls / f"{i}.wav")
    run(dataset="folder", root=tmp_path / "f", out=tmp_path / "c")
    df = read_manifest(tmp_path / "c")
    assert sorted(df.label) == ["cat", "cat", "dog", "dog"] and set(df.split) == {""}


def test_your_own_folder_with_and_without_labels_gets_a_stratified_split(tmp_path):
    """--dataset folder: <class>/.../<file> is labelled by its first folder, files in the root are unlabelled;
    --split 60,20,20 gives each class 3/1/1 of its 5 clips and every unlabelled clip train."""
    for cls in ("cat", "dog"):
        for i in range(5):
            write_wav(tmp_path / "f" / cls / ("deep" if i == 4 else "") / f"{i}.wav", freq=300 + 50 * i)
    for i in range(3):
        write_wav(tmp_path / "f" / f"field{i}.wav")
    run(dataset="folder", root=tmp_path / "f", out=tmp_path / "c", split=(60, 20, 20))
    df = read_manifest(tmp_path / "c").set_index("source")
    assert df.loc["cat/deep/4.wav", "label"] == "cat" and df.loc["field0.wav", "label"] == ""
    counts = df.groupby(["label", "split"]).size().to_dict()
    assert counts == {("", "train"): 3, ("cat", "test"): 1, ("cat", "train"): 3, ("cat", "valid"): 1,
                      ("dog", "test"): 1, ("dog", "train"): 3, ("dog", "valid"): 1}
    first = df["split"].to_dict()
    run(dataset="folder", root=tmp_path / "f", out=tmp_path / "c", split=(60, 20, 20))
    assert read_manifest(tmp_path / "c").set_index("source")["split"].to_dict() == first  # same seed, same split
    with pytest.raises(cache.CacheError, match="--split: --dataset esc50 has splits or folds of its own"):
        run(dataset="esc50", root=make_esc50(tmp_path / "esc"), out=tmp_path / "e", split=(80, 10, 10))
    done = run_script("preprocess.py", "--dataset", "folder", "--root", tmp_path / "f", "--out", tmp_path / "c",
                      "--split", "80,10,20")
    assert done.returncode == 2 and "percentages summing to 100, got '80,10,20'" in done.stderr  # argparse
    done = run_script("preprocess.py", "--dataset", "esc50", "--root", tmp_path / "esc", "--out", tmp_path / "e",
                      "--split", "80,10,10")  # a cache.CacheError: one line on stderr, status 1, no traceback
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("preprocess.py: --split: --dataset esc50 has splits")


def test_bad_files_are_skipped_with_reason_and_run_completes(tmp_path):
    root = tmp_path / "f" / "mixed"
    root.mkdir(parents=True)
    (root / "zero.wav").write_bytes(b"")
    good = root / "good.wav"
    write_wav(good, seconds=0.5)
    (root / "truncated.wav").write_bytes(good.read_bytes()[:30])
    (root / "text.wav").write_text("hello, I am not a wav file")
    write_wav(root / "tenms.wav", seconds=0.01)
    sf.write(root / "silent.wav", np.zeros(8000, np.float32), 16000)
    sf.write(root / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(root / "stereo48k.wav", np.stack([tone(sr=48000), tone(sr=48000)], 1), 48000, subtype="PCM_24")
    sf.write(root / "lofi8k.wav", tone(sr=8000), 8000, subtype="PCM_U8")
    write_wav(root / "naïve café ñ.wav")
    summary = run(dataset="folder", root=tmp_path / "f", out=tmp_path / "c")
    errors = pd.read_csv(tmp_path / "c" / "errors.csv").set_index("file")["reason"]
    reasons = {k.split("/")[-1]: v for k, v in errors.items()}
    assert set(reasons) == {"zero.wav", "truncated.wav", "text.wav", "tenms.wav", "nan.wav"}
    assert reasons["zero.wav"].startswith("empty") and reasons["text.wav"].startswith("unreadable")
    assert reasons["truncated.wav"].startswith(("unreadable", "empty")) and "too short" in reasons["tenms.wav"]
    assert "non-finite" in reasons["nan.wav"]
    df = read_manifest(tmp_path / "c")
    assert summary["written"] == 5 and len(df) == 5
    accent = df[df.source.str.contains("café")].iloc[0]
    assert accent.id.isascii() and np.load(tmp_path / "c" / accent.logmel).shape == (64, 51)
    assert df.set_index("source").loc["mixed/stereo48k.wav", "duration"] == pytest.approx(0.5)


def test_interrupted_run_resumes_to_same_manifest(tmp_path, monkeypatch):
    root = make_esc50(tmp_path / "esc", n=8)
    full = tmp_path / "full"
    run(dataset="esc50", root=root, out=full)
    reference = read_manifest(full)

    out = tmp_path / "resumed"
    calls = {"n": 0}
    real = cache.process_clip

    def dies_after_three(job):
        calls["n"] += 1
        if calls["n"] == 4:
            # leave a half-written temp file behind, as a killed process would
            (out / "logmel" / f".{job[2]}.npy.tmp99999999").write_bytes(b"\x93NUMPY half")
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(cache, "process_clip", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(dataset="esc50", root=root, out=out)
    assert not (out / "manifest.csv").exists()
    assert len(list((out / "logmel").glob("*.npy"))) == 3  # only complete files under their final names
    monkeypatch.setattr(cache, "process_clip", real)
    summary = run(dataset="esc50", root=root, out=out)
    assert summary["already_done"] == 3 and summary["written"] == 5
    pd.testing.assert_frame_equal(read_manifest(out), reference)
    assert not list((out / "logmel").glob(".*tmp*"))
    for path in (out / "logmel").glob("*.npy"):
        np.testing.assert_array_equal(np.load(path), np.load(full / "logmel" / path.name))
    assert run(dataset="esc50", root=root, out=out)["written"] == 0


def test_pack_option_writes_a_memory_map_of_every_clip(tmp_path):
    root = make_esc50(tmp_path / "esc", n=4)
    run(dataset="esc50", root=root, out=tmp_path / "c", pack=True)
    df = read_manifest(tmp_path / "c")
    index = np.load(tmp_path / "c" / "packed" / "index.npz")
    (name,) = index["files"].tolist()  # one worker, one shard file
    packed = np.fromfile(tmp_path / "c" / "packed" / name, dtype=np.float32).reshape(-1, 64)
    assert index["ids"].tolist() == df.id.tolist() and packed.shape == (4 * 101, 64)
    assert index["offsets"].tolist() == [0, 101, 202, 303] and index["lengths"].tolist() == [101] * 4
    np.testing.assert_array_equal(packed[101:202].T, np.load(tmp_path / "c" / df.logmel[1]))


def test_changed_parameters_refused_unless_force(tmp_path):
    root = make_esc50(tmp_path / "esc", n=2)
    run(dataset="esc50", root=root, out=tmp_path / "c")
    with pytest.raises(cache.CacheError, match="waveform: cache has False, this run asks for True"):
        run(dataset="esc50", root=root, out=tmp_path / "c", waveform=True)
    summary = run(dataset="esc50", root=root, out=tmp_path / "c", waveform=True, force=True)
    assert summary["written"] == 2 and (tmp_path / "c" / "wave").is_dir()


def test_shards_then_merge_equals_single_run(tmp_path):
    root = make_esc50(tmp_path / "esc", n=7)
    (root / "audio" / "2-1001-A-1.wav").write_text("broken")
    run(dataset="esc50", root=root, out=tmp_path / "one")
    for k in (1, 2, 3):
        run(dataset="esc50", root=root, out=tmp_path / "sh", shard=f"{k}/3")
    assert len(list((tmp_path / "sh").glob("manifest.shard-*.csv"))) == 3
    summary = run(dataset="esc50", root=root, out=tmp_path / "sh")
    assert summary["written"] == 0 and summary["skipped"] == 1
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "sh"), read_manifest(tmp_path / "one"))
    assert not list((tmp_path / "sh").glob("*.shard-*"))
    assert len(pd.read_csv(tmp_path / "sh" / "errors.csv")) == 1


def test_parallel_workers_give_same_features(tmp_path):
    root = make_esc50(tmp_path / "esc", n=6)
    run(dataset="esc50", root=root, out=tmp_path / "a")
    run(dataset="esc50", root=root, out=tmp_path / "b", workers=2)
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b"))
    for path in (tmp_path / "a" / "logmel").glob("*.npy"):
        np.testing.assert_allclose(np.load(path), np.load(tmp_path / "b" / "logmel" / path.name), atol=1e-5)


def test_layout_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(cache.CacheError, match="esc50.csv: not found"):
        run(dataset="esc50", root=tmp_path / "empty", out=tmp_path / "c")
    with pytest.raises(cache.CacheError, match="not found"):
        run(dataset="gtzan", root=tmp_path / "missing", out=tmp_path / "c")
    with pytest.raises(cache.CacheError, match="--shard"):
        run(dataset="folder", root=tmp_path / "empty", out=tmp_path / "c", shard="4/3")

# ---------------------------------------------------------------------------------------------- issue 10


def test_mixed_formats_clashing_stems_and_skipped_files(tmp_path):
    from tests.test_datasets import mixed_folder
    root = mixed_folder(tmp_path / "f")
    summary = run(dataset="folder", root=root, out=tmp_path / "c")
    df = read_manifest(tmp_path / "c").set_index("source")
    assert sorted(df.index) == ["birds/apple.aiff", "birds/clip.flac", "birds/clip.ogg", "birds/odd.dat",
                                "birds/song.mp3", "birds/sun.au"]
    assert df.loc["birds/clip.flac", "id"] == "birds__clip.flac" and df.loc["birds/clip.ogg", "id"] == "birds__clip.ogg"
    assert df.loc["birds/sun.au", "id"] == "birds__sun" and df.loc["birds/sun.au", "duration"] == pytest.approx(0.3)
    assert df.loc["birds/apple.aiff", "duration"] == pytest.approx(0.3)
    assert (summary["written"], summary["skipped"], summary["not_audio"], summary["hidden"]) == (6, 2, 1, 3)
    errors = pd.read_csv(tmp_path / "c" / "errors.csv").set_index("file")
    assert sorted((k.split("/")[-1], v) for k, v in errors["kind"].items()) == [
        (".DS_Store", "hidden"), ("._clip.flac", "hidden"), (".git", "hidden"), ("notes.txt", "not_audio"),
        ("yt.m4a", "error"), ("yt.webm", "error")]
    assert "ffmpeg" in errors.loc[str(root / "birds" / "yt.m4a"), "reason"]


def test_existing_cache_keeps_its_ids_when_a_clashing_file_appears(tmp_path):
    root = tmp_path / "f"
    write_wav(root / "birds" / "clip.flac", format="FLAC")
    run(dataset="folder", root=root, out=tmp_path / "c")
    assert read_manifest(tmp_path / "c").id.tolist() == ["birds__clip"]
    write_wav(root / "birds" / "clip.ogg", format="OGG")
    summary = run(dataset="folder", root=root, out=tmp_path / "c")
    df = read_manifest(tmp_path / "c").set_index("source")
    assert (summary["written"], summary["already_done"]) == (1, 1)
    assert df.loc["birds/clip.flac", "id"] == "birds__clip" and df.loc["birds/clip.ogg", "id"] == "birds__clip.ogg"
    # a fresh cache of the same tree gives both the extension ids
    run(dataset="folder", root=root, out=tmp_path / "fresh")
    assert sorted(read_manifest(tmp_path / "fresh").id) == ["birds__clip.flac", "birds__clip.ogg"]


def test_ids_that_still_clash_get_a_hash_and_never_abort(tmp_path):
    root = tmp_path / "as"
    write_wav(root / "x" / "a__b.wav")
    write_wav(root / "x__a" / "b.wav")  # both slug to x__a__b
    summary = run(dataset="audioset", root=root, out=tmp_path / "c")
    ids = read_manifest(tmp_path / "c").set_index("source")["id"]
    assert summary["written"] == 2 and ids["x/a__b.wav"] != ids["x__a/b.wav"]
    assert all(i.startswith("x__a__b.wav-") and len(i) == len("x__a__b.wav") + 9 for i in ids)
    clips = [cache.Clip(root / "k.wav", "k"), cache.Clip(root / "k.flac", "k")]
    assert cache.assign_ids(clips, root, {"k.wav": "k"}) == ["k", "k.flac"]  # an old id is kept
    (new,) = cache.assign_ids(clips[1:], root, {"gone.wav": "k"})  # 'k' was a removed clip's: its .npy is stale
    assert new == "k-" + __import__("hashlib").sha1(b"k.flac").hexdigest()[:8]


def test_gtzan_au_distribution_end_to_end(tmp_path):
    from tests.test_datasets import write_gtzan_au
    lists = SHARED / "data" / "gtzan_fault_filtered"
    keys = [n.removesuffix(".wav") for n in (lists / "valid_filtered.txt").read_text().split()[:3]]
    run(dataset="gtzan", root=write_gtzan_au(tmp_path / "g", keys), out=tmp_path / "c", split_dir=lists)
    df = read_manifest(tmp_path / "c")
    assert df.id.tolist() == [k.replace("/", "__") for k in keys] and set(df.split) == {"valid"}
    assert df.duration.tolist() == [pytest.approx(0.2)] * 3 and df.source[0].endswith(".au")
    assert np.load(tmp_path / "c" / df.logmel[0]).shape == (64, 1 + 3200 // 160)


def test_audioset_manifest_has_mids_display_names_and_splits(tmp_path):
    from tests.test_datasets import write_audioset
    root = write_audioset(tmp_path / "as", tmp_path / "as")
    summary = run(dataset="audioset", root=root, out=tmp_path / "c")
    df = read_manifest(tmp_path / "c").set_index("ytid")
    assert summary["written"] == 6 and summary["not_audio"] == 4  # the 3 segment CSVs + class_labels_indices
    assert df.loc["--PJHxphWEs", "label_names"] == "Speech;Gush" and df.loc["--PJHxphWEs", "split"] == "balanced_train"
    assert sorted(df.split) == ["balanced_train"] * 2 + ["eval"] + ["unbalanced_train"] * 2 + ["unlabelled"]


def test_truncated_wav_is_kept_with_a_warning(tmp_path):
    path = write_wav(tmp_path / "f" / "c" / "cut.wav", seconds=5.0)
    data = path.read_bytes()
    path.write_bytes(data[:44 + 2 * 15040])  # header says 5 s, data ends at 0.94 s
    summary = run(dataset="folder", root=tmp_path / "f", out=tmp_path / "o")
    errors = pd.read_csv(tmp_path / "o" / "errors.csv")
    assert summary["written"] == 1 and summary["warnings"] == 1 and summary["skipped"] == 0
    assert errors.kind.tolist() == ["warning"]
    assert errors.reason[0] == "loaded, truncated: header says 5.000 s, data ends at 0.940 s"
    assert read_manifest(tmp_path / "o").duration[0] == pytest.approx(0.94)
    assert run(dataset="folder", root=tmp_path / "f", out=tmp_path / "o")["warnings"] == 1  # resumed


def test_unusable_out_and_full_disk_end_with_one_line(tmp_path, monkeypatch):
    root = make_esc50(tmp_path / "esc", n=3)
    (tmp_path / "file").write_text("x")
    for out, message in [(tmp_path / "file", "file: exists and is not a folder"),
                         ("/proc/audio-cache", "/proc/audio-cache: cannot write the cache there"),
                         ("/sys/x/cache", "cannot write the cache there")]:
        with pytest.raises(cache.CacheError, match=message) as err:
            run(dataset="esc50", root=root, out=out)
        assert "\n" not in str(err.value)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "logmel").write_text("x")
    with pytest.raises(cache.CacheError, match="c/logmel: exists and is not a folder"):
        run(dataset="esc50", root=root, out=tmp_path / "c")

    def full_disk(array, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cache, "_save_npy", full_disk)
    with pytest.raises(cache.CacheError, match=r"1-1000-A-0.npy: No space left on device; the run stopped") as err:
        run(dataset="esc50", root=root, out=tmp_path / "d")
    assert "\n" not in str(err.value)
    (root / "meta" / "esc50.csv").write_text("filename;fold\n")
    with pytest.raises(cache.CacheError, match=r"esc50.csv: missing column\(s\)"):
        run(dataset="esc50", root=root, out=tmp_path / "e")


def test_shard_from_slurm_array_or_torchrun(tmp_path, monkeypatch):
    assert cache.launcher_shard({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
                                      "SLURM_ARRAY_TASK_COUNT": "3"}) == "2/3"
    assert cache.launcher_shard({"RANK": "3", "WORLD_SIZE": "4"}) == "4/4"
    assert cache.launcher_shard({"RANK": "0", "WORLD_SIZE": "1"}) is None
    root = make_esc50(tmp_path / "esc", n=5)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert run(dataset="esc50", root=root, out=tmp_path / "c")["written"] == 2  # clips 2 and 4
    assert (tmp_path / "c" / "manifest.shard-2-of-2.csv").exists()
    # --shard wins over the environment; 1/1 is a full run (the merge)
    assert run(dataset="esc50", root=root, out=tmp_path / "c", shard="1/2")["written"] == 3
    assert run(dataset="esc50", root=root, out=tmp_path / "c", shard="1/1")["written"] == 0
    assert len(read_manifest(tmp_path / "c")) == 5


def test_sharded_pack_written_by_workers_and_merged(tmp_path, monkeypatch):
    import data
    root = make_esc50(tmp_path / "esc", n=7)
    monkeypatch.setattr(data, "SHARD_BYTES", 2 * 101 * 64 * 4)  # two 1 s clips per shard file
    for k in (1, 2):
        run(dataset="esc50", root=root, out=tmp_path / "c", pack=True, shard=f"{k}/2")
    assert sorted(p.name for p in (tmp_path / "c" / "packed").glob("index*")) == [
        "index.shard-1-of-2.npz", "index.shard-2-of-2.npz"]
    (tmp_path / "c" / "packed" / ".logmel.npy.tmp99999999").write_bytes(b"x" * 100)  # a killed old --pack
    (tmp_path / "c" / "packed" / "logmel-all-4242-001.bin").write_bytes(b"x" * 100)  # a killed run's shard
    summary = run(dataset="esc50", root=root, out=tmp_path / "c", pack=True)
    packed = tmp_path / "c" / "packed"
    assert summary["written"] == 0 and sorted(p.name for p in packed.glob("index*")) == ["index.npz"]
    assert not list(packed.glob(".*")) and not (packed / "logmel-all-4242-001.bin").exists()
    index = np.load(packed / "index.npz")
    assert sorted(index["files"]) == ["logmel-s1of2-" + f"{os.getpid()}-00{k}.bin" for k in (1, 2)] + [
        "logmel-s2of2-" + f"{os.getpid()}-00{k}.bin" for k in (1, 2)]  # shard 1: 4 clips, shard 2: 3
    df = read_manifest(tmp_path / "c")
    assert index["ids"].tolist() == df.id.tolist() and index["shard"].tolist() == [0, 2, 0, 2, 1, 3, 1]
    ds = data.LogMelCrops(tmp_path / "c", df, frames=None)
    assert ds.packed is not None and len(ds.packed.maps) == 4
    for i in range(7):
        np.testing.assert_array_equal(ds[i][0][0].numpy(), np.load(tmp_path / "c" / df.logmel[i]))


def test_float16_cache_halves_the_disk_and_stays_close(tmp_path):
    import data
    root = make_esc50(tmp_path / "esc", n=3)
    run(dataset="esc50", root=root, out=tmp_path / "f32")
    run(dataset="esc50", root=root, out=tmp_path / "f16", dtype="float16", pack=True)
    df = read_manifest(tmp_path / "f16")
    half, full = np.load(tmp_path / "f16" / df.logmel[0]), np.load(tmp_path / "f32" / df.logmel[0])
    assert half.dtype == np.float16 and half.nbytes * 2 == full.nbytes
    assert np.abs(half.astype(np.float32) - full).max() <= 2 ** -11 * np.abs(full).max()  # float16 rounding
    item = data.LogMelCrops(tmp_path / "f16", df, frames=96)[0][0]
    assert item.dtype == torch.float32 and data.LogMelCrops(tmp_path / "f16", df).packed is not None
    with pytest.raises(cache.CacheError, match="dtype: cache has 'float16', this run asks for 'float32'"):
        run(dataset="esc50", root=root, out=tmp_path / "f16")


def test_killed_pack_run_keeps_what_its_workers_packed(tmp_path, monkeypatch):
    import data
    root = make_esc50(tmp_path / "esc", n=6)
    out = tmp_path / "c"
    monkeypatch.setattr(cache, "PACK_INDEX_SECONDS", 0.0)  # save the pack index after every clip
    real, calls = cache.process_clip, []

    def killed_at_five(job):
        calls.append(job[2])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(cache, "process_clip", killed_at_five)
    with pytest.raises(KeyboardInterrupt):
        run(dataset="esc50", root=root, out=out, pack=True)
    saved = data.read_pack_index(out / "packed" / "index.npz")
    assert sorted(saved) == sorted(calls[:4])
    monkeypatch.setattr(cache, "process_clip", real)
    copied = []
    monkeypatch.setattr(cache, "load_array", lambda cache, rel: copied.append(rel) or data.load_array(cache, rel))
    assert run(dataset="esc50", root=root, out=out, pack=True)["written"] == 2
    assert copied == []  # no second pass: the first four clips are still in the killed run's shard file
    index = data.read_pack_index(out / "packed" / "index.npz")
    assert {cid: index[cid] for cid in calls[:4]} == saved
    df = read_manifest(out)
    ds = data.LogMelCrops(out, df, frames=None)
    for i in range(6):
        np.testing.assert_array_equal(ds[i][0][0].numpy(), np.load(out / df.logmel[i]))


def test_pack_added_to_an_existing_cache_copies_its_clips_once(tmp_path):
    import data
    root = make_esc50(tmp_path / "esc", n=3)
    run(dataset="esc50", root=root, out=tmp_path / "c")
    assert run(dataset="esc50", root=root, out=tmp_path / "c", pack=True)["written"] == 0
    df = read_manifest(tmp_path / "c")
    ds = data.LogMelCrops(tmp_path / "c", df, frames=None)
    assert ds.packed is not None and len(ds.packed.maps) == 1
    np.testing.assert_array_equal(ds[2][0][0].numpy(), np.load(tmp_path / "c" / df.logmel[2]))


HOLD_LOCK = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import cache
lock = cache.lock_cache(Path(sys.argv[2]), None)
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_stops_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    root, out = make_esc50(tmp_path / "esc", n=2), tmp_path / "cache"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(ROOT), str(out)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "preprocess.py", "--dataset", "esc50", "--root", str(root),
                                 "--out", str(out), "--pack", "--workers", "1"], cwd=ROOT, capture_output=True,
                                text=True, env=env)
        assert second.returncode == 1
        assert second.stderr.count("\n") == 1 and "another preprocess.py is writing this cache" in second.stderr
        assert f"host {files.HOST}, pid {holder.pid}, started " in second.stderr
        assert sorted(p.name for p in out.rglob("*")) == ["logmel", "preprocess.lock", "wave"]  # nothing written
        with pytest.raises(cache.CacheError, match=f"pid {holder.pid}"):  # a shard run stops too
            run(dataset="esc50", root=root, out=out, shard="1/2")
    finally:
        holder.kill()
        holder.wait()
    assert f"pid={holder.pid} " in (out / "preprocess.lock").read_text()  # kill -9 left its lock file
    assert run(dataset="esc50", root=root, out=out, pack=True)["written"] == 2
    err = capsys.readouterr().err
    assert f"took over the lock of host {files.HOST}, pid {holder.pid}" in err and "no longer running" in err
    assert not (out / "preprocess.lock").exists()  # released at the end


def test_full_run_waits_for_live_shards_and_other_machines_locks_are_kept(tmp_path):
    root, out = make_esc50(tmp_path / "esc", n=2), tmp_path / "cache"
    out.mkdir()
    with files.FolderLock(out / "preprocess.shard-2-of-2.lock"):  # a live shard run (here: this process)
        with pytest.raises(cache.CacheError, match=r"preprocess.shard-2-of-2.lock: held by host .*, pid "):
            run(dataset="esc50", root=root, out=out)
        assert run(dataset="esc50", root=root, out=out, shard="1/2")["written"] == 1
    (out / "preprocess.lock").write_text("host=node-7 pid=4242 started=2026-01-01T00:00:00\n")
    with pytest.raises(cache.CacheError, match=r"held by host node-7, pid 4242, .*another machine: if that run is "
                                               r"gone, delete the lock file"):
        run(dataset="esc50", root=root, out=out)
    (out / "preprocess.lock").unlink()
    (out / "preprocess.shard-2-of-2.lock").write_text(f"host={files.HOST} pid=999999999 started=x\n")  # killed
    assert run(dataset="esc50", root=root, out=out)["written"] == 1  # merges shard 1's clip
    assert not list(out.glob("*.lock"))  # the killed shard's lock file went with the shards' manifests
