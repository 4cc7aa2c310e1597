"""Distributed helpers: no-ops in a single process, unchanged under torchrun (they read only what
torch.distributed needs). Global-batch operations: sums and gathers over processes (with gradients where a loss
needs them) and a batch norm over the batch of all processes on CPU (gloo), where torch's SyncBatchNorm does not run.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1); return (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (a no-op alone); returns x."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(x).div_(world_size())


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the summed gradient (SimCLR)."""

    @staticmethod
    def forward(ctx, x):
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x [N, ...] from every process in rank order, keeping gradients; identity alone."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        return _GatherWithGrad.apply(x)
    return x


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch [world * b, ...] from every process's x [b, ...], no gradient; identity alone.

    Rows come back in global position order: process r holds positions r, r + world, r + 2 world, ...
    (DistributedSampler's rank::world slicing), so `gather_batch(x)[rank::world]` is x again.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)


class _SumOverProcesses(torch.autograd.Function):
    """Sum over processes; the backward sums the upstream gradients too (every process's loss depends on
    every process's contribution), which with DDP's gradient averaging gives the global-batch gradient."""

    @staticmethod
    def forward(ctx, x):
        return all_reduce_sum(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum(grad.clone())


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm over the batch of ALL processes, for backends where torch's SyncBatchNorm does not run
    (gloo on CPU). Same parameters, buffers and state_dict keys as BatchNorm1d/2d; alone or in eval mode it
    is plain batch norm. Statistics in fp32, two passes (mean, then the centred second moment)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = all_reduce_sum(torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device))
        mean = _SumOverProcesses.apply(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = _SumOverProcesses.apply(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalDropout(torch.nn.Dropout):
    """Dropout whose masks are drawn for the batch of ALL processes, each process keeping its own rows, so N
    processes drop exactly what one process would on the same global batch (plain nn.Dropout draws a mask per
    process). It needs every process's default generator in the same state (trainer.py seeds it with the step,
    not the rank) and rows in global position order (process r holds positions r, r + world, ...: gather_batch).
    The mask is drawn as CPU F.dropout draws its own (bernoulli_(1 - p) on the whole batch, then / (1 - p)), so
    one process gets the same numbers as nn.Dropout; alone or in eval mode it is nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = world_size()
        if not self.training or self.p == 0.0 or world == 1:
            return super().forward(x)
        keep = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        keep.bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * keep[dist.get_rank()::world]


def convert_dropout(module: torch.nn.Module) -> torch.nn.Module:
    """Every nn.Dropout of `module` becomes a GlobalDropout with the same p (in place; returns the module)."""
    if type(module) is torch.nn.Dropout:
        return GlobalDropout(module.p, module.inplace).train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_dropout(child))
    return module


def convert_sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of `module` normalises over the global batch: torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere (torch's SyncBatchNorm refuses CPU tensors). Parameters and buffers are kept."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out.to(next(iter(module.state_dict().values())).device).train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
