"""evaluation.py (what linear_eval.py runs): the EVAR probe, early stopping, folds, low-shot subsets, results
rows, end to end."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import yaml

import evaluation
import models
import probe
from tests.conftest import write_tiny_cache


class FakeEncoder(nn.Module):
    """Stands in for models.build_encoder's encoders: time-mean log-mel or band energies of the wave -> linear."""

    def __init__(self, input_kind: str = "logmel", dim: int = 16):
        super().__init__()
        self.input_kind, self.embed_dim, self.calls = input_kind, dim, 0
        self.proj = nn.Linear(64 if input_kind == "logmel" else 32, dim)

    def embed(self, x: torch.Tensor, long: str = "chunk", pool: str = "cls") -> torch.Tensor:
        assert long in ("pad", "resize", "chunk") and pool in ("cls", "mean")
        self.calls += 1
        if self.input_kind == "logmel":
            assert x.ndim == 4 and x.shape[1:3] == (1, 64)
            features = x.mean(-1)[:, 0]
        else:
            assert x.ndim == 2
            spectrum = torch.fft.rfft(x).abs()[:, :8000]  # 1 Hz bins for 1 s clips
            features = torch.log1p(spectrum.reshape(len(x), 32, 250).mean(-1))
        return self.proj(features)


@pytest.fixture
def fake_models(monkeypatch):
    built = []

    def build(cfg):
        encoder = FakeEncoder(cfg["model"]["input"])
        built.append(encoder)
        return encoder

    monkeypatch.setattr(models, "build_encoder", build, raising=False)
    return built


def write_ckpt(path, input_kind="logmel", config_name="fake_msn"):
    torch.manual_seed(1)
    cfg = {"model": {"arch": "fake", "input": input_kind}, "_meta": {"config_name": config_name}}
    torch.save({"kind": "msn", "config": cfg, "encoder": FakeEncoder(input_kind).state_dict()}, path)
    return path


