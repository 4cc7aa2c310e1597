"""datasets.py: the registry, every libsndfile format, skipped files with reasons, GTZAN and AudioSet as
distributed (layouts and CSVs written here as the real downloads have them)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import datasets
from tests.conftest import SHARED


def tone(sr=16000, seconds=0.3):
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def write(path, sr=16000, seconds=0.3, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(sr, seconds), sr, **kw)
    return path


def mixed_folder(root):
    """One class folder with every kind of file a user's disk holds."""
    d = root / "birds"
    write(d / "clip.flac", format="FLAC")
    write(d / "clip.ogg", format="OGG")          # same stem, other extension
    write(d / "sun.au", sr=22050, format="AU")
    write(d / "apple.aiff", sr=44100, format="AIFF")
    write(d / "song.mp3", sr=44100, format="MP3")
    write(d / "odd.dat", format="WAV")           # a WAV under an unknown extension is audio
    (d / "yt.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    (d / "yt.webm").write_bytes(b"\x1aE\xdf\xa3")
    (d / "notes.txt").write_text("not audio")
    (d / "._clip.flac").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (d / ".DS_Store").write_bytes(b"\x00")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    return root


def test_mixed_formats_are_audio_and_the_rest_is_skipped_with_a_reason(tmp_path):
    found = datasets.adapt_folder(mixed_folder(tmp_path / "f"))
    names = sorted(c.source.name for c in found.clips)
    assert names == ["apple.aiff", "clip.flac", "clip.ogg", "odd.dat", "song.mp3", "sun.au"]
    skipped = {s.path.name: (s.kind, s.reason) for s in found.skipped}
    assert set(skipped) == {"yt.m4a", "yt.webm", "notes.txt", "._clip.flac", ".DS_Store", ".git"}
    assert skipped["yt.m4a"][0] == "error" and "ffmpeg -i 'yt.m4a' -ac 1 -ar 16000 'yt.flac'" in skipped["yt.m4a"][1]
    assert skipped["yt.webm"][0] == "error" and "not a format libsndfile decodes" in skipped["yt.webm"][1]
    assert skipped["notes.txt"][0] == "not_audio"
    assert skipped["._clip.flac"] == ("hidden", "AppleDouble metadata file (macOS ._*), not audio")
    assert skipped[".DS_Store"] == ("hidden", "hidden file") and skipped[".git"][1] == "hidden folder, not searched"
    assert {c.key for c in found.clips if c.source.stem == "clip"} == {"birds/clip"}  # ids are made unique later


def write_gtzan_au(root, keys):
    """The original genres.tar.gz: genres/<genre>/<genre>.000NN.au, 22,050 Hz 16-bit."""
    for key in keys:
        write(root / "genres" / f"{key}.au", sr=22050, seconds=0.2, format="AU", subtype="PCM_16")
    return root


def test_gtzan_as_distributed_au_files_match_the_wav_lists_by_stem(tmp_path):
    lists = SHARED / "data" / "gtzan_fault_filtered"
    train = (lists / "train_filtered.txt").read_text().split()[:3]
    test = (lists / "test_filtered.txt").read_text().split()[:2]
    listed = {n for f in lists.glob("*_filtered.txt") for n in f.read_text().split()}
    unlisted = next(f"{g}/{g}.{i:05d}" for g in ("blues", "jazz", "rock", "pop") for i in range(100)
                    if f"{g}/{g}.{i:05d}.wav" not in listed)
    keys = [n.removesuffix(".wav") for n in train + test] + [unlisted]
    found = datasets.adapt_gtzan(write_gtzan_au(tmp_path / "gtzan", keys), split_dir=lists)
    by_key = {c.key: c for c in found.clips}
    assert sorted(by_key) == sorted(keys[:-1])
    assert [by_key[k.removesuffix(".wav")].split for k in train + test] == ["train"] * 3 + ["test"] * 2
    assert by_key[keys[0]].label == keys[0].split("/")[0] and by_key[keys[0]].source.suffix == ".au"
    assert [(s.path.name, s.kind) for s in found.skipped] == [(unlisted.split("/")[1] + ".au", "excluded")]
    assert sf.info(str(by_key[keys[0]].source)).samplerate == 22050


def test_gtzan_kaggle_copy_skips_the_broken_jazz_00054(tmp_path):
    root = tmp_path / "kaggle" / "Data"
    for key in ["jazz/jazz.00053", "jazz/jazz.00054", "blues/blues.00000"]:
        write(root / "genres_original" / f"{key}.wav", sr=22050, seconds=0.2)
    found = datasets.adapt_gtzan(tmp_path / "kaggle")
    assert sorted(c.key for c in found.clips) == ["blues/blues.00000", "jazz/jazz.00053"]
    (skip,) = found.skipped
    assert skip.path.name == "jazz.00054.wav" and skip.kind == "error" and "Kaggle" in skip.reason
    # the original .au distribution keeps its jazz.00054
    found = datasets.adapt_gtzan(write_gtzan_au(tmp_path / "orig", ["jazz/jazz.00054"]))
    assert [c.key for c in found.clips] == ["jazz/jazz.00054"] and not found.skipped


SEGMENTS = {  # header lines as in the real files, then YTID, start_seconds, end_seconds, "mids"
    "balanced_train_segments.csv": ['--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"',
                                    '-0RWZT-miFs, 420.000, 430.000, "/m/03qc9zr"'],
    "unbalanced_train_segments.csv": ['YxlGt805lTA, 30.000, 40.000, "/m/07rwj3x"',
                                      '---1_cCGK4M, 0.000, 10.000, "/m/01yrx"'],
    "eval_segments.csv": ['--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"'],
}
CLASSES = ('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/t/dd00088,"Gush"\n2,/m/03qc9zr,"Screaming"\n'
           '3,/m/07rwj3x,"Music"\n4,/m/01yrx,"Cat"\n5,/m/068hy,"Domestic animals, pets"\n6,/m/07q6cd_,"Squeak"\n'
           '7,/m/0bt9lr,"Dog"\n8,/m/0jbk,"Animal"\n')


def write_audioset(root, labels):
    labels.mkdir(parents=True, exist_ok=True)
    for name, rows in SEGMENTS.items():
        header = (f"# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids={len(rows)}, num_segs={len(rows)}, "
                  "num_unique_labels=527, num_positive_labels=4\n# YTID, start_seconds, end_seconds, "
                  "positive_labels\n")
        (labels / name).write_text(header + "\n".join(rows) + "\n")
    (labels / "class_labels_indices.csv").write_text(CLASSES)
    write(root / "balanced" / "Y--PJHxphWEs_30.000_40.000.wav")         # Y + _start_end
    write(root / "balanced" / "-0RWZT-miFs_420.flac", format="FLAC")     # no Y, _start only
    write(root / "unbalanced" / "part01" / "YxlGt805lTA.ogg", format="OGG")  # YTID starting with Y, no Y prefix
    write(root / "unbalanced" / "part01" / "Y---1_cCGK4M_0_10000.wav")   # start/end in ms
    write(root / "eval" / "--4gqARaEJE.wav")                             # plain YTID
    write(root / "extra" / "Yzzzzzzzzzzz_5.000_15.000.wav")             # in no CSV
    return root


def test_audioset_as_distributed(tmp_path):
    root = write_audioset(tmp_path / "audioset", tmp_path / "audioset")
    found = datasets.adapt_audioset(root)
    clips = {c.source.name: c for c in found.clips}
    assert {n: (c.split, c.label) for n, c in clips.items()} == {
        "Y--PJHxphWEs_30.000_40.000.wav": ("balanced_train", "/m/09x0r;/t/dd00088"),
        "-0RWZT-miFs_420.flac": ("balanced_train", "/m/03qc9zr"),
        "YxlGt805lTA.ogg": ("unbalanced_train", "/m/07rwj3x"),
        "Y---1_cCGK4M_0_10000.wav": ("unbalanced_train", "/m/01yrx"),
        "--4gqARaEJE.wav": ("eval", "/m/068hy;/m/07q6cd_;/m/0bt9lr;/m/0jbk"),
        "Yzzzzzzzzzzz_5.000_15.000.wav": ("unlabelled", ""),
    }
    assert clips["Y--PJHxphWEs_30.000_40.000.wav"].extras == {"ytid": "--PJHxphWEs", "label_names": "Speech;Gush"}
    assert clips["--4gqARaEJE.wav"].extras["label_names"] == "Domestic animals, pets;Squeak;Dog;Animal"
    assert clips["YxlGt805lTA.ogg"].extras["ytid"] == "YxlGt805lTA"
    assert clips["Y---1_cCGK4M_0_10000.wav"].key == "unbalanced/part01/Y---1_cCGK4M_0_10000"
    assert sorted(s.path.name for s in found.skipped if s.kind == "not_audio") == sorted(
        [*SEGMENTS, "class_labels_indices.csv"])
    # the CSVs may also sit in their own folder (--labels DIR)
    elsewhere = write_audioset(tmp_path / "clips", tmp_path / "meta")
    assert {c.split for c in datasets.adapt_audioset(elsewhere, labels=tmp_path / "meta").clips} == {
        "balanced_train", "unbalanced_train", "eval", "unlabelled"}


def test_audioset_start_time_must_match_and_bad_csv_line_is_named(tmp_path):
    write(tmp_path / "as" / "v1.2" / "clip", format="WAV")  # a dotted folder, a file without extension
    assert [c.key for c in datasets.adapt_audioset(tmp_path / "as").clips] == ["v1.2/clip"]
    with pytest.raises(datasets.DatasetLayoutError, match="missing.csv: not found"):
        datasets.adapt_audioset(tmp_path / "as", labels=tmp_path / "missing.csv")
    index = {"--PJHxphWEs": [(30.0, "eval", ["/m/x"])]}
    assert datasets.match_segment("Y--PJHxphWEs_30", index)[0] == "--PJHxphWEs"
    assert datasets.match_segment("--PJHxphWEs_31.000_41.000", index) is None
    (tmp_path / "eval_segments.csv").write_text("# comment\n--PJHxphWEs, thirty, 40.0, \"/m/x\"\n")
    rows, (bad,) = datasets.read_segment_csv(tmp_path / "eval_segments.csv")
    assert rows == [] and str(bad.path).endswith("eval_segments.csv:2") and "'thirty'" in bad.reason


def test_esc50_listed_wav_found_under_another_extension_and_unlisted_files_reported(tmp_path):
    root = tmp_path / "ESC-50-master"
    write(root / "audio" / "1-100-A-0.flac", format="FLAC")
    write(root / "audio" / "2-200-A-1.wav")
    write(root / "audio" / "extra.wav")
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n"
                                             "1-100-A-0.wav,1,0,dog,True,100,A\n2-200-A-1.wav,2,1,rain,False,200,A\n")
    found = datasets.adapt_esc50(root)
    assert [(c.source.name, c.key, c.fold, c.extras["esc10"]) for c in found.clips] == [
        ("1-100-A-0.flac", "1-100-A-0", 1, True), ("2-200-A-1.wav", "2-200-A-1", 2, False)]
    assert [(s.path.name, s.kind) for s in found.skipped] == [("extra.wav", "excluded")]
    (root / "meta" / "esc50.csv").write_text("file,fold\nx.wav,1\n")
    with pytest.raises(datasets.DatasetLayoutError, match=r"esc50.csv: missing column\(s\) \['filename'"):
        datasets.adapt_esc50(root)
    (root / "meta" / "esc50.csv").write_text("filename,fold,target,category,esc10\nx.wav,one,0,dog,True\n")
    (bad,) = [s for s in datasets.adapt_esc50(root).skipped if s.kind == "error"]
    assert str(bad.path).endswith("esc50.csv:2") and "fold and target must be integers" in bad.reason


