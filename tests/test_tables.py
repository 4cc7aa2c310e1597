"""tables.py (the pages of results/make_tables.py): the markdown from a fixture results.csv; unmeasured cells
stay "-"."""
from __future__ import annotations

import csv

import pandas as pd

import probe
import tables
from tests.conftest import ROOT, run_script

REFERENCE = ROOT / "results" / "reference.csv"


def write_results(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, probe.RESULT_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in probe.RESULT_FIELDS})
    return path


def result(task, model, mean, ci="", long="chunk", pool="cls", fraction="", shots=""):
    return dict(task=task, model=model, long=long, pool=pool, mean=mean, ci95=ci, label_fraction=fraction,
                shots=shots, config=model, seeds="0", fold_acc=mean, n="1")


def test_seed_table_from_fixture_results(tmp_path):
    results = write_results(tmp_path / "results.csv", [
        result("esc50", "msn_vitb32", "40.00", "2.00"),      # superseded by the next esc50 row
        result("esc50", "msn_vitb32", "41.25", "1.10"),
        result("gtzan", "msn_vitb32", "50.00"),
        result("esc50", "msn_vitb32-random", "20.50", "0.90", long="pad"),
        result("sc10", "clar_2d", "80.00", "1.00"),
        result("esc50", "msn_vitb32", "30.00", fraction="0.1"),  # low-shot: not in the full-label table
    ])
    out = tables.write_page(results, REFERENCE, studies=tmp_path, runs=tmp_path / "none",
                            out=tmp_path / "README.md")
    page = out.read_text()
    expected = "\n".join([
        "| Model | long | pool | GTZAN | NSynth | ESC-50 | Source |",
        "|---|---|---|---|---|---|---|",
        "| MSN ViT-B/32 (seed) | - | - | 63.80 | 72.51 | 71.5 | published: MSN-audio seed (reported) "
        "(linear evaluation; AudioSet pretraining) |",
        "| BYOL-A (quoted by the seed) | - | - | 64.1 | 72.5 | 79.7 | published: MSN-audio seed quoting BYOL-A "
        "(79.7 equals EVAR's BYOL-A US8K figure; EVAR's BYOL-A v2 ESC-50 figure is 83.2) |",
        "| BYOL-A v2 (EVAR) | - | - | 70.1 | 73.1 | 83.2 | published: EVAR results table (nttcslab/eval-audio-repr) |",
        "| msn_vitb32 | chunk | cls | 50.00 | - | 41.25 ± 1.10 | measured |",
        "| msn_vitb32-random | pad | cls | - | - | 20.50 ± 0.90 | measured |",
    ])
    assert expected in page
    other = page.split("## Linear evaluation: other tasks")[1].split("##")[0]
    # the other tasks are datasets.REGISTRY's, in its order
    assert "| Model | long | pool | ESC-10 | NSynth pitch | SPCV2 (sc35) | SC-10 | Source |" in other
    assert "| clar_2d | chunk | cls | - | - | - | 80.00 ± 1.00 | measured |" in other
    assert "| CLAR 2D (paper best) | - | - | - | - | - | 89.3 |" in other
    low = page.split("## Low-shot linear evaluation")[1].split("##")[0]
    assert "| Model | Task | 100 % | 10 % |" in low
    assert "| msn_vitb32 | esc50 | 41.25 ± 1.10 | 30.00 |" in low
    assert (tmp_path / "readme_figures" / "lowshot_esc50.png").stat().st_size > 1000
    # no CLAR study files: every measured CLAR cell is "-", published numbers are labelled as such
    clar = page.split("## CLAR: label fraction x training mode")[1].split("##")[0]
    assert "| supervised | - | - | - | - |" in clar and "| clar | - | - | - | - |" in clar
    assert "approximate drop quoted by the seed" in clar
    assert "No run logs found." in page


def test_empty_results_leave_every_measured_cell_dash(tmp_path):
    out = tables.write_page(tmp_path / "absent.csv", REFERENCE, studies=tmp_path, runs=tmp_path,
                            out=tmp_path / "page.md")
    page = out.read_text()
    assert "measured |" not in page  # only published rows
    reference = pd.read_csv(REFERENCE, dtype=str, keep_default_na=False)
    for value in reference["value"]:
        assert value in page  # every published number appears with its source...
    assert page.count("published: ") == 6  # ...and every accuracy row is labelled published (+ byol-a d512)


def test_clar_studies_and_training_curves(tmp_path):
    pd.DataFrame({"mode": ["supervised", "supervised", "clar"], "label_fraction": ["1", "0.01", "1"],
                  "accuracy": ["90.0", "25.0", "88.0"]}).to_csv(tmp_path / "clar_labels.csv", index=False)
    pd.DataFrame({"aug1": ["pitch", "pitch", "noise"], "aug2": ["noise", "pitch", "noise"],
                  "accuracy": ["60.0", "55.0", "50.0"]}).to_csv(tmp_path / "clar_augpairs.csv", index=False)
    pd.DataFrame({"encoder": ["1d", "2d"], "accuracy": ["61.0", "70.0"]}).to_csv(
        tmp_path / "clar_representation.csv", index=False)
    run = tmp_path / "runs" / "clar_tiny"
    run.mkdir(parents=True)
    pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.5, 2.0], "online_acc": ["", "40", "55"]}).to_csv(
        run / "log.csv", index=False)
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "log.csv").write_text("step,epoch\n")
    out = tables.write_page(tmp_path / "absent.csv", REFERENCE, studies=tmp_path, runs=tmp_path / "runs",
                            out=tmp_path / "demo.md")
    page = out.read_text()
    assert "| supervised | 90.0 | - | - | 25.0 |" in page and "| clar | 88.0 | - | - | - |" in page
    assert "| 1d | 61.0 |" in page
    assert "![augmentation pairs](demo_figures/clar_augpairs.png)" in page
    assert "Measured mean over pairs: 55.0" in page
    assert "![clar_tiny](demo_figures/curve_clar_tiny.png)" in page and "broken" not in page
    assert (tmp_path / "demo_figures" / "curve_clar_tiny.png").stat().st_size > 1000