def blobs(n_per_class, n_classes=4, dim=8, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


# ---------------------------------------------------------------------------------------------- folds and subsets


def test_esc50_fold_logic_trains_on_four_folds_tests_on_fifth(tmp_path):
    cache = write_tiny_cache(tmp_path / "c", n_classes=3, per_class=20)
    cfg = evaluation.apply_overrides(evaluation.DEFAULTS, ["eval.protocol=folds"])
    task = evaluation.resolve_task(str(cache), cfg)
    assert task.protocol == "folds"
    folds = task.df["fold"].to_numpy()
    assert evaluation.holdout_folds(task, None) == [1, 2, 3, 4, 5]
    for holdout in range(1, 6):
        train, valid, test = evaluation.fold_indices(task, holdout, seed=0, valid_fraction=0.1)
        assert set(test) == set(np.flatnonzero(folds == holdout))
        assert set(train) | set(valid) == set(np.flatnonzero(folds != holdout))
        assert not set(train) & set(valid)
        assert len(valid) == math.ceil(0.1 * 48)
        assert set(task.df["label"].iloc[valid]) == set(task.df["label"])  # every class in validation


def test_protocol_auto_uses_folds_only_without_splits(tmp_path):
    cache = write_tiny_cache(tmp_path / "c")
    assert evaluation.resolve_task(str(cache), evaluation.DEFAULTS).protocol == "splits"
    df = pd.read_csv(cache / "manifest.csv")
    df["split"] = ""
    df.to_csv(cache / "manifest.csv", index=False)
    task = evaluation.resolve_task(str(cache), evaluation.DEFAULTS)
    assert task.protocol == "folds" and task.unit_seconds == 1.0  # the median duration
    with pytest.raises(ValueError, match="fold 7"):
        evaluation.holdout_folds(task, [7])


def test_named_task_selects_subset_and_unit(tmp_path):
    cache = write_tiny_cache(tmp_path / "c")
    df = pd.read_csv(cache / "manifest.csv")
    df["esc10"] = df["label"].isin(["class0", "class2"])
    df.to_csv(cache / "manifest.csv", index=False)
    task = evaluation.resolve_task("esc10", evaluation.DEFAULTS, cache=str(cache))
    assert task.labels.names == ["class0", "class2"] and task.unit_seconds == 5.0


def write_params(cache, dataset="esc50", sample_rate=16000, hop=160):
    params = {"dataset": dataset, "sample_rate": sample_rate, "logmel": {"hop_length": hop}}
    (cache / "preprocess.json").write_text(json.dumps({"params": params}))


def test_named_task_refuses_a_cache_of_another_dataset(tmp_path):
    cache = write_tiny_cache(tmp_path / "synth")
    write_params(cache, dataset="synthetic")
    with pytest.raises(ValueError, match="holds --dataset synthetic, but task nsynth needs nsynth"):
        evaluation.resolve_task("nsynth", evaluation.DEFAULTS, cache=str(cache))
    assert evaluation.resolve_task(str(cache), evaluation.DEFAULTS).name == "synth"  # the folder as TASK is accepted


def test_hop_and_sample_rate_come_from_preprocess_json(tmp_path, capsys, monkeypatch):
    cache = write_tiny_cache(tmp_path / "c")
    task = evaluation.resolve_task(str(cache), evaluation.DEFAULTS)
    assert (task.sample_rate, task.hop) == (16000, 160)
    assert "preprocess.json: not found; assuming 16000 Hz and log-mel hop 160" in capsys.readouterr().err
    write_params(cache, sample_rate=32000, hop=320)
    task = evaluation.resolve_task("esc50", evaluation.DEFAULTS, cache=str(cache))
    assert (task.sample_rate, task.hop, task.unit_seconds) == (32000, 320, 5.0)
    seen = []
    monkeypatch.setattr(evaluation.models, "embed_dataset", lambda enc, ds, *a, **k: seen.append(ds[0].shape) or
                        np.zeros((len(ds), 4), np.float32))
    cfg = evaluation.apply_overrides(evaluation.DEFAULTS, [f"eval.embed_dir={tmp_path / 'emb'}"])
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / ".esc50-m-0123.npy.tmp99999999.npy").write_bytes(b"half")  # a killed run's temp
    evaluation.task_embeddings(FakeEncoder(), {"ckpt_sha256": "x", "model": "m"}, task, cfg, "cpu")
    assert seen == [(1, 64, 1 + 5 * 32000 // 320)]  # 5 s at 32 kHz, hop 320: 501 frames
    assert [p.name[:6] for p in (tmp_path / "emb").iterdir()] == ["esc50-"]
    (cache / "preprocess.json").write_text("{")
    with pytest.raises(ValueError, match="preprocess.json: unreadable"):
        evaluation.resolve_task(str(cache), evaluation.DEFAULTS)


def test_task_label_column_from_the_registry(tmp_path):
    cache = write_tiny_cache(tmp_path / "nsynth")
    write_params(cache, dataset="nsynth")
    df = pd.read_csv(cache / "manifest.csv")
    df["pitch"] = [60 + i % 3 for i in range(len(df))]
    df.to_csv(cache / "manifest.csv", index=False)
    task = evaluation.resolve_task("nsynth_pitch", evaluation.DEFAULTS, cache=str(cache))
    assert task.labels.names == ["60", "61", "62"] and task.unit_seconds == 4.0
    assert evaluation.DEFAULTS["data"]["nsynth"] == "cache/nsynth"


def test_low_shot_is_stratified_and_reproducible():
    y = np.repeat(np.arange(5), 40)
    train, valid = np.arange(0, 200, 2), np.arange(1, 200, 2)
    a_train, a_valid = evaluation.low_shot(train, valid, y, None, 3, seed=0)
    assert np.bincount(y[a_train]).tolist() == [3] * 5 and np.bincount(y[a_valid]).tolist() == [3] * 5
    assert set(a_train) <= set(train) and set(a_valid) <= set(valid)
    b_train, _ = evaluation.low_shot(train, valid, y, None, 3, seed=0)
    c_train, _ = evaluation.low_shot(train, valid, y, None, 3, seed=1)
    np.testing.assert_array_equal(a_train, b_train)
    assert not np.array_equal(a_train, c_train)
    f_train, _ = evaluation.low_shot(train, valid, y, 0.1, None, seed=0)
    assert np.bincount(y[f_train]).tolist() == [2] * 5  # 10 % of 20 per class
    assert evaluation.low_shot(train, valid, y, None, None, 0)[0] is train

# ---------------------------------------------------------------------------------------------- inputs


def test_unit_clips_pad_with_silence_and_crop(tmp_path):
    cache = write_tiny_cache(tmp_path / "c", frames=120)
    df = pd.read_csv(cache / "manifest.csv", keep_default_na=False)
    raw = np.load(cache / df["logmel"][0])
    short = evaluation.UnitClips(cache, df, "logmel", unit_samples=160 * 149, random_crop=np.zeros(len(df), bool),
                         hop=160)
    x = short[0][0].numpy()  # [64, 150]
    np.testing.assert_allclose(x[:, :120], raw, atol=1e-5)
    np.testing.assert_allclose(x[:, 120:], evaluation.LOG_SILENCE, rtol=1e-6)
    crop = evaluation.UnitClips(cache, df, "logmel", unit_samples=160 * 49, random_crop=np.ones(len(df), bool),
                        mean=-6.0, std=2.0, hop=160)
    x1, x2 = crop[3][0].numpy(), crop[3][0].numpy()
    np.testing.assert_array_equal(x1, x2)  # the random crop is fixed per clip
    whole = (np.load(cache / df["logmel"][3]) + 6) / 2
    starts = [s for s in range(71) if np.allclose(x1, whole[:, s:s + 50], atol=1e-5)]
    assert len(starts) == 1


# ---------------------------------------------------------------------------------------------- end to end


def run_eval(tmp_path, ckpt, task, *overrides, **options):
    """evaluation.run with results and embeddings under tmp_path (what `linear_eval.py --results ...` does)."""
    cfg = evaluation.config([*overrides, f"eval.embed_dir={tmp_path / 'emb'}"])
    return evaluation.run(str(ckpt), str(task), cfg, results=str(tmp_path / "results.csv"), **options)


def test_end_to_end_checkpoint_on_tiny_cache(tmp_path, tiny_cache, fake_models, capsys):
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    row = run_eval(tmp_path, ckpt, tiny_cache, "probe.lr=0.01", "probe.epochs=60", seeds=[0, 1])
    assert float(row["mean"]) >= 90.0  # the tiny cache's classes are linearly separable in the time-mean
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == probe.RESULT_FIELDS and len(rows) == 1
    r = rows[0]
    assert (r["task"], r["model"], r["config"], r["seeds"], r["folds"]) == ("cache", "fake_msn", "fake_msn", "0 1",
                                                                            "test")
    assert r["ckpt_sha256"] == evaluation.file_sha256(ckpt) and len(r["ckpt_sha256"]) == 64
    accs = [float(a) for a in r["fold_acc"].split()]
    assert len(accs) == 2 and r["n"] == "2"
    assert float(r["mean"]) == pytest.approx(np.mean(accs), abs=0.01)
    assert float(r["ci95"]) == pytest.approx(evaluation.mean_ci95(accs)[1], abs=0.01)
    assert r["long"] == "chunk" and r["label_fraction"] == "" and r["commit"]
    # the second evaluation reuses the cached embeddings (no embed call) and appends a row
    run_eval(tmp_path, ckpt, tiny_cache, shots=1)
    assert fake_models[-1].calls == 0 and "(cached)" in capsys.readouterr().out
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[1]["shots"] == "1" and rows[1]["n_train"] == "4"


def test_end_to_end_random_baseline_folds_and_wave(tmp_path, fake_models):
    cache = write_tiny_cache(tmp_path / "c", n_classes=3, per_class=10)
    cfg_path = tmp_path / "tiny_clar.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"arch": "fake", "input": "wave"}}))
    row = run_eval(tmp_path, f"random:{cfg_path}", cache, "eval.protocol=folds", "probe.lr=0.01", "probe.epochs=60",
                   folds=[5])
    assert row["model"] == "tiny_clar-random" and row["folds"] == "5" and row["ckpt_sha256"].startswith("random-")
    assert float(row["mean"]) >= 90.0  # band energies separate the tones
    again = run_eval(tmp_path, f"random:{cfg_path}", cache, "eval.protocol=folds", "probe.lr=0.01", "probe.epochs=60",
                     folds=[5])
    assert again["fold_acc"] == row["fold_acc"]  # same seed, same weights, same result


def test_wave_encoder_without_waveforms_says_rerun_preprocess(tmp_path, tiny_cache, fake_models):
    df = pd.read_csv(tiny_cache / "manifest.csv")
    df["wave"] = ""
    df.to_csv(tiny_cache / "manifest.csv", index=False)
    with pytest.raises(ValueError, match="--waveform"):
        run_eval(tmp_path, str(write_ckpt(tmp_path / "w.pt", "wave")), str(tiny_cache))


def test_bad_inputs_give_clear_errors(tmp_path, tiny_cache, fake_models):
    with pytest.raises(ValueError, match="cross-validation"):
        run_eval(tmp_path, "x.pt", str(tiny_cache), folds=[5])
    with pytest.raises(FileNotFoundError, match="x.pt"):
        run_eval(tmp_path, "x.pt", str(tiny_cache))
    with pytest.raises(evaluation.ConfigError, match="probe.lr"):
        run_eval(tmp_path, "x.pt", str(tiny_cache), "probe.lrr=1")
    with pytest.raises(ValueError, match="unknown task"):
        run_eval(tmp_path, "x.pt", "esc51")
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        probe.append_result(tmp_path / "results.csv", {k: "" for k in probe.RESULT_FIELDS})


@pytest.mark.parametrize("config", ["config/demo_msn.yaml", "config/demo_clar.yaml"])
def test_end_to_end_random_real_encoder_on_tiny_cache(tmp_path, tiny_cache, config):
    row = run_eval(tmp_path, f"random:{Path(__file__).parents[1] / config}", tiny_cache, "probe.epochs=5",
                   "eval.long=resize", "eval.pool=mean")
    assert (row["long"], row["pool"]) == ("resize", "mean")
    assert row["model"] == f"{Path(config).stem}-random" and 0.0 <= float(row["mean"]) <= 100.0
    embeddings = list((tmp_path / "emb").glob("*.npy"))
    assert len(embeddings) == 1 and np.load(embeddings[0]).shape[0] == 24


def write_speechcommands(root: Path) -> Path:
    from tests.test_cache import write_wav
    for i, word in enumerate(["zero", "one", "yes", "up"]):
        for k in range(6):
            write_wav(root / word / f"{k:08x}_nohash_0.wav", seconds=1.0, freq=300.0 * (i + 1))
    words = ["zero", "one", "yes", "up"]
    (root / "validation_list.txt").write_text("\n".join(f"{w}/00000001_nohash_0.wav" for w in words))
    (root / "testing_list.txt").write_text("\n".join(f"{w}/00000002_nohash_0.wav" for w in words))
    return root


def write_gtzan(root: Path, split_dir: Path) -> Path:
    from tests.test_cache import write_wav
    split_dir.mkdir(parents=True)
    lists = {"train": range(0, 4), "valid": range(4, 6), "test": range(6, 8)}
    for i, genre in enumerate(["blues", "metal"]):
        for k in range(8):
            write_wav(root / "genres" / genre / f"{genre}.{k:05d}.wav", sr=22050, seconds=1.0, freq=200.0 * (i + 1))
    for split, ks in lists.items():
        (split_dir / f"{split}_filtered.txt").write_text(
            "\n".join(f"{g}/{g}.{k:05d}.wav" for g in ["blues", "metal"] for k in ks))
    return root


def write_nsynth(root: Path) -> Path:
    import json

    from tests.test_cache import write_wav
    for split, n in {"train": 4, "valid": 2, "test": 2}.items():
        examples = {}
        for i, family in enumerate(["bass", "flute"]):
            for k in range(n):
                note = f"{family}_acoustic_{k:03d}-0{60 + k}-100"
                write_wav(root / f"nsynth-{split}" / "audio" / f"{note}.wav", seconds=1.0, freq=220.0 * (i + 1))
                examples[note] = {"instrument_family_str": family, "instrument_source_str": "acoustic",
                                  "pitch": 60 + k}
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(examples))
    return root


def test_named_tasks_end_to_end_on_real_layouts(tmp_path):
    """preprocess.py on each real layout, then linear_eval.py --task <name> with a real (random) encoder."""
    from tests.test_cache import make_esc50, run
    demo_msn = str(Path(__file__).parents[1] / "config" / "demo_msn.yaml")
    esc = make_esc50(tmp_path / "ESC-50-master", n=15)
    sc = write_speechcommands(tmp_path / "speech_commands_v0.02")
    gtzan = write_gtzan(tmp_path / "gtzan", tmp_path / "GTZAN_split")
    for name, root, extra in [("esc50", esc, {}), ("speechcommands", sc, {}),
                              ("gtzan", gtzan, {"split_dir": tmp_path / "GTZAN_split"}),
                              ("nsynth", write_nsynth(tmp_path / "nsynth"), {})]:
        run(dataset=name, root=root, out=tmp_path / "cache" / name, **extra)
    expected = {"esc50": (15, 5), "esc10": (10, 5), "sc35": (24, 1), "sc10": (12, 1), "gtzan": (16, 1),
                "nsynth": (16, 1)}
    for task, (n_clips, n_folds) in expected.items():
        folder = {"esc10": "esc50", "sc10": "speechcommands", "sc35": "speechcommands"}.get(task, task)
        cache = tmp_path / "cache" / folder
        row = run_eval(tmp_path, f"random:{demo_msn}", task, "probe.epochs=3", cache=str(cache))
        assert row["task"] == task and len(row["fold_acc"].split()) == n_folds, task
        assert int(row["n"]) == n_folds, task
        (embeddings,) = (tmp_path / "emb").glob(f"{task}-*.npy")
        assert np.load(embeddings).shape[0] == n_clips, task
        assert float(row["unit_seconds"]) == {"esc50": 5, "esc10": 5, "sc35": 1, "sc10": 1, "gtzan": 30,
                                                 "nsynth": 4}[task]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["task"] for r in rows] == list(expected)


