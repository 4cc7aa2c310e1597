"""clar_studies.py: each of the paper's three studies runs end to end at tiny scale and writes its table (the
script, run as a command)."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import yaml

from tests.conftest import ROOT

TINY = ["model.width=4", "model.clip_seconds=0.25", "model.proj_hidden=16", "model.proj_dim=8",
        "optim.batch_size=10", "train.epochs=1", "data.num_workers=0"]


def study(name, tiny_cache, tmp_path, *options, config="config/demo_clar.yaml") -> dict:
    """Run `clar_studies.py NAME` on the tiny cache; the files it writes (csv, md and, for labels, curves)."""
    done = subprocess.run([sys.executable, "clar_studies.py", name, "--config", config, "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "results"), *options,
                           f"data.cache={tiny_cache}", *TINY], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "results"
    written = {"csv": out / f"clar_{name}.csv", "md": out / f"clar_{name}.md"}
    if name == "labels":
        written["curves"] = out / "clar_labels_curves.csv"
    assert all(path.is_file() for path in written.values())
    return written


def test_augpairs_writes_the_pair_matrix(tiny_cache, tmp_path):
    written = study("augpairs", tiny_cache, tmp_path, "--augs", "fade,time_shift", "--encoders", "1d")
    table = pd.read_csv(written["csv"])
    assert list(zip(table["first"], table["second"])) == [("fade", "fade"), ("fade", "time_shift"),
                                                          ("time_shift", "fade"), ("time_shift", "time_shift")]
    assert table["accuracy"].between(0, 1).all()
    text = written["md"].read_text()
    assert "| fade |" in text and "mean +- std" in text
    # a second call reuses the finished runs
    assert pd.read_csv(study("augpairs", tiny_cache, tmp_path, "--augs", "fade,time_shift",
                             "--encoders", "1d")["csv"]).equals(table)


def test_representation_and_labels_tables(tiny_cache, tmp_path):
    written = study("representation", tiny_cache, tmp_path, "--augs-1d", "fade", "--augs-2d", "time_mask")
    table = pd.read_csv(written["csv"])
    assert sorted(table["encoder"]) == ["1d", "2d"] and table["accuracy"].between(0, 1).all()
    written = study("labels", tiny_cache, tmp_path, "--fractions", "0.5", "encoder=1d")
    table = pd.read_csv(written["csv"])
    assert len(table) == 3 and set(table["mode"]) == {"supervised", "selfsupervised", "clar"}
    curves = pd.read_csv(written["curves"])
    assert len(curves) == 3 and (curves["epoch"] == 1).all()


def test_representation_data_keys_follow_each_cache(tiny_cache, tmp_path):
    """--caches: a split cache trains on its train split and tests on its test split, and the config's SC-10 class
    subset is dropped where the cache lacks the digits; a fold-only cache uses folds 1-4 / 5 (read back from each
    run's resolved config.yaml)."""
    study("representation", tiny_cache, tmp_path, "--caches", str(tiny_cache), "--encoders", "1d", "--augs-1d", "fade",
          config="config/clar.yaml")  # SC-10: data.classes = the ten digits; the tiny cache has class0..3
    run = yaml.safe_load((tmp_path / "runs" / "representation" / f"{tiny_cache.name}_1d" / "config.yaml").read_text())
    assert (run["data"]["train_split"], run["data"]["test_split"]) == ("train", "test")
    assert run["data"]["train_folds"] is None and run["data"]["classes"] is None
    df = pd.read_csv(tiny_cache / "manifest.csv", dtype=str, keep_default_na=False)
    df["split"] = ""
    df.to_csv(tiny_cache / "manifest.csv", index=False)
    study("representation", tiny_cache, tmp_path, "--caches", str(tiny_cache), "--encoders", "1d", "--augs-1d", "fade",
          "--force")
    run = yaml.safe_load((tmp_path / "runs" / "representation" / f"{tiny_cache.name}_1d" / "config.yaml").read_text())
    assert (run["data"]["train_folds"], run["data"]["test_folds"]) == ([1, 2, 3, 4], [5])
    assert run["data"]["train_split"] is None and run["data"]["classes"] is None
