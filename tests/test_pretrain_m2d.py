"""pretrain_m2d.py: the masking, what the target sees, the loss and the EMA schedule against hand computations;
the frame-stacking embedding; exact resume; training lowers the loss; linear_eval and the HEAR module read it."""
from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch

import config as config_lib
import evaluation
import hear_ssl
import models
import pretrain_m2d as m2d

DEMO = "config/demo_m2d.yaml"


def tiny_net(seed: int = 0, crop: int = 32) -> tuple[m2d.M2DNet, torch.nn.Module]:
    """A 1-block ViT (width 16) on 4 x 4 patches of 16 x 8 and a 1-block predictor, with its target trunk."""
    torch.manual_seed(seed)
    encoder = models.AudioViT(n_mels=64, crop_frames=crop, patch=(16, 8), width=16, depth=1, heads=2, mlp_ratio=2.0,
                              readout="stack")
    net = m2d.M2DNet(encoder, m2d.Predictor(16, encoder.train_grid, 8, 1, 2, 2.0))
    target = torch.nn.Module()
    target.blocks, target.norm = copy.deepcopy(encoder.blocks), copy.deepcopy(encoder.norm)
    return net, target.requires_grad_(False)


def test_masks_are_disjoint_cover_the_grid_and_differ_per_clip():
    torch.manual_seed(0)
    visible, masked = m2d.random_masks(6, 24, 0.7)
    assert visible.shape == (6, 7) and masked.shape == (6, 17)  # int(24 * 0.3) = 7 visible
    for v, m in zip(visible, masked):
        assert set(v.tolist()).isdisjoint(m.tolist())
        assert sorted(v.tolist() + m.tolist()) == list(range(24))
    assert len({tuple(sorted(v.tolist())) for v in visible}) == 6  # each clip its own draw
    torch.manual_seed(0)
    again = m2d.random_masks(6, 24, 0.7)
    assert torch.equal(again[0], visible) and torch.equal(again[1], masked)  # keyed by the RNG state


def test_processes_mask_what_one_process_would_on_the_global_batch():
    """Under torchrun process r holds positions r, r + world, ... of the global batch (trainer.py seeds every
    process alike): its masks are those rows of the one-process draw, never a copy of process 0's."""
    torch.manual_seed(5)
    whole = m2d.random_masks(8, 24, 0.7)
    parts = []
    for rank in range(2):
        torch.manual_seed(5)
        parts.append(m2d.random_masks(4, 24, 0.7, rank=rank, world=2))
    for rank, (visible, masked) in enumerate(parts):
        assert torch.equal(visible, whole[0][rank::2]) and torch.equal(masked, whole[1][rank::2])
    assert not torch.equal(parts[0][0], parts[1][0])


def test_the_target_sees_only_the_masked_patches():
    net, target = tiny_net()
    x = torch.randn(2, 1, 64, 32)
    torch.manual_seed(3)
    visible, masked = m2d.random_masks(2, 16, 0.7)
    torch.manual_seed(3)
    pred, goal = net(x, 0.7, target)
    assert pred.shape == goal.shape == (2, 12, 16)  # 16 patches, 4 visible, 12 masked

    def patch_pixels(index: int):  # grid 4 x 4 (frequency-major), patches 16 x 8
        f, t = divmod(index, 4)
        return slice(16 * f, 16 * f + 16), slice(8 * t, 8 * t + 8)

    moved = x.clone()
    for clip in range(2):
        rows, cols = patch_pixels(int(visible[clip, 0]))
        moved[clip, 0, rows, cols] += 5.0
    torch.manual_seed(3)
    pred2, goal2 = net(moved, 0.7, target)
    assert torch.equal(goal2, goal)  # a visible patch changed: the target's outputs did not
    assert not torch.allclose(pred2, pred)  # but the online side saw it
    moved = x.clone()
    rows, cols = patch_pixels(int(masked[0, 0]))
    moved[0, 0, rows, cols] += 5.0
    torch.manual_seed(3)
    _, goal3 = net(moved, 0.7, target)
    assert not torch.allclose(goal3[0], goal[0]) and torch.equal(goal3[1], goal[1])
    # the target's tokens are exactly its trunk on the masked patches' embeddings (with the CLS, dropped after)
    tokens = net.encoder.patchify(x)[0] + net.encoder.pos_embed[:, 1:]
    torch.testing.assert_close(goal, net.encode(m2d.take(tokens, masked), target)[:, 1:])