def test_normalisation_stats_are_over_unit_length_inputs_padding_included(tiny_cache):
    """EVAR computes the log-mel mean/std on the loader's unit-length clips (right-padded with silence)."""
    from audio import LOG_SILENCE
    df = pd.read_csv(tiny_cache / "manifest.csv", dtype=str, keep_default_na=False)
    # 2 s = 201 frames > 120
    clips = evaluation.UnitClips(tiny_cache, df, "logmel", 32000, np.zeros(len(df), bool), hop=160)
    mean, std = evaluation.unit_logmel_stats(clips, max_clips=10)
    padded = np.stack([np.pad(np.load(tiny_cache / p), ((0, 0), (0, 81)), constant_values=LOG_SILENCE)
                       for p in df.logmel[:10]])
    assert mean == pytest.approx(padded.mean(), rel=1e-6) and std == pytest.approx(padded.std(), rel=1e-6)


def test_scaler_fits_the_training_split_only_when_validation_is_official(monkeypatch):
    seen = []
    real = evaluation.fit_linear_probe

    def spy(*args, scaler_data=None, **kw):
        seen.append(len(scaler_data))
        return real(*args, scaler_data=scaler_data, **kw)

    monkeypatch.setattr(evaluation, "fit_linear_probe", spy)
    y = np.repeat(np.arange(2), 10)
    df = pd.DataFrame({"label": [f"c{i}" for i in y], "split": ["train"] * 12 + ["valid"] * 4 + ["test"] * 4,
                       "fold": pd.array([None] * 20, dtype="Int64")})
    df["split"] = (["train"] * 6 + ["valid"] * 2 + ["test"] * 2) * 2  # both classes in every split
    task = evaluation.Task("t", Path("."), df, "splits", 1.0, evaluation.LabelMap.from_labels(df.label), 16000, 160)
    X, _ = blobs(10, n_classes=2, dim=4)
    cfg = evaluation.apply_overrides(evaluation.DEFAULTS, ["probe.epochs=2"])
    evaluation.evaluate_embeddings(X, task, cfg, seeds=[0])
    assert seen == [12]


