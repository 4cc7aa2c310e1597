"""Spectrogram augmentations (nttcslab/byol-a v2): deterministic cores against hand computations."""
from __future__ import annotations

import math

import numpy as np
import torch

import augment


def test_log_mixup_exp_matches_formula():
    xa, xb = torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, -1.0]])
    out = augment.log_mixup_exp(xa, xb, 0.25)
    eps = float(np.finfo(np.float32).eps)
    expected = [math.log(0.25 * 1 + 0.75 * math.exp(2) + eps), math.log(0.25 * math.e + 0.75 * math.exp(-1) + eps)]
    assert torch.allclose(out[0], torch.tensor(expected), atol=1e-6)


def test_mixup_byola_uses_memory_of_unmixed_inputs_in_fifo_order():
    mix = augment.MixupBYOLA(ratio=0.4, n_memory=3)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    # first sample: empty memory -> unchanged; sample b may pick any of the b earlier inputs
    out = mix.mix(x, np.array([0.1, 0.2, 0.3, 0.1]), np.array([-1, 0, 1, 2]))
    assert torch.equal(out[0], x[0])
    assert torch.allclose(out[1], augment.log_mixup_exp(x[1], x[0], 0.8))
    assert torch.allclose(out[2], augment.log_mixup_exp(x[2], x[1], 0.7))
    assert torch.allclose(out[3], augment.log_mixup_exp(x[3], x[2], 0.9))
    # the memory keeps the last 3 UNMIXED inputs, oldest first
    assert torch.equal(mix.memory[:, 0, 0, 0], torch.tensor([1.0, 2.0, 3.0]))
    out2 = mix.mix(x[:1] + 10, np.array([0.25]), np.array([0]))  # pool index 0 = oldest held = input 1
    assert torch.allclose(out2[0], augment.log_mixup_exp(x[0] + 10, x[1], 0.75))
    assert torch.equal(mix.memory[:, 0, 0, 0], torch.tensor([2.0, 3.0, 10.0]))


def test_mixup_byola_draws_follow_byola_order_and_state_round_trips():
    mix = augment.MixupBYOLA(ratio=0.2, n_memory=4)
    np.random.seed(3)
    alphas, picks = mix.draw(3)
    np.random.seed(3)
    a0 = 0.2 * np.random.random()            # sample 0: alpha only (memory empty)
    a1 = 0.2 * np.random.random()
    p1 = np.random.randint(1)                 # sample 1: one item available
    a2 = 0.2 * np.random.random()
    p2 = np.random.randint(2)
    assert np.allclose(alphas, [a0, a1, a2]) and list(picks) == [-1, p1, p2]
    x = torch.randn(3, 1, 4, 5)
    mix.mix(x, alphas, picks)
    clone = augment.MixupBYOLA(ratio=0.2, n_memory=4)
    clone.load_state_dict(mix.state_dict())
    y = torch.randn(2, 1, 4, 5)
    np.random.seed(7)
    out_a = mix(y)
    np.random.seed(7)
    out_b = clone(y)
    assert torch.equal(out_a, out_b) and torch.equal(mix.memory, clone.memory)


def test_resized_crop_of_a_given_box_matches_torchvision():
    from torchvision.transforms.functional import resized_crop as tv_resized_crop
    x = torch.randn(2, 1, 64, 96)
    box = (5, 17, 40, 60)
    out = augment.resized_crop(x, box, 224)
    ref = tv_resized_crop(x, *box, [224, 224], antialias=False)
    assert out.shape == (2, 1, 224, 224)
    assert torch.allclose(out, ref, atol=1e-6)
    # the full box resized to its own size is the identity
    assert torch.allclose(augment.resized_crop(x, (0, 0, 64, 96), (64, 96)), x, atol=1e-6)


def test_random_resized_crop_draws_torchvision_boxes():
    from torchvision.transforms import RandomResizedCrop as TVCrop
    crop = augment.RandomResizedCrop(96, scale=(0.05, 0.3))
    torch.manual_seed(0)
    boxes = crop.draw(torch.Size([3, 1, 64, 100]))
    torch.manual_seed(0)
    ref = [TVCrop.get_params(torch.empty(1, 64, 100), [0.05, 0.3], [3 / 4, 4 / 3]) for _ in range(3)]
    assert boxes == ref
    for i, j, h, w in boxes:
        assert 0.05 * 6400 * 0.9 <= h * w <= 0.3 * 6400 * 1.1 and i + h <= 64 and j + w <= 100
    assert crop(torch.randn(3, 1, 64, 100)).shape == (3, 1, 96, 96)


def test_byola_random_resize_crop_canvas_and_box():
    rrc = augment.RandomResizeCropBYOLA()
    x = torch.ones(1, 1, 4, 6)
    canvas = rrc.canvas(x)
    assert canvas.shape == (1, 1, 4, 9)                        # [int(4 * 1.0), int(6 * 1.5)]
    assert canvas[..., :, 1:7].eq(1).all() and canvas[..., :, [0, 7, 8]].eq(0).all()  # pasted at (9-6)//2 = 1
    # a box equal to the pasted input, resized bicubically (align_corners) to the input size, is the input
    y = torch.randn(1, 1, 4, 6)
    assert torch.allclose(augment.resized_crop(rrc.canvas(y), (0, 1, 4, 6), (4, 6), mode="bicubic"), y, atol=1e-5)
    np.random.seed(0)
    out = rrc(torch.randn(5, 1, 64, 96))
    assert out.shape == (5, 1, 64, 96)


def test_linear_fade_for_given_gains():
    x = torch.zeros(2, 1, 3, 5)
    out = augment.linear_fade(x, torch.tensor([1.0, -0.5]), torch.tensor([-1.0, 0.5]))
    assert torch.allclose(out[0, 0, 1], torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0]))
    assert torch.allclose(out[1, 0, 2], torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5]))
    np.random.seed(1)
    fader = augment.RandomLinearFader(gain=0.5)
    gains = fader.draw(2)
    np.random.seed(1)
    assert np.allclose(gains[0], 0.5 * (2 * np.random.rand(2) - 1))
    assert np.abs(gains).max() <= 0.5


def test_running_norm_statistics_over_a_known_sequence():
    norm = augment.RunningNorm(epoch_samples=1, max_update_epochs=2)  # updates on the first 2 samples only
    a = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)                   # mean 2
    b = torch.tensor([5.0, 7.0]).view(1, 1, 1, 2)                   # mean 6
    out = norm(torch.cat([a, b, b]))
    # after a: mu 2, var mean((a-2)^2) = 1; after b: mu 4, var += (mean((b-4)^2) = 5 - 1)/2 -> 3
    assert torch.allclose(out[0], (a[0] - 2) / 1.0)
    assert torch.allclose(out[1], (b[0] - 4) / math.sqrt(3.0))
    assert torch.allclose(out[2], (b[0] - 4) / math.sqrt(3.0))       # frozen after 2 updates
    assert norm.n == 2 and norm.mu == 4.0
    restored = augment.RunningNorm(epoch_samples=1, max_update_epochs=2)
    restored.load_state_dict(norm.state_dict())
    assert torch.equal(restored(a), norm(a))


def test_precomputed_norm_and_normalize_batch_with_unbiased_std():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(2, 1, 1, 2)
    assert torch.allclose(augment.PrecomputedNorm(2.0, 4.0)(x), (x - 2) / 4)
    out = augment.normalize_batch(x)
    mean = 3.0
    std_unbiased = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)
    assert torch.allclose(out, (x - mean) / std_unbiased)
