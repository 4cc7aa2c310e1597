"""Objectives: MSN (Assran et al. 2022; facebookresearch/msn) and NT-Xent / CLAR (Chen et al. 2020; Al-Tahan and
Mohsenzadeh 2021; CLAR paper, arXiv 2010.09542). All maths is done in fp32, also under bf16 autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distributed import all_reduce_sum, gather_with_grad, world_size

# ============================================================================ MSN
# Assran et al. 2022, "Masked Siamese Networks for Label-Efficient Learning"; msn src/losses.py.
#   p = softmax(cos(z, prototypes) / tau)                    anchor and target, tau = 0.1
#   t = Sinkhorn(sharpen(p_target, T)), T = 0.25, repeated over the V anchor views (view-major)
#   loss = mean_rows sum_k -t_k log p_k + w_memax (log K - H(mean p_anchor)) + w_ent mean_rows H(p_anchor)


def msn_probs(z: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """softmax(normalize(z) @ normalize(prototypes).T / temperature): z [N, d], prototypes [K, d] -> [N, K]."""
    logits = F.normalize(z.float(), dim=1) @ F.normalize(prototypes.float(), dim=1).T
    return F.softmax(logits / temperature, dim=1)


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """p ** (1/T), renormalised over the last axis (msn losses.py L33-36)."""
    sharp = p ** (1.0 / T)
    return sharp / sharp.sum(dim=1, keepdim=True)


@torch.no_grad()
def sinkhorn(p: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp on the sharpened probabilities p [B, K] (local rows), across all processes
    (msn losses.py L93-127): alternately give every prototype total mass 1/K and every sample 1/B_global;
    the returned rows sum to 1 and, at convergence, every prototype gets B_global/K of the total mass."""
    q = p.float().T.clone()  # [K, B]: columns are samples
    n_prototypes, n_samples = q.shape[0], q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    return (q * n_samples).T


class _AllReduceMean(torch.autograd.Function):
    """Mean over processes in the forward, identity backward (msn utils.py AllReduce L226-241): every
    process sees the same upstream gradient, and DDP's gradient averaging then gives the exact gradient
    of me-max at the global mean."""

    @staticmethod
    def forward(ctx, x):
        return all_reduce_sum(x.clone()) / world_size()

    @staticmethod
    def backward(ctx, grad):
        return grad