def test_probe_that_peaks_in_its_last_epochs_is_flagged_not_converged(tmp_path, tiny_cache, capsys):
    """probe.epochs=3 with lr 1e-9: the validation accuracy never changes and later ties win, so every probe's
    best epoch is its last (3 of 3), in the last 10 %."""
    assert evaluation.not_converged(181, 200) and not evaluation.not_converged(180, 200)
    assert evaluation.not_converged(3, 3)
    row = run_eval(tmp_path, f"random:{Path(__file__).parents[1] / 'config/demo_byola.yaml'}", tiny_cache,
                   "probe.epochs=3", "probe.lr=1e-9", "probe.patience=0")
    best = [int(e) for e in row["best_epochs"].split()]
    assert best == [3] * int(row["n"]) and row["not_converged"] == row["n"]
    assert "may not have converged" in capsys.readouterr().err


def test_a_clip_shorter_than_one_frame_is_cached_and_probed_and_a_nan_clip_is_named(tmp_path):
    """Issue 16: a 10-sample file (preprocess --min-seconds 0) gets a one-frame log-mel, and linear_eval.py embeds
    it with a real log-mel and a real wave encoder; a cache file holding NaN is a ValueError naming the clip."""
    import soundfile as sf

    from tests.test_cache import make_esc50, run
    root, cache = make_esc50(tmp_path / "esc", n=15), tmp_path / "cache"
    sf.write(root / "audio" / "1-1005-A-2.wav", np.full(10, 0.1, np.float32), 44100)
    run(dataset="esc50", root=root, out=cache, waveform=True, min_seconds=0.0)
    manifest = pd.read_csv(cache / "manifest.csv").set_index("id")
    assert manifest.loc["1-1005-A-2", "duration"] == pytest.approx(4 / 16000, abs=1e-4)  # ceil(10 * 16000 / 44100)
    assert np.load(cache / "logmel" / "1-1005-A-2.npy").shape == (64, 1)
    root_dir = Path(__file__).parents[1]
    for config in ("demo_msn", "demo_clar"):
        row = run_eval(tmp_path, f"random:{root_dir / 'config' / f'{config}.yaml'}", str(cache), "probe.epochs=5")
        assert 0.0 <= float(row["mean"]) <= 100.0
    embeddings = [np.load(path) for path in (tmp_path / "emb").glob("*.npy")]
    assert len(embeddings) == 2 and all(X.shape[0] == 15 and np.isfinite(X).all() for X in embeddings)
    np.save(cache / "logmel" / "1-1005-A-2.npy", np.full((64, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"non-finite embeddings on cache for 1 of 15 clips \(1-1005-A-2\)"):
        evaluation.run(f"random:{root_dir / 'config/demo_msn.yaml'}", str(cache),
                       evaluation.config([f"eval.embed_dir={tmp_path / 'emb2'}"]), results=str(tmp_path / "r.csv"))
