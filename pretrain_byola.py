"""BYOL-A v2 pretraining (Niizumi et al. 2023, "BYOL for Audio: Exploring Pre-trained General-purpose Audio
Representations"; nttcslab/byol-a v2): the method the seed compares MSN with.

    python pretrain_byola.py --config config/demo_byola.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 4 pretrain_byola.py --config config/byola.yaml data.cache=cache/audioset

Per clip: a random crop of model.crop_frames (96) frames of the cached log-mel, normalised with a scalar mean and
std over one such crop of each of up to data.norm_clips (10,000) training clips (PrecomputedNorm,
calc_norm_stats). Two views, each MixupBYOLA (ratio 0.2, log-mixup-exp) -> RandomResizeCrop (virtual crop
1.0-1.5, frequency and time scale 0.6-1.5) -> RandomLinearFader, then NormalizeBatch over both views together
(augment.BYOLAViews). The online net (models.AudioNTT2022 -> projector -> predictor) predicts the EMA target's
projection of the other view, each view through each net on its own (byol-pytorch; byol.joint_views=true: one
2B batch); losses.byol_loss is 2 - 2 cos for each of the two pairs. Adam (lr 1e-4), EMA decay 0.99 after every
step. linear_eval.py evaluates the ONLINE encoder, the one BYOL-A saves. Config, run folder, loop, checkpoints,
resume and torchrun are trainer.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import augment
import data
import distributed
import models
import trainer
from losses import byol_loss

DEFAULTS = {
    "data": {"cache": "cache/audioset", "split": None, "norm_clips": 10000},
    "model": {"arch": "audiontt2022", "n_mels": 64, "crop_frames": 96, "dim": 3072, "base": 64, "mlp_hidden": 2048,
              "dropout": 0.3},
    "byol": {"proj_hidden": 4096, "proj_dim": 256, "ema_decay": 0.99,
             "joint_views": False},  # True: both views as one 2B batch (batch norm over both); see train_step
    "aug": {"norm": "precomputed", "running_norm_epoch_samples": 10, "mixup_ratio": 0.2, "mixup_memory": 2048,
            "fader_gain": 1.0},
    "optim": {"batch_size": 256, "lr": 1e-4, "weight_decay": 0.0},
    "train": {"epochs": 100, "save_every": 10},
}


def validate(cfg: dict) -> None:
    trainer.check_choice(cfg, "model.arch", ("audiontt2022",))
    trainer.check_choice(cfg, "aug.norm", ("precomputed", "running", "none"))


@dataclass
class BYOLA:
    """Everything one BYOL-A step touches: `online` is what is called (DDP and/or compiled), `online_net` and
    `target_net` hold the weights."""
    env: trainer.Env
    views: augment.BYOLAViews
    online_net: models.BYOLNet
    target_net: models.BYOLNet
    online: torch.nn.Module
    target: torch.nn.Module
    optimizer: torch.optim.Optimizer


def build(cfg: dict, env: trainer.Env) -> trainer.Parts:
    """Data and its normalisation statistics, the online net and its EMA target, Adam and the two views."""
    cache = cfg["data"]["cache"]
    df = data.read_manifest(cache, data.TRAIN_COLUMNS)
    if cfg["data"]["split"] is not None:
        df = data.select(df, split=cfg["data"]["split"])
    dataset = data.LogMelCrops(cache, df, frames=cfg["model"]["crop_frames"], random_crop=True)
    stats = None
    if cfg["aug"]["norm"] == "precomputed":
        stats = data.logmel_stats(cache, df, cfg["data"]["norm_clips"], cfg["seed"], frames=cfg["model"]["crop_frames"])

    b = cfg["byol"]
    online_net = models.BYOLNet(models.build_encoder(cfg), b["proj_hidden"], b["proj_dim"],
                                joint_views=b["joint_views"]).to(env.device)
    target_net = online_net.target_copy()
    online, target = env.wrap(online_net), env.wrap(target_net, ddp=False)
    optimizer = torch.optim.Adam(online_net.parameters(), lr=cfg["optim"]["lr"],
                                 weight_decay=cfg["optim"]["weight_decay"], fused=env.device.type == "cuda")
    shape = (cfg["model"]["n_mels"], cfg["model"]["crop_frames"])
    views = augment.BYOLAViews(cfg["aug"], shape, stats, seed=cfg["seed"])
    run = BYOLA(env, views, online_net, target_net, online, target, optimizer)
    return trainer.Parts(
        dataset=dataset, batches=data.training_batches(dataset, cfg["data"], cfg["optim"]["batch_size"], cfg["seed"]),
        modules={"online": online_net, "target": target_net}, optimizers={"adam": optimizer},
        encoder=online_net.encoder, step=lambda batch, step: train_step(run, batch=batch, step=step),
        log_keys=["loss", "lr"],
        state={"views": views}, meta={"norm_stats": stats})


def train_step(run: BYOLA, *, batch: tuple, step: int) -> dict:
    """One BYOL step on this process's clips logmel [b, 1, F, T]: both views of the global batch made on the
    device; the online and the target net each run every view on its own (each batch norm layer sees one
    view, as byol-pytorch's BYOL.forward; byol.joint_views=true: one pass over the 2b views); the symmetric
    loss, Adam, then the EMA update of the target. Returns the global batch's loss and the (constant) learning
    rate."""
    env = run.env
    logmel = distributed.gather_batch(batch[0].to(env.device, non_blocking=True))
    view1, view2 = run.views(logmel, step, env.rank, env.world)
    with env.autocast():
        p1, p2 = run.online(view1, view2)
        with torch.no_grad():
            z1, z2 = run.target(view1, view2)
    loss = byol_loss(p1, p2, z1, z2)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    models.ema_update(run.target_net, run.online_net, env.cfg["byol"]["ema_decay"])
    loss = distributed.all_reduce_mean(loss.detach().float()).item()
    return {"loss": loss, "lr": run.optimizer.param_groups[0]["lr"]}


def resolve_config(path: str, overrides: list[str]) -> dict:
    return trainer.resolve_config(path, overrides, DEFAULTS, validate)


def main(argv: list[str] | None = None) -> dict:
    return trainer.main("byola", DEFAULTS, build, __doc__, argv, validate)


if __name__ == "__main__":
    trainer.cli("byola", DEFAULTS, build, __doc__, validate)