def test_loss_on_known_inputs():
    target = torch.tensor([[1.0, 2.0, 3.0]] * 3)  # standardised per token: [-1, 0, 1] / sqrt(1 + 1e-6)
    pred = torch.tensor([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # cos 1, -1, 0 -> 0, 4, 2
    assert m2d.m2d_loss(pred, target).item() == pytest.approx(2.0, abs=1e-6)
    # without standardisation: cos([1,2,3], [1,2,3]) = 1, cos([3,0,-1], [1,2,3]) = 0
    raw = m2d.m2d_loss(torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]]), target[:2], norm_target=False)
    assert raw.item() == pytest.approx(1.0, abs=1e-6)  # mean of 0 and 2
    # batched [B, N, D] is the mean over every token
    b = m2d.m2d_loss(pred.view(1, 3, 3), target.view(1, 3, 3))
    assert b.item() == pytest.approx(2.0, abs=1e-6)


def test_ema_schedule_is_linear_from_start_to_final_at_the_last_step():
    assert m2d.ema_decay(0, 1000, 0.99995, 0.99999) == 0.99995
    assert m2d.ema_decay(999, 1000, 0.99995, 0.99999) == pytest.approx(0.99999, abs=1e-12)
    assert m2d.ema_decay(333, 1000, 0.99995, 0.99999) == pytest.approx(0.99995 + 0.00004 * 333 / 999, abs=1e-12)


def test_stack_readout_concatenates_frequency_patches_per_frame_then_averages_over_time():
    net, _ = tiny_net()
    encoder = net.encoder.eval()
    assert encoder.embed_dim == 4 * 16  # 4 frequency rows x width 16
    x = torch.randn(3, 1, 64, 32)
    tokens = encoder.tokens(x)  # [3, 1 + 16, 16], patches frequency-major
    frames = [torch.cat([tokens[:, 1 + f * 4 + t] for f in range(4)], dim=-1) for t in range(4)]
    torch.testing.assert_close(encoder.embed(x), torch.stack(frames, 1).mean(1))
    # a clip twice the crop: two chunks, the mean of the two chunks' embeddings
    long = torch.randn(3, 1, 64, 64)
    chunks = (encoder.embed(long[..., :32]) + encoder.embed(long[..., 32:])) / 2
    torch.testing.assert_close(encoder.embed(long), chunks)


def test_training_steps_on_a_fixed_batch_lower_the_loss():
    net, target = tiny_net(crop=32)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.9, 0.95))
    x = torch.randn(16, 1, 64, 32) * 0.5
    x[:, :, :16] += torch.linspace(-2, 2, 16).view(16, 1, 1, 1)  # clip-dependent low band
    history = []
    for step in range(60):
        torch.manual_seed(step)
        pred, goal = net(x, 0.7, target)
        loss = m2d.m2d_loss(pred, goal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        models.ema_update(target, net.encoder, 0.99)
        history.append(loss.item())
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.3, history


def tiny(cache, out, *extra):
    """Overrides for a seconds-long run: 24 clips, batch 8 -> 3 steps per epoch."""
    return ["--config", DEMO, f"data.cache={cache}", f"train.out_dir={out}", "model.crop_frames=32",
            "model.width=16", "model.depth=1", "model.heads=2", "m2d.pred_width=8", "m2d.pred_depth=1",
            "m2d.pred_heads=2", "optim.batch_size=8", "train.epochs=2", "train.log_every=1", *extra]


def read_log(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in ("clips_per_s", "seconds")} for row in csv.DictReader(f)]


