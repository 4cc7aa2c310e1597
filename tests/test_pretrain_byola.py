"""pretrain_byola.py end to end on the tiny cache: exact resume, the loss falls, linear_eval reads the checkpoint."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import augment
import config as config_lib
import linear_eval
import losses
import models
import pretrain_byola

DEMO = "config/demo_byola.yaml"


def tiny(cache, out, *extra):
    """Overrides for a seconds-long run: 24 clips, batch 8 -> 3 steps per epoch."""
    return ["--config", DEMO, f"data.cache={cache}", f"train.out_dir={out}", "model.crop_frames=32", "model.dim=256",
            "model.base=4", "model.mlp_hidden=32", "byol.proj_hidden=32", "byol.proj_dim=16", "aug.mixup_memory=16",
            "optim.batch_size=8", "train.epochs=2", "train.log_every=1", *extra]


def read_log(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("clips_per_s", "seconds")} for row in csv.DictReader(f)]


def test_pretrain_byola_resume_is_exact_and_linear_eval_reads_the_checkpoint(tiny_cache, tmp_path):
    straight = pretrain_byola.main(tiny(tiny_cache, tmp_path / "a"))
    assert straight["step"] == 6 and [r["step"] for r in read_log(tmp_path / "a" / "log.csv")] == list("123456")
    first = pretrain_byola.main(tiny(tiny_cache, tmp_path / "b", "train.max_steps=4"))
    assert (first["epoch"], first["step"]) == (1, 4)  # stopped mid-epoch
    pretrain_byola.main(tiny(tiny_cache, tmp_path / "b") + ["--resume"])
    a = torch.load(tmp_path / "a" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt_last.pt", weights_only=False)
    assert (b["epoch"], b["step"]) == (2, 6) and b["kind"] == "byola"
    for part in ("online", "target"):
        for key, value in a["modules"][part].items():
            assert torch.equal(value, b["modules"][part][key]), f"{part}.{key} differs after resume"
    memory_a = a["per_process"][0]["state"]["views"]["mixup"]["memory"]
    assert torch.equal(memory_a, b["per_process"][0]["state"]["views"]["mixup"]["memory"])
    assert read_log(tmp_path / "a" / "log.csv") == read_log(tmp_path / "b" / "log.csv")
    assert set(a["encoder"]) == {k[len("encoder."):] for k in a["modules"]["online"] if k.startswith("encoder.")}
    # linear_eval.py --ckpt with no other flag, and the random-init twin from the same config
    row = linear_eval.main(["--ckpt", str(tmp_path / "a" / "ckpt_last.pt"), "--task", str(tiny_cache), "--results",
                            str(tmp_path / "r.csv"), f"eval.embed_dir={tmp_path / 'emb'}", "probe.epochs=5"])
    twin = linear_eval.main(["--ckpt", f"random:{tmp_path / 'a' / 'config.yaml'}", "--task", str(tiny_cache),
                             "--results", str(tmp_path / "r.csv"), f"eval.embed_dir={tmp_path / 'emb'}",
                             "probe.epochs=5"])
    assert 0 <= float(row["mean"]) <= 100 and twin["model"].endswith("-random")
    assert row["ckpt_sha256"] != twin["ckpt_sha256"]


def test_byol_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    online = models.BYOLNet(models.AudioNTT2022(dim=256, base=4, mlp_hidden=32, dropout=0.0), 32, 16)
    target = online.target_copy()
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-3)
    logmel = torch.randn(8, 1, 64, 32) + torch.linspace(-2, 2, 8).view(8, 1, 1, 1)
    view1, view2 = logmel + 0.3 * torch.randn_like(logmel), logmel + 0.3 * torch.randn_like(logmel)
    history = []
    for _ in range(30):
        p1, p2 = online(torch.cat([view1, view2])).chunk(2)
        with torch.no_grad():
            z1, z2 = target(torch.cat([view1, view2])).chunk(2)
        loss = losses.byol_loss(p1, p2, z1, z2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        models.ema_update(target, online, 0.99)
        history.append(loss.item())
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.3, history


def test_byola_views_are_the_input_size_and_normalised_over_both():
    cfg = pretrain_byola.resolve_config(DEMO, [])
    views = augment.BYOLAViews(cfg["aug"], (64, 48), stats=(-5.0, 2.0), seed=1)
    logmel = torch.randn(6, 1, 64, 48) * 2 - 5
    view1, view2 = views(logmel, step=3)
    assert view1.shape == view2.shape == (6, 1, 64, 48) and not torch.allclose(view1, view2)
    both = torch.cat([view1, view2])
    assert abs(both.mean().item()) < 1e-5 and abs(both.std().item() - 1) < 1e-4  # NormalizeBatch over 2B
    again = augment.BYOLAViews(cfg["aug"], (64, 48), stats=(-5.0, 2.0), seed=1)(logmel, step=3)
    torch.testing.assert_close(again[0], view1)  # keyed by (seed, step, view)


def test_byola_config_is_the_papers_and_bad_values_are_refused(tmp_path):
    cfg = pretrain_byola.resolve_config("config/byola.yaml", [])
    assert (cfg["optim"]["lr"], cfg["optim"]["batch_size"], cfg["train"]["epochs"]) == (1e-4, 256, 100)
    assert (cfg["byol"]["proj_hidden"], cfg["byol"]["proj_dim"], cfg["byol"]["ema_decay"]) == (4096, 256, 0.99)
    assert cfg["model"]["crop_frames"] == 96 and cfg["aug"]["mixup_ratio"] == 0.2 and cfg["data"]["norm_clips"] == 10000
    encoder = models.build_encoder(cfg)
    assert encoder.embed_dim == 3072
    with pytest.raises(config_lib.ConfigError, match="aug.norm"):
        pretrain_byola.resolve_config(DEMO, ["aug.norm=batch"])
    with pytest.raises(config_lib.ConfigError, match="byol.ema_decai"):
        pretrain_byola.resolve_config(DEMO, ["byol.ema_decai=0.9"])


def _byola_step(joint_views: bool):
    """The package's train_step on fixed views with a tiny online net whose target differs from it; returns
    (loss, online net after the step (grads kept), target after the step, the nets and views before)."""
    import copy

    import trainer

    cfg = pretrain_byola.resolve_config(DEMO, [f"byol.joint_views={str(joint_views).lower()}"])
    torch.manual_seed(0)
    online = models.BYOLNet(models.AudioNTT2022(dim=256, base=4, mlp_hidden=32, dropout=0.0), 32, 16,
                            joint_views=joint_views)
    target = online.target_copy()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = (copy.deepcopy(online), copy.deepcopy(target))
    view1 = torch.randn(6, 1, 64, 32)
    view2 = 0.5 * view1 + torch.randn(6, 1, 64, 32) + 1.0  # a view with other batch statistics
    run = pretrain_byola.BYOLA(trainer.Env(cfg, 0, 1, torch.device("cpu")), lambda *_: (view1, view2), online,
                               target, online, target, torch.optim.Adam(online.parameters(), lr=1e-3))
    loss = pretrain_byola.train_step(run, (torch.zeros(6, 1, 64, 32),), 0)["loss"]
    return loss, online, target, before, (view1, view2)


def test_byola_step_runs_each_view_on_its_own_as_byol_pytorch():
    """byol-pytorch BYOL.forward (as byol-a pins it): online_encoder(image_one), online_encoder(image_two), the
    target likewise, loss = mean(loss_fn(pred_one, target_two) + loss_fn(pred_two, target_one)); the EMA update of
    the target parameters after the optimizer step. Written here by hand, one view per call."""
    import torch.nn.functional as F

    loss, online, target, (ref, ref_target), (view1, view2) = _byola_step(joint_views=False)
    preds = [ref.predictor(ref.projector(ref.encoder(v))) for v in (view1, view2)]
    with torch.no_grad():
        projs = [ref_target.projector(ref_target.encoder(v)) for v in (view1, view2)]
    ref_loss = ((2 - 2 * F.cosine_similarity(preds[0], projs[1], dim=-1))
                + (2 - 2 * F.cosine_similarity(preds[1], projs[0], dim=-1))).mean()
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), abs=1e-6)
    ref_params = dict(ref.named_parameters())
    for name, p in online.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-5, atol=1e-7, msg=name)
    online_after = dict(online.named_parameters())
    for name, p in ref_target.named_parameters():  # EMA of the target with the updated online weights
        torch.testing.assert_close(dict(target.named_parameters())[name], 0.99 * p + 0.01 * online_after[name])
    joint_loss = _byola_step(joint_views=True)[0]  # batch norm over both views: another loss
    assert abs(joint_loss - loss) > 1e-4
