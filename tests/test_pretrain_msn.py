"""pretrain_msn.py end to end on the tiny cache: exact resume, loss goes down, full ViT-B/32 step, errors."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import augment
import config as config_lib
import losses
import models
import pretrain_msn
import trainer
from tests.conftest import model_cfg

DEMO = "config/demo_msn.yaml"


def tiny(cache, out, *extra):
    """Overrides for a seconds-long run: 24 clips, batch 8 -> 3 steps per epoch."""
    return ["--config", DEMO, f"data.cache={cache}", f"train.out_dir={out}", "model.crop_frames=32",
            "model.patch=[16,8]", "model.width=16", "model.depth=1", "model.heads=2", "msn.num_prototypes=8",
            "msn.hidden_dim=32", "msn.output_dim=16", "msn.focal_views=2", "aug.rand_size=[64,32]",
            "aug.focal_size=[64,16]", "aug.running_norm_epoch_samples=2", "aug.mixup_memory=16",
            "optim.batch_size=8", "train.epochs=2", "optim.warmup_epochs=1", "train.log_every=1", *extra]


def read_log(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("clips_per_s", "seconds")} for row in csv.DictReader(f)]


def test_pretrain_msn_resume_is_exact(tiny_cache, tmp_path):
    straight = pretrain_msn.main(tiny(tiny_cache, tmp_path / "a"))
    assert straight["step"] == 6
    pretrain_msn.main(tiny(tiny_cache, tmp_path / "b", "train.max_steps=3"))
    first = torch.load(tmp_path / "b" / "ckpt_last.pt", weights_only=False)
    assert (first["epoch"], first["step"]) == (1, 3)
    pretrain_msn.main(tiny(tiny_cache, tmp_path / "b") + ["--resume"])
    a = torch.load(tmp_path / "a" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt_last.pt", weights_only=False)
    assert (b["epoch"], b["step"]) == (2, 6)
    for part in ("online", "target", "prototypes"):
        for key in a["modules"][part]:
            assert torch.equal(a["modules"][part][key], b["modules"][part][key]), f"{part}.{key} differs after resume"
    for key in a["encoder"]:
        assert torch.equal(a["encoder"][key], b["encoder"][key])
    assert a["per_process"][0]["rng"]["torch"].equal(b["per_process"][0]["rng"]["torch"])
    views_a, views_b = a["per_process"][0]["state"]["views"], b["per_process"][0]["state"]["views"]
    assert torch.equal(views_a["mixup"]["memory"], views_b["mixup"]["memory"])
    assert views_a["norm"] == views_b["norm"] and views_a["norm"]["n"] == 20  # frozen after epoch_samples 2 x 10
    assert read_log(tmp_path / "a" / "log.csv") == read_log(tmp_path / "b" / "log.csv")
    # the checkpoint rebuilds the evaluation encoder (the EMA target) from its own config
    encoder = models.build_encoder(a["config"])
    encoder.load_state_dict(a["encoder"])
    assert encoder.eval().embed(torch.randn(2, 1, 64, 50)).shape == (2, 16)
    assert (tmp_path / "a" / "ckpt_epoch002.pt").is_file() and (tmp_path / "a" / "config.yaml").is_file()


def test_pretrain_msn_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    cfg = model_cfg({"arch": "vit_audio", "crop_frames": 32, "patch": [16, 8], "width": 32, "depth": 1, "heads": 2})
    online = models.MSNNet(models.build_vit(cfg), models.MSNHead(32, 64, 16))
    target = models.MSNNet(models.build_vit(cfg), models.MSNHead(32, 64, 16))
    target.load_state_dict(online.state_dict())
    prototypes = torch.nn.Parameter(torch.empty(8, 16).uniform_(-0.25, 0.25))
    optimizer = torch.optim.AdamW(list(online.parameters()) + [prototypes], lr=3e-3)
    logmel = torch.randn(8, 1, 64, 32) + torch.linspace(-2, 2, 8).view(8, 1, 1, 1)
    anchor, focal = logmel + 0.1 * torch.randn_like(logmel), logmel[..., :16].repeat(2, 1, 1, 1)
    history = []
    for _ in range(40):
        out = losses.msn_loss(online(anchor, focal, 0.15), target(logmel).detach(), prototypes)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        models.ema_update(target, online, 0.9)
        history.append(out["loss"].item())
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.1, history


def test_pretrain_msn_seed_config_runs_one_step_of_full_vit_b32(tiny_cache, tmp_path):
    result = pretrain_msn.main(["--config", "config/msn.yaml", f"data.cache={tiny_cache}", "data.num_workers=0",
                                f"train.out_dir={tmp_path}", "train.max_steps=1", "optim.batch_size=2"])
    assert result["step"] == 1 and np.isfinite(result["history"][0]["loss"])
    ckpt = torch.load(tmp_path / "ckpt_last.pt", weights_only=False)
    assert ckpt["kind"] == "msn" and ckpt["modules"]["prototypes"]["weight"].shape == (1024, 256)
    assert ckpt["config"]["model"]["arch"] == "vit_b_32"
    assert ckpt["config"]["optim"]["milestones"] == [100, 200, 300, 400]
    assert ckpt["modules"]["online"]["encoder.vit.encoder.pos_embedding"].shape == (1, 50, 768)
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == ["1"]  # the max_steps stop is logged


def test_pretrain_msn_non_finite_loss_names_the_step(tiny_cache, tmp_path):
    for path in (tiny_cache / "logmel").glob("*.npy"):
        np.save(path, np.full((64, 120), np.nan, dtype=np.float32))
    with pytest.raises(trainer.NonFiniteLoss, match="at step 0.*none written yet"):
        pretrain_msn.main(tiny(tiny_cache, tmp_path / "nan"))


def test_pretrain_msn_rejects_unknown_keys_and_bad_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(config_lib.ConfigError, match="optim.lrr"):
        pretrain_msn.resolve_config(str(bad), [])
    with pytest.raises(config_lib.ConfigError, match="optim.lrate"):
        pretrain_msn.resolve_config(DEMO, ["optim.lrate=1"])
    with pytest.raises(config_lib.ConfigError, match="optim.schedule"):
        pretrain_msn.resolve_config(DEMO, ["optim.schedule=linear"])
    cfg = pretrain_msn.resolve_config("config/msn_audio_vit.yaml", [])
    assert cfg["model"]["arch"] == "vit_audio" and cfg["msn"]["focal_views"] == 10


def test_pretrain_msn_views_for_each_crop_and_norm_option():
    logmel = torch.randn(3, 1, 64, 48) * 2 + 5
    for crop, norm, batch_norm in (("torchvision", "running", False), ("byola", "precomputed", True),
                                   ("torchvision", "none", True)):
        cfg = pretrain_msn.resolve_config(DEMO, [f"aug.crop={crop}", f"aug.norm={norm}",
                                                 f"aug.normalize_batch={str(batch_norm).lower()}"])
        views = augment.MSNViews(cfg["aug"], focal_views=2, stats=(5.0, 2.0))
        target, anchor, focal = views(logmel)
        assert target.shape == anchor.shape == (3, 1, 64, 64) and focal.shape == (6, 1, 64, 32)
        assert not torch.equal(target, anchor)  # independent draws
        if batch_norm:
            assert abs(focal.mean().item()) < 1e-5 and abs(focal.std().item() - 1) < 1e-4
