"""Malformed metadata never becomes labels (issue 16): a row that does not parse is reported in errors.csv as
'<file>:<line>' and skipped (the rows after it are read as they are), and a label id the class table does not
know stops the run with a line naming it. For AudioSet's segment CSVs, esc50.csv, NSynth's examples.json and
Speech Commands' split lists, each written as the real download has it and then broken as files get broken."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import cache
import datasets
from data import read_manifest
from tests.test_cache import run
from tests.test_datasets import write, write_audioset


def errors_csv(out) -> dict[str, str]:
    df = pd.read_csv(out / "errors.csv", dtype=str, keep_default_na=False)
    return {f: r for f, r, k in zip(df.file, df.reason, df.kind) if k == "error"}


def test_audioset_missing_quote_and_short_row_are_reported_not_swallowed(tmp_path):
    """Regression: a line with an unclosed quote made csv read the next lines into its label field, so the
    following clips were labelled with a mid list that held whole rows. Now each line stands alone."""
    root = write_audioset(tmp_path / "as", tmp_path / "as")
    path = root / "balanced_train_segments.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rstrip('"')  # --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088   (quote not closed)
    lines.insert(4, "-0RWZT-miFs, 420.000")  # a short row before the good one
    path.write_text("\n".join(lines) + "\n")
    summary = run(dataset="audioset", root=root, out=tmp_path / "c")
    errors = errors_csv(tmp_path / "c")
    assert set(errors) == {f"{path}:4", f"{path}:5"} and summary["skipped"] == 2
    assert "unexpected end of data" in errors[f"{path}:4"] and "2 fields, expected 4" in errors[f"{path}:5"]
    df = read_manifest(tmp_path / "c").set_index("source")
    assert df.loc["balanced/-0RWZT-miFs_420.flac", "label"] == "/m/03qc9zr"  # the row after them, intact
    assert df.loc["balanced/Y--PJHxphWEs_30.000_40.000.wav", "split"] == "unlabelled"  # its row was skipped
    assert all(datasets.MID.fullmatch(mid) for label in df["label"] if label for mid in label.split(";"))


def test_audioset_unknown_label_id_is_an_error_naming_it(tmp_path):
    root = write_audioset(tmp_path / "as", tmp_path / "as")
    path = root / "eval_segments.csv"
    path.write_text(path.read_text() + '--5gqARaEJE, 0.000, 10.000, "/m/0zzzz9,/m/09x0r"\n')
    with pytest.raises(cache.CacheError, match=rf"audioset: {path}: line 5: label id '/m/0zzzz9' is not in "
                                         r".*class_labels_indices.csv \(1 unknown id\(s\) on 1 row label\(s\)"):
        run(dataset="audioset", root=root, out=tmp_path / "c")
    # a broken class table row is itself reported, and its ids are then unknown
    table = root / "class_labels_indices.csv"
    path.write_text(path.read_text().replace("/m/0zzzz9,", ""))
    table.write_text(table.read_text().replace('1,/t/dd00088,"Gush"', '1,/t/dd00088,"Gush'))
    with pytest.raises(datasets.DatasetLayoutError, match="label id '/t/dd00088' is not in"):
        datasets.adapt_audioset(root)


def test_esc50_csv_bad_rows_are_reported_with_their_line_and_skipped(tmp_path):
    root = tmp_path / "ESC-50-master"
    names = [f"{i % 5 + 1}-{100 + i}-A-{i % 2}.wav" for i in range(5)]
    for name in names:
        write(root / "audio" / name)
    rows = ["filename,fold,target,category,esc10,src_file,take",
            f"{names[0]},1,0,dog,True,100,A",
            f'{names[1]},2,1,"rain,False,101,A',       # unclosed quote: used to swallow the next rows
            f"{names[2]},3,0,dog,True,102,A",
            f"{names[3]},4,1",                          # short row
            f"{names[4]},5,0,rooster,True,104,A"]       # target 0 is 'dog' on line 2
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    summary = run(dataset="esc50", root=root, out=tmp_path / "c")
    csv_path = root / "meta" / "esc50.csv"
    errors = errors_csv(tmp_path / "c")
    assert set(errors) == {f"{csv_path}:3", f"{csv_path}:5", f"{csv_path}:6"} and summary["skipped"] == 3
    assert "malformed CSV" in errors[f"{csv_path}:3"] and "3 fields, the header has 7" in errors[f"{csv_path}:5"]
    assert "target 0 is 'dog' on line 2, here 'rooster'" in errors[f"{csv_path}:6"]
    df = read_manifest(tmp_path / "c")
    assert sorted(zip(df.source, df.label)) == [(f"audio/{names[0]}", "dog"), (f"audio/{names[2]}", "dog")]


def test_nsynth_bad_entries_are_reported_and_skipped(tmp_path):
    folder = tmp_path / "nsynth" / "nsynth-valid"
    notes = {"bass_synthetic_033-022-050": {"instrument_family_str": "bass", "instrument_source_str": "synthetic",
                                            "pitch": 22},
             "guitar_acoustic_010-060-100": {"instrument_family_str": "guitr", "instrument_source_str": "acoustic",
                                             "pitch": 60},
             "reed_acoustic_011-061-100": {"instrument_family_str": "reed", "instrument_source_str": "acoustic"},
             "organ_electronic_001-062-100": {"instrument_family_str": "organ", "instrument_source_str": "electronic",
                                              "pitch": "62"}}
    for note in notes:
        write(folder / "audio" / f"{note}.wav")
    (folder / "examples.json").write_text(json.dumps(notes))
    found = datasets.adapt_nsynth(tmp_path / "nsynth")
    assert [(c.key, c.label) for c in found.clips] == [("valid/bass_synthetic_033-022-050", "bass")]
    bad = {str(s.path).rsplit(":", 1)[1]: s.reason for s in found.skipped if s.kind == "error"}
    assert "unknown instrument_family_str 'guitr'" in bad["guitar_acoustic_010-060-100"]
    assert "missing ['pitch']" in bad["reed_acoustic_011-061-100"]
    assert "pitch must be a MIDI number 0-127, got '62'" in bad["organ_electronic_001-062-100"]
    assert all(str(s.path).startswith(str(folder / "examples.json:")) for s in found.skipped if s.kind == "error")


def test_speechcommands_list_lines_are_checked(tmp_path):
    root = tmp_path / "sc"
    for key in ["yes/a_nohash_0.wav", "yes/b_nohash_0.wav", "no/c_nohash_0.wav"]:
        write(root / key)
    (root / "validation_list.txt").write_text("yes/b_nohash_0.wav\nyes b_nohash_1.wav\n")
    (root / "testing_list.txt").write_text("no/c_nohash_0.wav\nno/gone_nohash_0.wav\nyes/b_nohash_0.wav\n")
    found = datasets.adapt_speechcommands(root)
    assert sorted((c.key, c.split) for c in found.clips) == [
        ("no/c_nohash_0", "test"), ("yes/a_nohash_0", "train"), ("yes/b_nohash_0", "valid")]
    bad = {str(s.path).replace(str(root) + "/", ""): s.reason for s in found.skipped if s.kind == "error"}
    assert set(bad) == {"validation_list.txt:2", "testing_list.txt:2", "testing_list.txt:3"}
    assert "expected <word>/<file>.wav" in bad["validation_list.txt:2"]
    assert "no/gone_nohash_0.wav is not on disk" in bad["testing_list.txt:2"]
    assert "in validation_list.txt too" in bad["testing_list.txt:3"]
