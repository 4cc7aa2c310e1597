"""trainer.py, the core every pretraining script runs on: config rules, run folder, checkpoints, faults."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

import config as config_lib
import data
import files
import pretrain_byola
import runlog
import trainer
from monitor import Monitor
from tests.conftest import ROOT
from tests.test_pretrain_byola import tiny


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return (torch.tensor([float(i)]),)


def toy_build(break_at: int | None = None, nan_loss_from: int | None = None):
    """A method of one Linear(1, 1) whose step at `break_at` writes NaN weights but reports a finite loss, and
    whose loss is NaN from step `nan_loss_from` on (finite but diverged weights: seen one step late)."""
    def build(cfg, env):
        net = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)

        def step(batch, step):
            loss = (net(batch[0]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == break_at:
                with torch.no_grad():
                    net.weight.fill_(float("nan"))
            diverged = nan_loss_from is not None and step >= nan_loss_from
            return {"loss": float("nan") if diverged else loss.item()}
        return trainer.Parts(dataset=Toy(), batches=data.EpochBatches(6, 2, cfg["seed"]), modules={"net": net},
                             optimizers={"sgd": opt}, encoder=net, step=step, log_keys=["loss"])
    return build


def toy_cfg(tmp_path, **train):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "toy.yaml"
    path.write_text("seed: 0\n")
    overrides = [f"train.out_dir={tmp_path / 'run'}", "optim.batch_size=2", "train.epochs=2", "data.num_workers=0",
                 "train.ckpt_seconds=0", *[f"train.{k}={v}" for k, v in train.items()]]
    return trainer.resolve_config(str(path), overrides, {})


def test_the_core_trains_logs_and_checkpoints_a_toy_method(tmp_path):
    result = trainer.train("toy", toy_cfg(tmp_path, log_every=1), toy_build())
    assert (result["epoch"], result["step"]) == (2, 6)
    ckpt = files.load_checkpoint(tmp_path / "run" / "ckpt_last.pt")
    assert tuple(ckpt) == trainer.CHECKPOINT_KEYS and ckpt["kind"] == "toy"
    assert ckpt["encoder"].keys() == ckpt["modules"]["net"].keys() and len(ckpt["per_process"]) == 1
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "results.json").is_file()


def test_the_run_folder_records_the_installed_versions(tmp_path):
    trainer.train("toy", toy_cfg(tmp_path), toy_build())  # what it holds and how a resume adds one: test_runlog.py
    assert (tmp_path / "run" / "environment.txt").read_text() == runlog.environment_installed()


def test_a_checkpoint_is_never_written_with_diverged_weights(tmp_path):
    """The last step of epoch 1 diverges; its loss was still finite, so only the weight check can catch it."""
    cfg = toy_cfg(tmp_path)
    with pytest.raises(trainer.NonFiniteLoss, match="weights are not finite after step 3.*net.weight"):
        trainer.train("toy", cfg, toy_build(break_at=2))
    assert not (tmp_path / "run" / "ckpt_last.pt").exists()
    # a diverged step in epoch 2 keeps epoch 1's good checkpoint
    with pytest.raises(trainer.NonFiniteLoss, match=r"last good: .*ckpt_last.pt"):
        trainer.train("toy", toy_cfg(tmp_path), toy_build(break_at=5))
    ckpt = files.load_checkpoint(tmp_path / "run" / "ckpt_last.pt")
    assert ckpt["step"] == 3 and torch.isfinite(ckpt["modules"]["net"]["weight"]).all()


def test_a_checkpoint_that_leads_straight_to_a_nan_loss_is_set_aside(tmp_path):
    """Regression (issue 9 fault injection: optim.lr=1e6 on the demo MSN, then --resume hit NaN at once): the
    epoch-2 checkpoint holds finite weights, but the first step after it has a NaN loss. It is moved to
    ckpt_diverged.pt and the epoch-1 checkpoint, which a finite step followed, is ckpt_last.pt again."""
    with pytest.raises(trainer.NonFiniteLoss, match=r"loss is nan at step 6.*moved to ckpt_diverged.pt.*ckpt_last.pt"):
        trainer.train("toy", toy_cfg(tmp_path, epochs=3), toy_build(nan_loss_from=6))
    run = tmp_path / "run"
    assert files.load_checkpoint(run / "ckpt_last.pt")["step"] == 3
    assert files.load_checkpoint(run / "ckpt_diverged.pt")["step"] == 6 and not (run / "ckpt_prev.pt").exists()
    # the only checkpoint is the suspect: nothing is left to resume from by mistake
    with pytest.raises(trainer.NonFiniteLoss, match="only checkpoint led straight to it.*no good checkpoint"):
        trainer.train("toy", toy_cfg(tmp_path / "b", epochs=3), toy_build(nan_loss_from=3))
    assert not (tmp_path / "b" / "run" / "ckpt_last.pt").exists()
    # a healthy run leaves ckpt_last.pt only
    trainer.train("toy", toy_cfg(tmp_path / "c", epochs=3), toy_build())
    assert sorted(p.name for p in (tmp_path / "c" / "run").glob("ckpt*")) == ["ckpt_last.pt"]


def test_ckpt_last_is_written_every_ckpt_seconds_and_at_the_end(tmp_path, monkeypatch):
    writes = []
    real = files.atomic_torch_save
    monkeypatch.setattr(files, "atomic_torch_save",
                        lambda obj, path, **kw: writes.append(obj["step"]) or real(obj, path, **kw))
    trainer.train("toy", toy_cfg(tmp_path / "a", epochs=4), toy_build())
    assert writes == [3, 6, 9, 12]  # ckpt_seconds=0: every epoch
    writes.clear()
    trainer.train("toy", toy_cfg(tmp_path / "b", epochs=4, ckpt_seconds=3600), toy_build())
    assert writes == [12]  # tiny epochs: only the end of the run
    writes.clear()
    trainer.train("toy", toy_cfg(tmp_path / "c", epochs=4, ckpt_seconds=3600, max_steps=5), toy_build())
    assert writes == [5]  # a max_steps stop is written


def test_out_dir_that_is_a_file_and_stale_temp_files(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file"):
        trainer.train("toy", toy_cfg(tmp_path), toy_build())
    (tmp_path / "run").unlink()
    (tmp_path / "run").mkdir()
    stale = tmp_path / "run" / ".ckpt_last.pt.tmp12345"
    stale.write_bytes(b"x" * 1000)  # left by a killed checkpoint write
    trainer.train("toy", toy_cfg(tmp_path), toy_build())
    assert not stale.exists()


def test_a_bad_cache_does_not_touch_an_existing_run_folder(tiny_cache, tmp_path):
    out = tmp_path / "run"
    pretrain_byola.main(tiny(tiny_cache, out, "train.max_steps=1"))
    before = (out / "config.yaml").read_text()
    with pytest.raises(FileNotFoundError, match="manifest"):  # even --overwrite deletes nothing before the data reads
        pretrain_byola.main(tiny(tmp_path / "no_cache", out, "train.max_steps=1") + ["--overwrite"])
    assert (out / "config.yaml").read_text() == before and files.load_checkpoint(out / "ckpt_last.pt")["step"] == 1


def test_a_full_disk_during_a_checkpoint_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    """torch.save on a full disk says only "unexpected pos"; the error says what happened and where."""
    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"ckpt_last.pt: could not be written \(no space left on device: .*unexpected "
                                      r"pos.*GiB free on the disk"):
        files.atomic_torch_save({"a": 1}, tmp_path / "ckpt_last.pt")
    assert list(tmp_path.iterdir()) == []


def test_command_line_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    done = subprocess.run([sys.executable, "pretrain_byola.py", "--config", "config/demo_byola.yaml",
                           f"train.out_dir={tmp_path / 'file'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    expected = f"pretrain_byola.py: error: train.out_dir {tmp_path / 'file'}: is a file, not a folder"
    assert done.stderr.strip() == expected
    done = subprocess.run([sys.executable, "pretrain_msn.py", "--config", "config/demo_msn.yaml", "optim.epochs=3"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "'optim.epochs' moved to 'train.epochs'" in done.stderr


def test_shared_keys_mean_the_same_in_every_method():
    import pretrain_clar
    import pretrain_msn
    for module, config in ((pretrain_msn, "config/demo_msn.yaml"), (pretrain_clar, "config/demo_clar.yaml"),
                           (pretrain_byola, "config/demo_byola.yaml")):
        cfg = module.resolve_config(config, ["train.max_steps=7", "seed=3", "optim.batch_size=4"])
        assert (cfg["seed"], cfg["optim"]["batch_size"], cfg["train"]["max_steps"]) == (3, 4, 7)
        for key in ("data.cache", "optim.lr", "train.epochs", "train.device", "train.out_dir", "train.amp",
                    "train.compile"):
            section, name = key.split(".")
            assert name in cfg[section], (config, key)
        with pytest.raises(config_lib.ConfigError, match="moved to the top level"):
            module.resolve_config(config, ["train.seed=1"])


def test_knn_monitor_logs_the_starting_point_and_every_epoch(tiny_cache, tmp_path):
    result = pretrain_byola.main(tiny(tiny_cache, tmp_path / "run", f"train.monitor.cache={tiny_cache}",
                                      "train.monitor.every=1", "train.monitor.k=5"))
    with open(tmp_path / "run" / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["knn_acc"]]
    assert [(r["step"], r["epoch"]) for r in rows] == [("0", "0"), ("3", "1"), ("6", "2")]
    assert all(0 <= float(r["knn_acc"]) <= 1 for r in rows)
    assert result["monitor_knn_acc"] == pytest.approx(float(rows[-1]["knn_acc"]), abs=1e-5)
    assert 0 < result["monitor_seconds"]
    # the monitor never changes what training does: same weights with and without it
    plain = pretrain_byola.main(tiny(tiny_cache, tmp_path / "plain"))
    a = files.load_checkpoint(tmp_path / "run" / "ckpt_last.pt")["modules"]["online"]
    b = files.load_checkpoint(tmp_path / "plain" / "ckpt_last.pt")["modules"]["online"]
    assert plain["step"] == 6 and all(torch.equal(a[k], b[k]) for k in a)


def test_knn_monitor_equals_a_hand_computation_on_the_encoders_embeddings(tiny_cache):
    """Monitor(encoder) == probe.knn_accuracy on embeddings computed by hand: the tiny cache has splits, so the
    train split against the test split, whole clips normalised by the train split's scalar mean/std."""
    import models
    import probe
    cfg = pretrain_byola.resolve_config("config/demo_byola.yaml", ["model.dim=256", "model.base=4",
                                                                   "model.mlp_hidden=32"])
    torch.manual_seed(0)
    encoder = models.build_encoder(cfg).eval()
    monitor = Monitor({"cache": str(tiny_cache), "every": 1, "k": 3, "temperature": 0.07}, "logmel",
                              torch.device("cpu"))
    df = data.read_manifest(tiny_cache)
    mean, std = data.logmel_stats(tiny_cache, df[df["split"] == "train"], max_clips=1000)

    def embed(split):
        rows = df[df["split"] == split]
        x = torch.stack([torch.from_numpy(np.load(tiny_cache / p)) for p in rows["logmel"]])[:, None]
        return encoder.embed((x - mean) / std), torch.tensor(monitor.labels.encode(rows["label"]))
    expected = probe.knn_accuracy(*embed("train"), *embed("test"), 4, k=3, temperature=0.07)
    assert monitor(encoder) == pytest.approx(expected)
    assert encoder.training  # left in train mode


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml")))
def test_every_config_file_resolves_with_its_method(path):
    import pretrain_clar
    import pretrain_m2d
    import pretrain_msn
    method = pretrain_clar if "clar" in path else pretrain_byola if "byola" in path else \
        pretrain_m2d if "m2d" in path else pretrain_msn
    cfg = method.resolve_config(path, [])
    assert cfg["_meta"]["config_name"] == path.split("/")[-1][:-5] and cfg["train"]["epochs"] >= 1
