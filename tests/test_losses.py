"""Objectives: MSN tests are named test_msn_*, NT-Xent/CLAR tests test_ntxent_* / test_clar_*."""
from __future__ import annotations

import math

import pytest
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


# ----------------------------------------------------------------------------- NT-Xent / CLAR


def _ntxent_by_hand(z1, z2, tau):
    z = [[c / math.sqrt(sum(c * c for c in v)) for c in v] for v in z1.tolist() + z2.tolist()]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = {k: sum(a * b for a, b in zip(z[i], z[k])) / tau for k in range(2 * n) if k != i}
        total += -sims[j] + math.log(sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def test_ntxent_matches_a_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.5], [-1.0, 1.0], [0.0, -3.0]])
    for tau in (0.5, 0.1):
        assert losses.nt_xent(z1, z2, tau).item() == pytest.approx(_ntxent_by_hand(z1, z2, tau), rel=1e-5)
    # two clips, identical views, orthogonal: each anchor sees its positive at cos 1, the others at cos 0
    eye = torch.eye(2)
    expected = -2 + math.log(math.exp(2) + 2 * math.exp(0))
    assert losses.nt_xent(eye, eye, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_is_symmetric_in_the_views_and_scale_invariant():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert losses.nt_xent(z1, z2).item() == pytest.approx(losses.nt_xent(z2, z1).item(), rel=1e-6)
    assert losses.nt_xent(3 * z1, z2 * 0.1).item() == pytest.approx(losses.nt_xent(z1, z2).item(), rel=1e-5)
    z1.requires_grad_(True)
    losses.nt_xent(z1, z2).backward()
    assert torch.isfinite(z1.grad).all()


def test_clar_cross_entropy_is_zero_without_labels():
    logits = torch.randn(4, 3, requires_grad=True)
    ce = losses.labelled_cross_entropy(logits, torch.full((4,), -1))
    assert ce.item() == 0.0 and not torch.isnan(ce)
    ce.backward()
    assert (logits.grad == 0).all()
    targets = torch.tensor([2, -1, 0, -1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], targets[[0, 2]])
    assert losses.labelled_cross_entropy(logits, targets).item() == pytest.approx(expected.item())


def test_clar_loss_modes_combine_the_terms():
    torch.manual_seed(0)
    z1, z2, l1, l2 = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, -1, 2, 1])
    clar = losses.clar_loss(z1, z2, l1, l2, y, "clar")
    ce = 0.5 * (losses.labelled_cross_entropy(l1, y) + losses.labelled_cross_entropy(l2, y))
    assert clar["ntxent"].item() == pytest.approx(losses.nt_xent(z1, z2, 0.5).item())
    assert clar["ce"].item() == pytest.approx(ce.item())
    assert clar["loss"].item() == pytest.approx(clar["ntxent"].item() + ce.item())
    assert losses.clar_loss(z1, z2, None, None, y, "selfsupervised")["loss"].item() == pytest.approx(
        clar["ntxent"].item())
    assert losses.clar_loss(z1, z2, l1, l2, y, "supervised")["loss"].item() == pytest.approx(ce.item())
    with pytest.raises(ValueError, match="mode"):
        losses.clar_loss(z1, z2, l1, l2, y, "semi")


def supcon_by_hand(z1, z2, labels, tau):
    """Khosla et al. 2020 Eq. 2 written as loops over anchors i and positives p (views 0..2N-1)."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, views = len(z1), torch.cat([labels, labels]).tolist()
    total = 0.0
    for i in range(2 * n):
        others = [a for a in range(2 * n) if a != i]
        denominator = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        positives = [p for p in others if p == (i + n) % (2 * n) or (views[i] >= 0 and views[p] == views[i])]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denominator) for p in positives) / len(positives)
    return total / (2 * n)


def test_clar_supcon_matches_a_hand_computation_and_reduces_to_ntxent_without_labels():
    from losses import nt_xent, supcon
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 1, 0, -1, 1])
    assert supcon(z1, z2, labels, 0.5).item() == pytest.approx(supcon_by_hand(z1, z2, labels, 0.5), rel=1e-5)
    assert supcon(z2, z1, labels, 0.5).item() == pytest.approx(supcon(z1, z2, labels, 0.5).item(), rel=1e-6)
    unlabelled = torch.full((5,), -1)
    assert supcon(z1, z2, unlabelled, 0.5).item() == pytest.approx(nt_xent(z1, z2, 0.5).item(), rel=1e-6)
    # pulling same-class clips together: a batch whose classes are already clustered has a lower SupCon
    clustered = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert supcon(clustered, clustered, torch.tensor([0, 1, 0, 1]), 0.5) < \
        supcon(clustered, clustered, torch.tensor([0, 0, 1, 1]), 0.5)


def test_byol_loss_matches_a_hand_computation():
    """Per clip (2 - 2 cos(p1, z2)) + (2 - 2 cos(p2, z1)), averaged over the batch."""
    p1 = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    p2 = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    z1 = torch.tensor([[2.0, 2.0], [0.0, 5.0]])   # clip 0: cos(p2, z1) = 1; clip 1: cos = -1
    z2 = torch.tensor([[0.0, 1.0], [3.0, 4.0]])   # clip 0: cos(p1, z2) = 0; clip 1: cos = 1
    expected = ((2 - 0) + (2 - 2 * 1) + (2 - 2 * 1) + (2 + 2)) / 2  # clip 0: 2 + 0, clip 1: 0 + 4
    assert losses.byol_loss(p1, p2, z1, z2).item() == pytest.approx(expected)
    # scale-invariant, symmetric in the views, and no gradient reaches the targets
    assert losses.byol_loss(5 * p1, p2, z1, 0.1 * z2).item() == pytest.approx(expected)
    assert losses.byol_loss(p2, p1, z2, z1).item() == pytest.approx(expected)
    p1g, z2g = p1.clone().requires_grad_(), z2.clone().requires_grad_()
    losses.byol_loss(p1g, p2, z1, z2g).backward()
    assert p1g.grad is not None and z2g.grad is None
    assert losses.byol_loss(p1, p1, p1, p1).item() == pytest.approx(0.0, abs=1e-6)
