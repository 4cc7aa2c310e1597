"""preprocess.py: every adapter on a tiny data set written in the real layout, bad files, resume, shards."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import datasets
import preprocess
from data import read_manifest
from tests.conftest import SHARED


def tone(freq=440.0, sr=16000, seconds=0.5, amp=0.3):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def write_wav(path, sr=16000, seconds=0.5, freq=440.0, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(freq, sr, seconds), sr, **kw)
    return path


def run(*args):
    return preprocess.main([str(a) for a in args] + ["--workers", "1"])


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
    summary = run("--dataset", "esc50", "--root", root, "--out", out, "--waveform")
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
    run("--dataset", "gtzan", "--root", root, "--out", tmp_path / "c", "--split-dir", lists)
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
    run("--dataset", "nsynth", "--root", root, "--out", tmp_path / "c")
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
    run("--dataset", "speechcommands", "--root", root, "--out", tmp_path / "c")
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
    run("--dataset", "audioset", "--root", root, "--out", tmp_path / "c", "--labels", tmp_path / "labels.csv")
    df = read_manifest(tmp_path / "c")
    assert len(df) == 2 and sorted(df.split) == ["train", "unlabelled"]  # a CSV of another name: split train
    assert sorted(df.label) == ["", "/m/09x0r;/t/dd00088"]


def test_folder_adapter(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            write_wav(tmp_path / "f" / cls / f"{i}.wav")
    run("--dataset", "folder", "--root", tmp_path / "f", "--out", tmp_path / "c")
    df = read_manifest(tmp_path / "c")
    assert sorted(df.label) == ["cat", "cat", "dog", "dog"] and set(df.split) == {""}


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
    summary = run("--dataset", "folder", "--root", tmp_path / "f", "--out", tmp_path / "c")
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
    run("--dataset", "esc50", "--root", root, "--out", full)
    reference = read_manifest(full)

    out = tmp_path / "resumed"
    calls = {"n": 0}
    real = preprocess.process_clip

    def dies_after_three(job):
        calls["n"] += 1
        if calls["n"] == 4:
            # leave a half-written temp file behind, as a killed process would
            (out / "logmel" / f".{job[2]}.npy.tmp999").write_bytes(b"\x93NUMPY half")
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(preprocess, "process_clip", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run("--dataset", "esc50", "--root", root, "--out", out)
    assert not (out / "manifest.csv").exists()
    assert len(list((out / "logmel").glob("*.npy"))) == 3  # only complete files under their final names
    monkeypatch.setattr(preprocess, "process_clip", real)
    summary = run("--dataset", "esc50", "--root", root, "--out", out)
    assert summary["already_done"] == 3 and summary["written"] == 5
    pd.testing.assert_frame_equal(read_manifest(out), reference)
    assert not list((out / "logmel").glob(".*tmp*"))
    for path in (out / "logmel").glob("*.npy"):
        np.testing.assert_array_equal(np.load(path), np.load(full / "logmel" / path.name))
    assert run("--dataset", "esc50", "--root", root, "--out", out)["written"] == 0


def test_pack_option_writes_a_memory_map_of_every_clip(tmp_path):
    root = make_esc50(tmp_path / "esc", n=4)
    run("--dataset", "esc50", "--root", root, "--out", tmp_path / "c", "--pack")
    df = read_manifest(tmp_path / "c")
    index = np.load(tmp_path / "c" / "packed" / "index.npz")
    (name,) = index["files"].tolist()  # one worker, one shard file
    packed = np.fromfile(tmp_path / "c" / "packed" / name, dtype=np.float32).reshape(-1, 64)
    assert index["ids"].tolist() == df.id.tolist() and packed.shape == (4 * 101, 64)
    assert index["offsets"].tolist() == [0, 101, 202, 303] and index["lengths"].tolist() == [101] * 4
    np.testing.assert_array_equal(packed[101:202].T, np.load(tmp_path / "c" / df.logmel[1]))


def test_changed_parameters_refused_unless_force(tmp_path):
    root = make_esc50(tmp_path / "esc", n=2)
    run("--dataset", "esc50", "--root", root, "--out", tmp_path / "c")
    with pytest.raises(SystemExit, match="waveform: cache has False, this run asks for True"):
        run("--dataset", "esc50", "--root", root, "--out", tmp_path / "c", "--waveform")
    summary = run("--dataset", "esc50", "--root", root, "--out", tmp_path / "c", "--waveform", "--force")
    assert summary["written"] == 2 and (tmp_path / "c" / "wave").is_dir()


def test_shards_then_merge_equals_single_run(tmp_path):
    root = make_esc50(tmp_path / "esc", n=7)
    (root / "audio" / "2-1001-A-1.wav").write_text("broken")
    run("--dataset", "esc50", "--root", root, "--out", tmp_path / "one")
    for k in (1, 2, 3):
        run("--dataset", "esc50", "--root", root, "--out", tmp_path / "sh", "--shard", f"{k}/3")
    assert len(list((tmp_path / "sh").glob("manifest.shard-*.csv"))) == 3
    summary = run("--dataset", "esc50", "--root", root, "--out", tmp_path / "sh")
    assert summary["written"] == 0 and summary["skipped"] == 1
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "sh"), read_manifest(tmp_path / "one"))
    assert not list((tmp_path / "sh").glob("*.shard-*"))
    assert len(pd.read_csv(tmp_path / "sh" / "errors.csv")) == 1


def test_parallel_workers_give_same_features(tmp_path):
    root = make_esc50(tmp_path / "esc", n=6)
    run("--dataset", "esc50", "--root", root, "--out", tmp_path / "a")
    preprocess.main(["--dataset", "esc50", "--root", str(root), "--out", str(tmp_path / "b"), "--workers", "2"])
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b"))
    for path in (tmp_path / "a" / "logmel").glob("*.npy"):
        np.testing.assert_allclose(np.load(path), np.load(tmp_path / "b" / "logmel" / path.name), atol=1e-5)


def test_layout_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="esc50.csv: not found"):
        run("--dataset", "esc50", "--root", tmp_path / "empty", "--out", tmp_path / "c")
    with pytest.raises(SystemExit, match="not found"):
        run("--dataset", "gtzan", "--root", tmp_path / "missing", "--out", tmp_path / "c")
    with pytest.raises(SystemExit, match="--shard"):
        run("--dataset", "folder", "--root", tmp_path / "empty", "--out", tmp_path / "c", "--shard", "4/3")
