"""optim.py: LARS (trust ratio, excluded groups) on known tensors; schedules as functions of the step; param groups."""
from __future__ import annotations

import pytest
import torch

import optim
from optim import LARS, decay_groups


def test_lars_trust_ratio_on_known_tensors():
    p = torch.tensor([3.0, 4.0])  # |p| = 5
    g = torch.tensor([0.6, 0.8])  # |g| = 1
    assert LARS.trust_ratio(p, g, eta=0.001).item() == pytest.approx(0.005)
    assert LARS.trust_ratio(torch.zeros(2), g, eta=0.001).item() == 1.0  # zero weights: no adaptation
    assert LARS.trust_ratio(p, torch.zeros(2), eta=0.001).item() == 1.0


def test_lars_step_scales_decays_and_excludes():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    groups = [{"params": [weight], "weight_decay": 0.5}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}]
    opt = LARS(groups, lr=2.0, momentum=0.9, eta=0.01)
    weight.grad = torch.tensor([[0.1, -0.2]])
    bias.grad = torch.tensor([0.3])
    opt.step()
    g = torch.tensor([[0.1, -0.2]]) + 0.5 * torch.tensor([[3.0, 4.0]])  # decayed gradient
    trust = 0.01 * 5.0 / g.norm()
    assert torch.allclose(weight.detach(), torch.tensor([[3.0, 4.0]]) - 2.0 * trust * g)
    assert bias.item() == pytest.approx(1.0 - 2.0 * 0.3)  # plain SGD, no decay, no trust ratio
    # second step: momentum 0.9 carries the first update
    weight.grad, bias.grad = torch.zeros(1, 2), torch.zeros(1)
    before = bias.item()
    opt.step()
    assert bias.item() == pytest.approx(before - 0.9 * 2.0 * 0.3)


def test_decay_groups_mark_biases_and_norms_for_lars_exclusion():
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4))
    decay, no_decay = decay_groups(net.named_parameters(), 1e-4)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["lars_exclude"]


def test_cosine_and_warmup_cosine_values():
    assert optim.cosine(0, 10, 1.0, 0.0) == 1.0 and optim.cosine(10, 10, 1.0, 0.0) == 0.0
    assert optim.cosine(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert optim.cosine(20, 10, 1.0, 0.1) == pytest.approx(0.1)  # flat after the end
    # MSN: linear start_lr -> lr over the warmup, then cosine lr -> final_lr
    assert optim.warmup_cosine(0, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(2e-4)
    assert optim.warmup_cosine(2, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(6e-4)
    assert optim.warmup_cosine(4, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert optim.warmup_cosine(9, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))


def test_multistep_is_the_seeds_multisteplr():
    milestones = [100, 200, 300, 400]
    assert optim.multistep(99, 1e-4, milestones, 0.1) == pytest.approx(1e-4)
    assert optim.multistep(100, 1e-4, milestones, 0.1) == pytest.approx(1e-5)
    assert optim.multistep(450, 1e-4, milestones, 0.1) == pytest.approx(1e-8)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
    for epoch in range(450):
        assert opt.param_groups[0]["lr"] == pytest.approx(optim.multistep(epoch, 1e-4, milestones, 0.1))
        opt.step()
        sched.step()


def test_ema_momentum_matches_msn_formula():
    ipe, epochs = 10, 800
    total = ipe * epochs
    assert optim.ema_momentum(0, total) == 0.996
    assert optim.ema_momentum(total, total) == pytest.approx(0.996 + total * 0.004 / (1.25 * total))  # 0.9992
    assert optim.ema_momentum(total, total) == pytest.approx(0.9992)


def test_decay_groups_exclude_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    decay, no_decay = optim.decay_groups(net.named_parameters(), 0.04)
    assert [p.shape for p in decay["params"]] == [(4, 3), (2, 4)] and decay["weight_decay"] == 0.04
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"]
    opt = torch.optim.AdamW([decay, no_decay], lr=1.0)
    optim.set_lr(opt, 0.5, weight_decay=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_schedules_take_the_trainers_step_and_name_when_the_reference_stepped_first():
    """Every method passes its 0-based global step; MSN's scheduler is stepped before its first update (its first
    lr is already 1/warmup of the way), CLAR's (PL bolts) is read first (its first lr is the start value)."""
    args = (4, 14, 2e-4, 1e-3, 1e-6)
    assert optim.warmup_cosine(0, *args, first=optim.READ_BEFORE_STEP) == pytest.approx(2e-4)
    assert optim.warmup_cosine(0, *args, first=optim.STEPPED_BEFORE_USE) == pytest.approx(2e-4 + (1e-3 - 2e-4) / 4)
    msn = optim.STEPPED_BEFORE_USE
    for step in range(20):
        assert optim.warmup_cosine(step, *args, first=msn) == optim.warmup_cosine(step + 1, *args)
        assert optim.cosine(step, 10, 0.04, 0.4, first=msn) == optim.cosine(step + 1, 10, 0.04, 0.4)
