"""clar_studies.py: each of the paper's three studies runs end to end at tiny scale and writes its table."""
from __future__ import annotations

import pandas as pd

import clar_studies

TINY = ["model.width=4", "model.clip_seconds=0.25", "model.proj_hidden=16", "model.proj_dim=8",
        "optim.batch_size=10", "train.epochs=1", "data.num_workers=0"]


def study(name, tiny_cache, tmp_path, *options):
    return clar_studies.main([name, "--config", "config/demo_clar.yaml", "--runs", str(tmp_path / "runs"),
                              "--out", str(tmp_path / "results"), *options, f"data.cache={tiny_cache}", *TINY])


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
    """A split cache keeps the SC-10 subset only if it has the digits; a fold-only cache uses folds 1-4 / 5."""
    from clar_studies import data_overrides
    keys = data_overrides(str(tiny_cache), "config/clar.yaml")  # tiny cache: splits, labels class0..3
    assert "data.train_split=train" in keys and "data.classes=null" in keys
    df = pd.read_csv(tiny_cache / "manifest.csv")
    df["split"] = ""
    df.to_csv(tiny_cache / "manifest.csv", index=False)
    keys = data_overrides(str(tiny_cache), "config/demo_clar.yaml")
    assert "data.train_folds=[1, 2, 3, 4]" in keys and "data.test_folds=[5]" in keys
    assert not any(k.startswith("data.classes") for k in keys)  # the demo config has no class subset