def test_resume_is_exact_and_the_checkpoint_is_evaluated_like_any_other(tiny_cache, tmp_path):
    straight = m2d.main(tiny(tiny_cache, tmp_path / "a"))
    assert straight["step"] == 6
    m2d.main(tiny(tiny_cache, tmp_path / "b", "train.max_steps=4"))  # stops mid-epoch
    m2d.main(tiny(tiny_cache, tmp_path / "b") + ["--resume"])
    a = torch.load(tmp_path / "a" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt_last.pt", weights_only=False)
    assert (b["kind"], b["epoch"], b["step"]) == ("m2d", 2, 6)
    for part in ("online", "target"):
        assert a["modules"][part].keys() == b["modules"][part].keys()
        for key, value in a["modules"][part].items():
            assert torch.equal(value, b["modules"][part][key]), f"{part}.{key} differs after resume"
    state_a, state_b = a["optimizers"]["adamw"]["state"], b["optimizers"]["adamw"]["state"]
    assert state_a.keys() == state_b.keys()
    for i in state_a:
        for key in state_a[i]:
            assert torch.equal(state_a[i][key], state_b[i][key]), f"optimizer state {i}.{key} differs"
    log = read_log(tmp_path / "a" / "log.csv")
    assert log == read_log(tmp_path / "b" / "log.csv")
    # the logged decay is the schedule at each step (0.99 -> 0.999 over the run's 6 steps)
    assert [float(r["ema"]) for r in log] == pytest.approx([m2d.ema_decay(s, 6, 0.99, 0.999) for s in range(6)])
    # the target is the EMA of the online encoder's blocks and norm only
    assert set(a["modules"]["target"]) == {k for k in a["encoder"] if k.startswith(("blocks.", "norm."))}
    assert a["meta"]["norm_stats"] is not None and a["config"]["model"]["readout"] == "stack"
    ckpt = str(tmp_path / "a" / "ckpt_last.pt")
    cfg = evaluation.config([f"eval.embed_dir={tmp_path / 'emb'}", "probe.epochs=5"])
    row = evaluation.run(ckpt, str(tiny_cache), cfg, results=str(tmp_path / "r.csv"))
    twin = evaluation.run(f"random:{tmp_path / 'a' / 'config.yaml'}", str(tiny_cache), cfg,
                          results=str(tmp_path / "r.csv"))
    assert 0 <= float(row["mean"]) <= 100 and twin["model"].endswith("-random")
    model = hear_ssl.load_model(ckpt)  # the HEAR module, through the portable layout
    assert model.scene_embedding_size == 4 * 16 and model.frontend.mean == pytest.approx(a["meta"]["norm_stats"][0])
    scene = hear_ssl.get_scene_embeddings(torch.randn(2, 16000) * 0.1, model)
    assert scene.shape == (2, 64) and torch.isfinite(scene).all()


def test_m2d_config_is_the_papers_and_bad_values_are_refused():
    cfg = m2d.resolve_config("config/m2d.yaml", [])
    m, o = cfg["m2d"], cfg["optim"]
    assert (m["mask_ratio"], m["pred_depth"], m["pred_width"], m["ema_start"], m["ema_final"]) == \
        (0.7, 8, 512, 0.99995, 0.99999)
    assert (o["base_lr"], o["warmup_epochs"], o["betas"], o["weight_decay"], cfg["train"]["epochs"]) == \
        (3e-4, 20, [0.9, 0.95], 0.05, 300)
    assert cfg["model"]["patch"] == [16, 16] and cfg["model"]["n_mels"] == 64
    encoder = models.build_encoder(cfg)
    assert encoder.embed_dim == 4 * 768 and encoder.train_grid == (4, 38)
    with pytest.raises(config_lib.ConfigError, match="mask_ratio"):
        m2d.resolve_config(DEMO, ["m2d.mask_ratio=1.0"])
    with pytest.raises(config_lib.ConfigError, match="model.readout"):
        m2d.resolve_config(DEMO, ["model.readut=stack"])