def test_registry_entries_and_tasks():
    tasks = datasets.all_tasks()
    assert set(tasks) == {"esc50", "esc10", "gtzan", "nsynth", "nsynth_pitch", "sc35", "sc10"}
    assert datasets.find_task("esc10") == ("esc50", datasets.TaskSpec({"esc10": True}, 5.0, "label", "ESC-10"))
    assert datasets.find_task("nsynth_pitch")[1].label == "pitch" and datasets.find_task("nope") is None
    assert {n: e.cache for n, e in datasets.REGISTRY.items()}["speechcommands"] == "cache/speechcommands"
    assert all(callable(e.adapter) for e in datasets.REGISTRY.values())
    assert [(t, s.unit_seconds) for t, (_, s) in tasks.items() if t in ("gtzan", "sc10")] == [("gtzan", 30.0),
                                                                                             ("sc10", 1.0)]


def test_malformed_nsynth_examples_json_is_one_clear_error(tmp_path):
    folder = tmp_path / "nsynth" / "nsynth-valid"
    folder.mkdir(parents=True)
    (folder / "examples.json").write_text('[{"bass_synthetic_033-022-050": {"pitch": 22}}]')
    with pytest.raises(datasets.DatasetLayoutError, match="examples.json: not NSynth's examples.json .a list"):
        datasets.adapt_nsynth(tmp_path / "nsynth")
    (folder / "examples.json").write_text("{truncated")
    with pytest.raises(datasets.DatasetLayoutError, match="JSONDecodeError"):
        datasets.adapt_nsynth(tmp_path / "nsynth")


def test_files_outside_the_layout_are_reported_not_dropped(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    write(root / "yes" / "a_nohash_0.wav")
    write(root / "yes" / "deeper" / "b_nohash_0.wav")   # one level too deep
    write(root / "stray.wav")                           # at the top
    write(root / "_background_noise_" / "white_noise.wav", seconds=1.0)
    (root / "validation_list.txt").write_text("yes/a_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("")
    (root / "LICENSE").write_text("CC-BY-4.0")
    found = datasets.adapt_speechcommands(root)
    assert [(c.key, c.split) for c in found.clips] == [("yes/a_nohash_0", "valid")]
    kinds = {s.path.relative_to(root).as_posix(): s.kind for s in found.skipped}
    assert kinds == {"yes/deeper/b_nohash_0.wav": "excluded", "stray.wav": "excluded", "LICENSE": "not_audio",
                     "_background_noise_/white_noise.wav": "excluded", "validation_list.txt": "not_audio",
                     "testing_list.txt": "not_audio"}
