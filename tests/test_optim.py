"""optim.LARS: the trust ratio and the excluded (bias / norm) groups on known tensors."""
from __future__ import annotations

import pytest
import torch

from optim import LARS
from utils import decay_groups


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
