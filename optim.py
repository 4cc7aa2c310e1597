"""Optimisers and schedules: LARS for CLAR, and the schedules of every method as functions of the global step
(DINO-style: a resumed run needs only the step), the parameter groups and the EMA momentum.

LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") as SimCLR uses it, for CLAR (CLAR paper).

    groups = decay_groups(model.named_parameters(), weight_decay=1e-4)  # biases/norms: lars_exclude
    optimizer = LARS(groups, lr=1.2, momentum=0.9)
    set_lr(optimizer, warmup_cosine(step, ...))      # per iteration, step = the trainer's 0-based step

For every parameter w with gradient g (SimCLR's TF LARS, `lars_optimizer.py`):
    g <- g + wd * w
    trust = eta * ||w|| / ||g||   (1 if either norm is 0, or if the group has lars_exclude=True)
    v <- momentum * v + lr * trust * g ;  w <- w - v
Groups flagged `lars_exclude` (biases and batch-norm parameters) get neither weight decay nor adaptation,
i.e. plain momentum SGD.
"""
from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling on top of momentum SGD (see module docstring)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @staticmethod
    def trust_ratio(param: torch.Tensor, grad: torch.Tensor, eta: float) -> torch.Tensor:
        """eta * ||param|| / ||grad||, or 1 where either norm is zero."""
        w_norm, g_norm = param.norm(), grad.norm()
        ratio = eta * w_norm / g_norm
        return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"] > 0:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    grad = grad * self.trust_ratio(p, grad, group["eta"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad, alpha=group["lr"])
                p.sub_(buf)
        return loss


# ----------------------------------------------------------------------------- schedules


# One convention for every method: a schedule is called with the trainer's 0-based global step, the index of the
# update about to be made; callers never add 1. Where a reference implementation steps its scheduler BEFORE the
# first update, the schedule's `first` says so (the position step 0 takes), named once here:
STEPPED_BEFORE_USE = 1  # MSN's WarmupCosineSchedule/CosineWDSchedule (msn utils.py: `_step += 1` first)
READ_BEFORE_STEP = 0    # PL bolts' LinearWarmupCosineAnnealingLR stepped per iteration (CLAR): step 0 uses `start`


def cosine(step: int, total: int, start: float, final: float, *, first: int = READ_BEFORE_STEP) -> float:
    """Half-cosine from `start` (position 0) to `final` (position `total`), flat afterwards; position = step + first."""
    step = step + first
    t = min(max(step, 0), total) / max(total, 1)
    return final + 0.5 * (start - final) * (1 + math.cos(math.pi * t))


def warmup_cosine(step: int, warmup: int, total: int, start: float, peak: float, final: float, *,
                  first: int = READ_BEFORE_STEP) -> float:
    """Linear warmup `start -> peak` over `warmup` positions, then cosine `peak -> final` until `total`;
    position = step + first (see STEPPED_BEFORE_USE)."""
    step = step + first
    if step < warmup:
        return start + (peak - start) * step / warmup
    return cosine(step - warmup, total - warmup, peak, final)


def multistep(epoch: float, base: float, milestones: list[int], gamma: float) -> float:
    """torch MultiStepLR as a function: base * gamma ** (number of milestones <= epoch)."""
    return base * gamma ** sum(epoch >= m for m in milestones)


def ema_momentum(step: int, total: int, start: float = 0.996, final: float = 1.0,
                 stretch: float = 1.25) -> float:
    """MSN's target-encoder momentum: linear start -> final over stretch*total steps (facebookresearch/msn)."""
    return start + step * (final - start) / (stretch * total)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set every group's lr (scaled by its 'lr_scale') and, where the group decays, its weight decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("weight_decay", 0.0) > 0:
            group["weight_decay"] = weight_decay


def decay_groups(named_params, weight_decay: float) -> list[dict]:
    """Two param groups: weight decay on matrices/kernels, none on biases and norm parameters (msn repo; CLAR paper)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or ".bn" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]