def test_augpair_matrix_is_symmetric_when_one_order_given():
    matrix = tables.augpair_matrix(pd.DataFrame({"aug1": ["a", "a"], "aug2": ["b", "a"], "accuracy": ["60", "50"]}))
    assert matrix.loc["a", "b"] == matrix.loc["b", "a"] == 60.0 and matrix.loc["a", "a"] == 50.0
    assert pd.isna(matrix.loc["b", "b"])


def test_columns_come_from_the_dataset_registry(monkeypatch):
    """A task added to datasets.REGISTRY gets its column in 'other tasks' with its title, nothing else to edit."""
    import importlib

    import datasets
    entry = datasets.DatasetSpec(datasets.adapt_folder, {"birds": datasets.TaskSpec(None, 3.0, title="Bird calls")},
                                 "cache/birds")
    monkeypatch.setitem(datasets.REGISTRY, "birds", entry)
    fresh = importlib.reload(tables)
    try:
        assert fresh.OTHER_TASKS["birds"] == "Bird calls" and list(fresh.SEED_TASKS) == ["gtzan", "nsynth", "esc50"]
    finally:
        monkeypatch.delitem(datasets.REGISTRY, "birds")
        importlib.reload(tables)


def test_learning_curves_from_knn_monitor_rows(tmp_path):
    """Runs with knn_acc rows (trainer.py train.monitor) get a learning-curve figure and a start/end table."""
    for name, accs in (("msn", ["0.20", "0.30", "0.45"]), ("byola", ["0.50", "0.52", "0.61"])):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        pd.DataFrame({"step": [0, 3, 3, 6, 6], "epoch": [0, 1, 1, 2, 2], "loss": ["", "2.0", "", "1.5", ""],
                      "knn_acc": [accs[0], "", accs[1], "", accs[2]], "seconds": [0.0, 1.0, 1.1, 2.0, 2.1]}
                     ).to_csv(run / "log.csv", index=False)
    out = tables.write_page(tmp_path / "absent.csv", REFERENCE, studies=tmp_path, runs=tmp_path / "runs",
                            out=tmp_path / "demo.md")
    page = out.read_text()
    assert "| byola | 50.0 | 61.0 | 2 | 2 |" in page and "| msn | 20.0 | 45.0 | 2 | 2 |" in page
    assert "![learning curves](demo_figures/learning_curves.png)" in page
    assert (tmp_path / "demo_figures" / "learning_curves.png").stat().st_size > 1000


def test_official_byola_row_beside_the_published_row_only_when_measured(tmp_path):
    common = {"reference": REFERENCE, "studies": tmp_path, "runs": tmp_path / "none"}
    empty = write_results(tmp_path / "empty.csv", [result("esc50", "msn_vitb32", "41.25")])
    page = tables.write_page(results=empty, out=tmp_path / "a.md", **common).read_text()
    section = page.split("## BYOL-A: the published encoder through this probe")[1].split("##")[0]
    assert "| BYOL-A d512 (byol-a README) | 69.1 | 88.9 | published: nttcslab/byol-a README" in section
    assert "official weights, this probe" not in section and "--ckpt byola:" in section
    measured = write_results(tmp_path / "results.csv", [  # fabricated rows: this test only
        result("nsynth", "byola-official-v1-d512", "70.50", "0.40", long="chunk", pool="cls"),
        result("synth_small", "byola-official-v1-d512", "55.00", "3.00")])
    page = tables.write_page(results=measured, out=tmp_path / "b.md", **common).read_text()
    section = page.split("## BYOL-A: the published encoder through this probe")[1].split("##")[0]
    assert "| Model | NSynth | SPCV2 (sc35) | synth_small | Source |" in section
    assert "| BYOL-A d512 (byol-a README) | 69.1 | 88.9 | - | published:" in section
    assert "| BYOL-A d512 (official weights, this probe) | 70.50 ± 0.40 | - | 55.00 ± 3.00 | measured |" in section
    assert "Not measured here" not in section


def test_the_command_line_writes_the_page_and_says_where(tmp_path):
    results = write_results(tmp_path / "results.csv", [result("esc50", "msn_vitb32", "41.25", "1.10")])
    done = run_script("results/make_tables.py", "--results", results, "--studies", tmp_path, "--runs",
                      tmp_path / "none", "--out", tmp_path / "page.md")
    assert done.returncode == 0 and done.stdout == f"wrote {tmp_path / 'page.md'}\n", done.stderr
    assert "| msn_vitb32 | chunk | cls | - | - | 41.25 ± 1.10 | measured |" in (tmp_path / "page.md").read_text()
