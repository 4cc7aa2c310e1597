"""Objectives: MSN tests are named test_msn_*, NT-Xent/CLAR tests test_ntxent_* / test_clar_*."""
from __future__ import annotations

import math

import torch

import losses


def test_msn_loss_against_a_hand_computed_example():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 3.0]])          # normalised inside: e1, e2
    target = torch.tensor([[5.0, 0.0]])                            # cos = [1, 0]
    anchors = torch.tensor([[2.0, 0.0], [1.0, 1.0]])              # view 1: cos [1, 0]; view 2: cos [.707, .707]
    out = losses.msn_loss(anchors, target, prototypes, temperature=1.0, sharpen_T=0.5, use_sinkhorn=False,
                          me_max_weight=1.0, ent_weight=0.25)
    e = math.e
    t = [e * e / (e * e + 1), 1 / (e * e + 1)]                    # softmax([1, 0]) squared and renormalised
    p1, p2 = [e / (e + 1), 1 / (e + 1)], [0.5, 0.5]
    ce = lambda t, p: -sum(ti * math.log(pi) for ti, pi in zip(t, p))
    ploss = (ce(t, p1) + ce(t, p2)) / 2                            # the target repeated over both anchor views
    pbar = [(p1[k] + p2[k]) / 2 for k in range(2)]
    me_max = math.log(2) + sum(q * math.log(q) for q in pbar)
    ent = (ce(p1, p1) + ce(p2, p2)) / 2
    assert torch.allclose(out["p_target"], torch.tensor([t]), atol=1e-6)
    assert math.isclose(out["ploss"].item(), ploss, rel_tol=1e-5)
    assert math.isclose(out["me_max"].item(), me_max, rel_tol=1e-4)
    assert math.isclose(out["ent"].item(), ent, rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), ploss + me_max + 0.25 * ent, rel_tol=1e-5)
    assert math.isclose(out["perplexity"].item(), math.exp(-sum(q * math.log(q) for q in pbar)), rel_tol=1e-5)


def test_msn_targets_repeat_view_major():
    torch.manual_seed(0)
    prototypes, target = torch.randn(5, 3), torch.randn(2, 3)
    anchors = torch.cat([target, target * 2, target * 0.5])          # every view's rows equal the target's rows
    out = losses.msn_loss(anchors, target, prototypes, use_sinkhorn=False)
    p = losses.msn_probs(target, prototypes)
    expected = torch.mean(torch.sum(-out["p_target"] * torch.log(p), dim=1))  # row b matches target b in each view
    assert torch.allclose(out["ploss"], expected, atol=1e-5)


def test_msn_sharpen_and_probs():
    sharp = losses.sharpen(torch.tensor([[0.5, 0.3, 0.2]]), 0.5)
    assert torch.allclose(sharp, torch.tensor([[0.25, 0.09, 0.04]]) / 0.38)
    p = losses.msn_probs(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]]), temperature=0.1)
    logits = torch.tensor([0.6, 0.8]) / 0.1
    assert torch.allclose(p, torch.softmax(logits, 0)[None])


def test_msn_sinkhorn_hand_example_and_marginals():
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    # Q = p.T / 2 = [[.45, .3], [.05, .2]]; rows to 1/K: [[.3, .2], [.1, .4]]; columns to 1/B:
    # [[.375, 1/6], [.125, 1/3]]; times B = 2 and transposed: [[.75, .25], [1/3, 2/3]]
    assert torch.allclose(losses.sinkhorn(p, iterations=1), torch.tensor([[0.75, 0.25], [1 / 3, 2 / 3]]), atol=1e-6)
    torch.manual_seed(0)
    q = losses.sharpen(torch.softmax(torch.randn(16, 4) * 3, dim=1), 0.25)
    before = q.clone()
    out = losses.sinkhorn(q)
    assert torch.equal(q, before)                                        # the input is not modified
    assert torch.allclose(out.sum(dim=1), torch.ones(16), atol=1e-5)   # rows sum to 1
    converged = losses.sinkhorn(q, iterations=200)
    assert torch.allclose(converged.sum(dim=0), torch.full((4,), 16 / 4), atol=1e-3)  # uniform prototype usage


def test_msn_loss_is_fp32_under_bf16_autocast_and_grads_reach_prototypes():
    torch.manual_seed(0)
    prototypes = torch.nn.Parameter(torch.randn(8, 4))
    anchors, target = torch.randn(6, 4, requires_grad=True), torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = losses.msn_loss(anchors.bfloat16(), target.bfloat16(), prototypes)
    assert out["loss"].dtype == torch.float32
    out["loss"].backward()
    assert prototypes.grad is not None and anchors.grad is not None and torch.isfinite(prototypes.grad).all()
    try:
        losses.msn_loss(torch.randn(5, 4), target, prototypes)
        raise AssertionError("5 anchor rows for 3 targets must be rejected")
    except ValueError as err:
        assert "multiple" in str(err)
