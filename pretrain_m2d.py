"""Masked Modeling Duo pretraining (Niizumi et al., IEEE/ACM TASLP 2024, "Masked Modeling Duo: Towards a Universal
Audio Pre-training Framework"; nttcslab/m2d, patch_m2d.diff): the fourth method, in one file on the shared core.

    python pretrain_m2d.py --config config/demo_m2d.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 4 pretrain_m2d.py --config config/m2d.yaml data.cache=cache/audioset

Per clip: a random crop of model.crop_frames log-mel frames, standardised with the scalar mean/std of up to
data.norm_clips training clips, cut into [16, 16] patches (the audio ViT, models.AudioViT; readout "stack").
A random 70 % of each clip's patches (its own permutation) is masked. The online ViT encodes the visible
patches; the target ViT (an EMA of the online blocks and final norm, decay 0.99995 -> 0.99999 linearly over
training) encodes only the masked ones, taking their patch + position embeddings from the online net. A
transformer predictor (8 blocks, 512 wide, mask tokens and fixed sin-cos positions) predicts, from the online
outputs, the target's output at every masked patch. Loss: mean over masked patches of 2 - 2 cos between the
prediction and the per-token standardised target (norm_mse). AdamW (0.9, 0.95), weight decay 0.05 (none on
biases and norms), lr 3e-4 * batch / 256 with linear warm-up over 20 epochs then cosine to 0, gradient clip 3.
linear_eval.py evaluates the ONLINE encoder: per time column, the frequency patches' tokens stacked, averaged
over time. Config, run folder, loop, checkpoints, resume and torchrun are trainer.py's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vision_transformer import EncoderBlock

import data
import distributed
import models
import optim
import trainer

DEFAULTS = {
    "data": {"cache": "cache/audioset", "split": None, "norm_clips": 10000},
    "model": {"arch": "vit_audio", "n_mels": 64, "crop_frames": 608, "patch": [16, 16], "width": 768, "depth": 12,
              "heads": 12, "mlp_ratio": 4.0, "pos_embed": "sincos", "readout": "stack"},
    "m2d": {"mask_ratio": 0.7, "pred_width": 512, "pred_depth": 8, "pred_heads": 16, "norm_target": True,
            "ema_start": 0.99995, "ema_final": 0.99999},
    "aug": {"norm": "precomputed"},
    "optim": {"batch_size": 2048, "lr": None, "base_lr": 3e-4, "warmup_epochs": 20, "final_lr": 0.0,
              "weight_decay": 0.05, "betas": [0.9, 0.95], "clip_grad": 3.0},
    "train": {"epochs": 300, "save_every": 50},
}


def validate(cfg: dict) -> None:
    trainer.check_choice(cfg, "model.arch", ("vit_audio",))
    trainer.check_choice(cfg, "aug.norm", ("precomputed", "none"))
    if not 0 < cfg["m2d"]["mask_ratio"] < 1:
        raise trainer.config_lib.ConfigError(f"m2d.mask_ratio must be in (0, 1), got {cfg['m2d']['mask_ratio']}")


def random_masks(batch: int, n: int, ratio: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip, one random permutation of its n patches: (visible [B, int(n (1 - ratio))], masked [B, rest])."""
    order = torch.rand(batch, n, device=device).argsort(dim=1)
    keep = int(n * (1 - ratio))
    return order[:, :keep], order[:, keep:]


