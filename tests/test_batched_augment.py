"""Batched on-device augmentation (issue 6): for the same drawn parameters the batched versions give the
per-sample results, and the batched draws come from the per-sample ranges."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop as TVCrop

import augment
import augment_wave
import pretrain_msn
import randomness


@pytest.mark.parametrize("size", [(224, 224), (96, 96), (64, 32)])
def test_resized_crop_batch_equals_per_sample_crops(size):
    torch.manual_seed(0)
    x = torch.randn(7, 1, 64, 96) * 3
    boxes = torch.tensor([[0, 0, 64, 96], [63, 95, 1, 1], [5, 17, 40, 60], [0, 50, 64, 46], [10, 0, 3, 90],
                          [30, 30, 34, 66], [1, 2, 20, 7]])
    out = augment.resized_crop_batch(x, boxes, size)
    ref = torch.stack([augment.resized_crop(x[b], tuple(boxes[b].tolist()), size) for b in range(len(x))])
    assert out.shape == (7, 1, *size)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_resized_crop_batch_bicubic_equals_byola_crops():
    torch.manual_seed(1)
    rrc = augment.RandomResizeCropBYOLA()
    canvas = rrc.canvas(torch.randn(16, 1, 64, 96) * 3)
    boxes = augment.draw_byola_boxes(randomness.key_generator(1), 16, 64, 96)
    for size in [(64, 96), (224, 224), (64, 32)]:
        out = augment.resized_crop_batch(canvas, boxes, size, mode="bicubic")
        ref = torch.stack([augment.resized_crop(canvas[b], tuple(boxes[b].tolist()), size, mode="bicubic")
                           for b in range(16)])
        assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_rrc_boxes_follow_torchvision_ranges_and_distribution():
    n, height, width, scale, ratio = 4000, 64, 96, (0.05, 0.3), (3 / 4, 4 / 3)
    boxes = augment.draw_rrc_boxes(randomness.key_generator(0, 1), n, height, width, scale, ratio)
    i, j, h, w = boxes.T
    assert ((i >= 0) & (j >= 0) & (i + h <= height) & (j + w <= width) & (h > 0) & (w > 0)).all()
    area = (h * w).float() / (height * width)
    assert area.min() > 0.04 and area.max() < 0.32  # rounding of h, w aside, within scale
    assert ((w / h) > 0.7).all() and ((w / h) < 1.45).all()
    torch.manual_seed(0)
    tv = torch.tensor([TVCrop.get_params(torch.empty(1, height, width), list(scale), list(ratio)) for _ in range(n)])
    tv_area = (tv[:, 2] * tv[:, 3]).float() / (height * width)
    assert abs(area.mean() - tv_area.mean()) < 0.01 and abs(area.std() - tv_area.std()) < 0.01
    assert abs(i.float().mean() - tv[:, 0].float().mean()) < 1.5 and abs(j.float().mean() - tv[:, 1].float().mean()) < 2
    # no attempt fits (area > the image): torchvision's fallback, the central crop within the ratio range
    wide = augment.draw_rrc_boxes(randomness.key_generator(2), 5, 10, 40, scale=(2.0, 3.0), ratio=ratio)
    assert wide.tolist() == [[0, 13, 10, 13]] * 5  # w = round(10 * 4/3), j = (40 - 13) // 2


def test_byola_boxes_follow_the_per_sample_ranges():
    boxes = augment.draw_byola_boxes(randomness.key_generator(3), 3000, 64, 96)
    i, j, h, w = boxes.T
    assert h.min() >= int(0.6 * 64) and h.max() == 64 and w.min() >= int(0.6 * 96) and w.max() <= 144
    assert (i + h <= 64).all() and (j + w <= 144).all() and (i >= 0).all() and (j >= 0).all()
    assert abs((h == 64).float().mean() - 0.56) < 0.04  # U(0.6, 1.5) >= 1 in ~56 % of draws (nttcslab/byol-a v2)


def test_mixup_and_fader_draws_follow_the_per_sample_ranges():
    alphas, picks = augment.draw_mixup(randomness.key_generator(4), 2000, ratio=0.2, count=5, n_memory=8)
    assert alphas.min() >= 0 and alphas.max() < 0.2 and abs(alphas.mean() - 0.1) < 0.01
    b = np.arange(2000)
    available = np.minimum(5 + b, 8)
    assert ((picks >= 5 + b - available) & (picks < 5 + b)).all()  # the last `available` items of the pool
    _, first = augment.draw_mixup(randomness.key_generator(4), 3, ratio=0.2, count=0, n_memory=8)
    assert first[0] == -1 and first[1] == 0  # empty memory: no mix; then the only earlier item
    gains = augment.draw_fader(randomness.key_generator(5), 2000, 0.5)
    assert gains.abs().max() <= 0.5 and abs(gains.mean()) < 0.02 and gains.shape == (2000, 2)


def per_sample_view(x: torch.Tensor, params: dict, size, mixup: augment.MixupBYOLA, count: int, n_memory: int):
    """The per-sample pipeline of one view: clip by clip, MixupBYOLA with its own memory, crop, fader."""
    out = []
    for b in range(len(x)):
        clip = x[b:b + 1]
        pick = params["picks"][b]
        if pick >= 0:  # pool index of the batch -> index into this clip's memory (the last `available` inputs)
            pick = pick - (count + b - min(count + b, n_memory))
        clip = mixup.mix(clip, params["alphas"][b:b + 1], np.array([pick]))
        clip = augment.resized_crop(clip, tuple(params["boxes"][b].tolist()), size)
        out.append(augment.linear_fade(clip, params["gains"][b:b + 1, 0], params["gains"][b:b + 1, 1]))
    return torch.cat(out)


def test_msn_views_batched_equal_the_per_sample_pipeline():
    cfg = pretrain_msn.resolve_config("config/demo_msn.yaml", ["aug.norm=precomputed", "aug.mixup_memory=6"])
    views = augment.MSNViews(cfg["aug"], focal_views=2, stats=(-5.0, 2.0), seed=3)
    reference = augment.MixupBYOLA(cfg["aug"]["mixup_ratio"], 6)
    logmel = views.norm(torch.randn(4, 1, 64, 64) * 2 - 5)
    for view in range(4):  # target, anchor, 2 focal: the memory fills up and wraps around
        count = views.mixup.count
        params = views.draw(len(logmel), logmel.shape[-2:], step=7, view=view)
        batched = views.apply(logmel, params, view)
        ref = per_sample_view(logmel, params, views.sizes[view], reference, count, 6)
        assert torch.allclose(batched, ref, atol=1e-5), (view, (batched - ref).abs().max())
        assert torch.equal(views.mixup.memory, reference.memory)
    assert (params["picks"] >= 0).all() and views.mixup.count == 6


def test_msn_views_of_a_process_are_its_rows_of_the_one_process_views():
    cfg = pretrain_msn.resolve_config("config/demo_msn.yaml", ["aug.normalize_batch=false"])
    logmel = torch.randn(6, 1, 64, 64) * 2 - 5
    alone = augment.MSNViews(cfg["aug"], focal_views=3, seed=1)
    second = augment.MSNViews(cfg["aug"], focal_views=3, seed=1)
    for step in (0, 1):  # the memory and RunningNorm carry over between steps
        target, anchor, focal = alone(logmel + step, step, rank=0, world=1)
        t1, a1, f1 = second(logmel + step, step, rank=1, world=2)
        assert torch.equal(t1, target[1::2]) and torch.equal(a1, anchor[1::2])
        assert torch.equal(f1, focal.view(3, 6, 1, 64, -1)[:, 1::2].flatten(0, 1))
    assert not torch.equal(alone(logmel, 2)[0], alone(logmel, 3)[0])  # keyed by step


def test_batch_wave_augment_equals_the_per_sample_version():
    aug = augment_wave.BatchWaveAugment(list(augment_wave.WAVE_AUGMENTATIONS), p=0.7, snr_db=[0.0, 20.0])
    torch.manual_seed(0)
    wave = torch.randn(8, 4000) * 0.3 * torch.linspace(0.2, 1, 8)[:, None]
    params = aug.draw(16, 4000, randomness.key_generator(0, 5, 1))
    out = aug.apply(wave, params, rows=slice(1, None, 2))  # this process holds rows 1, 3, ..., 15
    ref = torch.stack([aug.apply_sample(wave[k], params, 2 * k + 1) for k in range(8)])
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    applied = {name: p["on"][1::2] for name, p in params}
    assert all(on.any() and not on.all() for on in applied.values())  # both branches of every augmentation


def test_batch_wave_augment_draws_follow_the_per_sample_ranges():
    aug = augment_wave.BatchWaveAugment(list(augment_wave.WAVE_AUGMENTATIONS), p=0.5, max_semitones=15, snr_db=[5, 25],
                                   max_fade=0.5, max_mask=0.125, max_shift=0.5, stretch=[0.5, 1.5])
    n, length = 4000, 800
    params = dict(aug.draw(n, length, randomness.key_generator(9)))
    assert all(abs(p["on"].float().mean() - 0.5) < 0.03 for p in params.values())
    fade, mask = params["fade"], params["time_mask"]
    assert fade["fade_in"].max() == 400 and fade["fade_out"].min() == 0 and set(fade["shape"].tolist()) == {0, 1, 2}
    assert mask["length"].max() == 100 and (mask["start"] + mask["length"] <= length).all()
    assert abs(mask["noisy"].float().mean() - 0.5) < 0.03 and mask["noise"].std() == pytest.approx(0.01, rel=0.05)
    assert params["time_shift"]["shift"].min() == -400 and params["time_shift"]["shift"].max() == 400
    assert 0.5 <= params["time_stretch"]["rate"].min() and params["time_stretch"]["rate"].max() < 1.5
    assert params["pitch_shift"]["semitones"].abs().max() <= 15
    assert (params["white_noise"]["color"] == 0).all() and set(params["mixed_noise"]["color"].tolist()) == {0, 1, 2}
    snr = params["mixed_noise"]["snr"]
    assert 5 <= snr.min() and snr.max() < 25 and abs(snr.mean() - 15) < 0.5
    wave = torch.randn(3, length)
    off = augment_wave.BatchWaveAugment(["fade", "white_noise"], p=0.0)
    assert torch.equal(off.apply(wave, off.draw(3, length, randomness.key_generator(0))), wave)


def test_fade_gain_batch_equals_fade_curve_exactly():
    for shape_index, shape in enumerate(augment_wave.FADE_SHAPES):
        for n in (1, 2, 7, 1001):
            gain = augment_wave.fade_gain_batch(2000, torch.tensor([n, 0]), torch.tensor([0, n]),
                                           torch.tensor([shape_index, shape_index]))
            curve = augment_wave.fade_curve(n, shape)
            assert torch.equal(gain[0, :n], curve) and torch.equal(gain[1, 2000 - n:], curve.flip(0))
            assert (gain[0, n:] == 1).all() and math.isclose(gain[1, :2000 - n].min().item(), 1.0)