def msn_loss(anchor_z: torch.Tensor, target_z: torch.Tensor, prototypes: torch.Tensor, temperature: float = 0.1,
             sharpen_T: float = 0.25, use_sinkhorn: bool = True, me_max_weight: float = 1.0,
             ent_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """MSN objective (facebookresearch/msn), computed in fp32.

    anchor_z [V*B, d]: head outputs of V anchor views, view-major (view 0 = rows 0..B-1);
    target_z [B, d]: head outputs of the target view; prototypes [K, d].
    Returns a dict: loss (the total), ploss (cross-entropy to the targets), me_max (log K - H(mean anchor
    probability), mean over processes), ent (mean anchor entropy), perplexity (exp H of the mean anchor
    probability = effective number of prototypes used) and p_target [B, K].
    """
    num_views = anchor_z.shape[0] // target_z.shape[0]
    if num_views * target_z.shape[0] != anchor_z.shape[0]:
        raise ValueError(f"anchor rows {anchor_z.shape[0]} are not a multiple of target rows {target_z.shape[0]}")
    with torch.autocast(anchor_z.device.type, enabled=False):  # fp32 also inside a bf16 autocast region
        return _msn_loss_fp32(anchor_z, target_z, prototypes, temperature, sharpen_T, use_sinkhorn, me_max_weight,
                              ent_weight, num_views)


def _msn_loss_fp32(anchor_z, target_z, prototypes, temperature, sharpen_T, use_sinkhorn, me_max_weight, ent_weight,
                   num_views):
    p_anchor = msn_probs(anchor_z, prototypes, temperature)
    with torch.no_grad():
        p_target = sharpen(msn_probs(target_z, prototypes, temperature), sharpen_T)
        if use_sinkhorn:
            p_target = sinkhorn(p_target)
        targets = p_target.repeat(num_views, 1)
    ploss = torch.mean(torch.sum(-targets * torch.log(p_anchor), dim=1))
    mean_p = _AllReduceMean.apply(p_anchor.mean(dim=0))
    me_max = math.log(prototypes.shape[0]) + torch.sum(mean_p * torch.log(mean_p))
    ent = torch.mean(torch.sum(-p_anchor * torch.log(p_anchor), dim=1))
    loss = ploss + me_max_weight * me_max + ent_weight * ent
    with torch.no_grad():
        perplexity = torch.exp(-torch.sum(mean_p * torch.log(mean_p)))
    return {"loss": loss, "ploss": ploss, "me_max": me_max, "ent": ent, "perplexity": perplexity,
            "p_target": p_target}


# ============================================================================ NT-Xent / CLAR
# SimCLR's NT-Xent (Chen et al. 2020) as CLAR uses it (CLAR paper; CLAR code): for 2N projections of N clips (two views
# each), anchor i, positive j(i) = the other view of the same clip, tau = 0.5:
#   l_i = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) ),  loss = mean_i l_i
# with sim the cosine similarity. Under torchrun the candidates k are the projections of EVERY process
# (distributed.gather_with_grad) and each process averages over its own anchors, so DDP's gradient averaging gives
# exactly the gradient of the global-batch loss.


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """NT-Xent of two views z1, z2 [N, D] (un-normalised projections, row i of both from the same clip)."""
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n, rank = z1.shape[0], (torch.distributed.get_rank() if world_size() > 1 else 0)
    candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # [2 * n * world, D]
    total = candidates.shape[0] // 2  # N over all processes
    anchors = torch.cat([z1, z2])  # [2n, D]
    logits = anchors @ candidates.T / tau
    own = torch.arange(n, device=z1.device) + rank * n  # this process's rows inside each gathered view
    self_index = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    logits[torch.arange(2 * n, device=z1.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def _gather_in_rank_order(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [n, ...] of every process in rank order (the order of gather_with_grad), no gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def supcon(z1: torch.Tensor, z2: torch.Tensor, targets: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2, L_out) over both views of the global batch.

    For anchor i among the 2N views: -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau) ),
    with s the cosine similarity. P(i) = every other view whose clip has i's label; an unlabelled clip
    (target -1) has only its own second view, so with no labels this is exactly nt_xent. Mean over anchors.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n, rank = z1.shape[0], (torch.distributed.get_rank() if world_size() > 1 else 0)
    candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # [2 * N, D]
    all_targets = _gather_in_rank_order(targets)
    total = all_targets.shape[0]
    candidate_labels, anchor_labels = torch.cat([all_targets, all_targets]), torch.cat([targets, targets])
    rows = torch.arange(2 * n, device=z1.device)
    own = torch.arange(n, device=z1.device) + rank * n
    self_index, other_view = torch.cat([own, own + total]), torch.cat([own + total, own])
    logits = torch.cat([z1, z2]) @ candidates.T / tau
    logits[rows, self_index] = float("-inf")
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (anchor_labels[:, None] == candidate_labels[None]) & (anchor_labels[:, None] >= 0)
    positive[rows, other_view] = True
    positive[rows, self_index] = False
    return (-log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1)).mean()


def labelled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over the rows with a label (targets >= 0; -1 = unlabelled), of the GLOBAL batch.

    Zero, not NaN, when no row has a label; the zero keeps `logits` in the graph, so DDP sees every parameter.
    Under torchrun the processes may hold different numbers of labelled rows: each returns its rows' summed CE
    times world / (labelled rows of all processes), so that DDP's gradient averaging gives the global mean.
    """
    labelled = targets >= 0
    count = all_reduce_sum(labelled.sum().float())
    if not labelled.any():
        return logits.float().sum() * 0.0
    ce = F.cross_entropy(logits[labelled].float(), targets[labelled], reduction="sum")
    return ce * world_size() / count


def clar_loss(z1: torch.Tensor, z2: torch.Tensor, logits1: torch.Tensor | None, logits2: torch.Tensor | None,
              targets: torch.Tensor, mode: str = "clar", tau: float = 0.5,
              ce_weight: float = 1.0, contrastive: str = "ntxent") -> dict[str, torch.Tensor]:
    """CLAR objective (Al-Tahan and Mohsenzadeh 2021): {"loss", "ntxent", "ce"}.

    mode "clar": NT-Xent on all clips + ce_weight * CE on the labelled ones; "selfsupervised": NT-Xent only;
    "supervised": CE only. CE is the mean over both views' labelled rows (the reference code sums the two
    views' CEs, i.e. ce_weight 2). contrastive="supcon" replaces NT-Xent by SupCon (labelled clips attract
    every clip of their class; the "ntxent" entry then holds the SupCon term).
    """
    if contrastive not in ("ntxent", "supcon"):
        raise ValueError(f"contrastive must be ntxent or supcon, got {contrastive!r}")
    zero = z1.float().sum() * 0.0
    pair_loss = nt_xent(z1, z2, tau) if contrastive == "ntxent" else supcon(z1, z2, targets, tau)
    ntxent = pair_loss if mode in ("clar", "selfsupervised") else zero
    ce = zero
    if mode in ("clar", "supervised"):
        ce = 0.5 * (labelled_cross_entropy(logits1, targets) + labelled_cross_entropy(logits2, targets))
    if mode not in ("clar", "selfsupervised", "supervised"):
        raise ValueError(f"mode must be clar, selfsupervised or supervised, got {mode!r}")
    return {"loss": ntxent + ce_weight * ce, "ntxent": ntxent.detach(), "ce": ce.detach()}


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """BYOL's symmetric loss (Grill et al. 2020, eq. 2; byol-pytorch loss_fn), in fp32.

    p1, p2 [B, D]: the online predictions of views 1 and 2; z1, z2 [B, D]: the target projections (no gradient).
    Each prediction is regressed onto the OTHER view's target: per clip
        (2 - 2 cos(p1, z2)) + (2 - 2 cos(p2, z1)),
    averaged over the batch, so the loss lies in [0, 8].
    """
    def regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return 2 - 2 * (F.normalize(p.float(), dim=-1) * F.normalize(z.detach().float(), dim=-1)).sum(-1)

    return (regression(p1, z2) + regression(p2, z1)).mean()