def take(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], index [B, n] -> [B, n, D]."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def m2d_loss(pred: torch.Tensor, target: torch.Tensor, norm_target: bool = True) -> torch.Tensor:
    """norm_mse: mean of 2 - 2 cos(pred, target) over tokens; the target is first standardised per token
    ((t - mean) / sqrt(var + 1e-6), unbiased var) as M2D's default norm_pix_loss does."""
    if norm_target:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    return (2 - 2 * (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(-1)).mean()


def ema_decay(step: int, total: int, start: float, final: float) -> float:
    """M2D's target decay: linear from `start` at step 0 to `final` at the last step (total - 1)."""
    return start + (final - start) * step / max(total - 1, 1)


class Predictor(nn.Module):
    """The online outputs (CLS + visible, in `visible` order) -> predictions at the masked patches, in `masked`
    order: Linear to pred_width, mask tokens at the masked places, fixed sin-cos positions, blocks, LayerNorm,
    Linear back to the encoder width (M2D's decoder)."""

    def __init__(self, width: int, grid: tuple[int, int], pred_width: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.embed = nn.Linear(width, pred_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_width).normal_(std=0.02))
        self.register_buffer("pos_embed", torch.cat([torch.zeros(1, pred_width),
                                                     models.sincos_pos_embed(pred_width, *grid)])[None])
        self.blocks = nn.Sequential(*[EncoderBlock(heads, pred_width, int(pred_width * mlp_ratio), 0.0, 0.0)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(pred_width, eps=1e-6)
        self.out = nn.Linear(pred_width, width)

    def forward(self, online: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        x = self.embed(online)
        n = visible.shape[1] + masked.shape[1]
        seq = self.mask_token.expand(len(x), n, -1).scatter(1, visible[..., None].expand(-1, -1, x.shape[-1]),
                                                            x[:, 1:])
        y = self.out(self.norm(self.blocks(torch.cat([x[:, :1], seq], dim=1) + self.pos_embed)))
        return take(y[:, 1:], masked)


class M2DNet(nn.Module):
    """Online encoder + predictor; forward also runs the target (blocks + norm) on the masked patches."""

    def __init__(self, encoder: models.AudioViT, predictor: Predictor):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor

    def encode(self, tokens: torch.Tensor, trunk: nn.Module) -> torch.Tensor:
        """Patch tokens [B, n, D] (positions added) -> CLS + n tokens through trunk.blocks and trunk.norm."""
        cls = self.encoder.cls_token + self.encoder.pos_embed[:, :1]
        return trunk.norm(trunk.blocks(torch.cat([cls.expand(len(tokens), -1, -1), tokens], dim=1)))

    def forward(self, x: torch.Tensor, mask_ratio: float, target: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        patches, grid = self.encoder.patchify(x)
        tokens = patches + self.encoder.pos_embed_for(grid)[:, 1:]
        visible, masked = random_masks(len(x), tokens.shape[1], mask_ratio, x.device)
        pred = self.predictor(self.encode(take(tokens, visible), self.encoder), visible, masked)
        with torch.no_grad():
            goal = self.encode(take(tokens.detach(), masked), target)[:, 1:]
        return pred, goal


@dataclass
class M2D:
    env: trainer.Env
    net: M2DNet
    online: nn.Module  # what is called (DDP and/or compiled)
    target: nn.Module  # EMA copy of net.encoder's blocks and norm
    optimizer: torch.optim.Optimizer
    stats: tuple[float, float]
    peak_lr: float


def build(cfg: dict, env: trainer.Env) -> trainer.Parts:
    """Data and its mean/std, the online ViT + predictor, the EMA target trunk and AdamW."""
    m, o, cache = cfg["m2d"], cfg["optim"], cfg["data"]["cache"]
    df = data.read_manifest(cache)
    if cfg["data"]["split"] is not None:
        df = data.select(df, split=cfg["data"]["split"])
    dataset = data.LogMelCrops(cache, df, frames=cfg["model"]["crop_frames"], random_crop=True)
    stats = data.logmel_stats(cache, df, cfg["data"]["norm_clips"], cfg["seed"]) \
        if cfg["aug"]["norm"] == "precomputed" else (0.0, 1.0)
    encoder = models.build_encoder(cfg)
    predictor = Predictor(encoder.width, encoder.train_grid, m["pred_width"], m["pred_depth"], m["pred_heads"],
                          cfg["model"]["mlp_ratio"])
    net = M2DNet(encoder, predictor).to(env.device)
    target = nn.Module()
    target.blocks, target.norm = copy.deepcopy(encoder.blocks), copy.deepcopy(encoder.norm)
    target.requires_grad_(False)
    groups = optim.decay_groups(net.named_parameters(), o["weight_decay"])
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(o["betas"]), fused=env.device.type == "cuda")
    peak = o["lr"] if o["lr"] is not None else o["base_lr"] * o["batch_size"] / 256
    run = M2D(env, net, env.wrap(net), target, optimizer, stats, peak)
    return trainer.Parts(
        dataset=dataset, batches=data.EpochBatches(len(dataset), o["batch_size"], cfg["seed"]),
        modules={"online": net, "target": target}, optimizers={"adamw": optimizer}, encoder=encoder,
        step=lambda batch, step: train_step(run, batch=batch, step=step), log_keys=["loss", "lr", "ema"],
        meta={"norm_stats": stats if cfg["aug"]["norm"] == "precomputed" else None})


def train_step(run: M2D, *, batch: tuple, step: int) -> dict:
    """One M2D step on this process's clips [b, 1, F, T]: masks drawn per clip (keyed RNG of the step), bf16
    forward (CUDA), fp32 loss, AdamW with the per-step lr, gradient clip, then the EMA of the target."""
    env, m, o = run.env, run.env.cfg["m2d"], run.env.cfg["optim"]
    lr = optim.warmup_cosine(step, int(o["warmup_epochs"] * env.steps_per_epoch), env.total_steps, 0.0,
                             run.peak_lr, o["final_lr"])
    optim.set_lr(run.optimizer, lr)
    x = (batch[0].to(env.device, non_blocking=True) - run.stats[0]) / run.stats[1]
    with env.autocast():
        pred, goal = run.online(x, m["mask_ratio"], run.target)
    loss = m2d_loss(pred.float(), goal.float(), m["norm_target"])
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if o["clip_grad"]:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), o["clip_grad"])
    run.optimizer.step()
    decay = ema_decay(step, env.total_steps, m["ema_start"], m["ema_final"])
    models.ema_update(run.target, run.net.encoder, decay)
    return {"loss": distributed.all_reduce_mean(loss.detach().float()).item(), "lr": lr, "ema": decay}


def resolve_config(path: str, overrides: list[str]) -> dict:
    return trainer.resolve_config(path, overrides, DEFAULTS, validate)


def main(argv: list[str] | None = None) -> dict:
    return trainer.main("m2d", DEFAULTS, build, __doc__, argv, validate)


if __name__ == "__main__":
    trainer.cli("m2d", DEFAULTS, build, __doc__, validate)
