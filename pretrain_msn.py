"""MSN pretraining on log-mel spectrograms (Assran et al. 2022, adapted to audio as in the seed; facebookresearch/msn).

    python pretrain_msn.py --config config/demo_msn.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 8 pretrain_msn.py --config config/msn.yaml data.cache=cache/audioset

Per clip: a random crop of model.crop_frames frames from the cache, normalised (RunningNorm by default,
the seed's), then 1 target view, 1 anchor view (rand_size, masked in the encoder) and focal_views focal
views (focal_size), each MixupBYOLA -> random resized crop -> RandomLinearFader (augment.MSNViews, made
batched on the training device). The anchor/focal views go through the online encoder + head, the target
view through the EMA target; the loss is losses.msn_loss. Config, run folder, loop, checkpoints, resume and
torchrun are trainer.py's (README "Training core"); linear_eval.py evaluates the EMA target's encoder.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

import augment
import data
import distributed
import models
import optim
import randomness
import trainer
from losses import msn_loss

DEFAULTS = {
    "data": {"cache": "cache/audioset", "split": None, "num_workers": 8},
    "model": {"arch": "vit_b_32", "crop_frames": 96, "pretrained": None,
              "image_size": 224,  # vit_b_32 only
              "n_mels": 64, "patch": [16, 16], "width": 384, "depth": 12, "heads": 6, "mlp_ratio": 4.0,
              "pos_embed": "sincos", "readout": "token"},  # vit_audio only
    "msn": {"num_prototypes": 1024, "hidden_dim": 2048, "output_dim": 256, "use_bn": True, "temperature": 0.1,
            "sharpen": 0.25, "sinkhorn": True, "me_max_weight": 1.0, "ent_weight": 0.0, "patch_drop": 0.15,
            "focal_views": 10, "ema_start": 0.996, "ema_final": 1.0, "freeze_prototypes": False},
    "aug": {"norm": "running", "running_norm_epoch_samples": 10, "crop": "torchvision",
            "rand_size": [224, 224], "focal_size": [96, 96], "rand_scale": [0.3, 1.0], "focal_scale": [0.05, 0.3],
            "mixup_ratio": 0.2, "mixup_memory": 2048, "fader_gain": 1.0, "normalize_batch": False},
    "optim": {"batch_size": 64, "lr": 1e-4, "schedule": "multistep",
              "milestones": [100, 200, 300, 400], "gamma": 0.1,  # multistep (the seed)
              "warmup_epochs": 15, "start_lr": 2e-4, "final_lr": 1e-6,  # warmup_cosine (MSN)
              "weight_decay": 0.04, "final_weight_decay": 0.04, "clip_grad": 3.0},
    "train": {"epochs": 500, "save_every": 50},
}
LOSS_KEYS = ("loss", "ploss", "me_max", "ent", "perplexity")


def validate(cfg: dict) -> None:
    trainer.check_choice(cfg, "optim.schedule", ("multistep", "warmup_cosine"))
    trainer.check_choice(cfg, "aug.crop", ("torchvision", "byola"))
    trainer.check_choice(cfg, "aug.norm", ("running", "precomputed", "none"))


def lr_at(step: int, o: dict, ipe: int, epochs: int) -> float:
    """Seed: MultiStepLR stepped per epoch. MSN: warmup + cosine over 1.25*epochs, stepped before use."""
    if o["schedule"] == "multistep":
        return optim.multistep(step // ipe, o["lr"], o["milestones"], o["gamma"])
    return optim.warmup_cosine(step, int(o["warmup_epochs"] * ipe), int(1.25 * epochs * ipe),
                               o["start_lr"], o["lr"], o["final_lr"], first=optim.STEPPED_BEFORE_USE)


def wd_at(step: int, o: dict, ipe: int, epochs: int) -> float:
    """Constant, or MSN's cosine weight_decay -> final_weight_decay over 1.25*epochs (facebookresearch/msn)."""
    if o["final_weight_decay"] == o["weight_decay"]:
        return o["weight_decay"]
    return optim.cosine(step, int(1.25 * epochs * ipe), o["weight_decay"], o["final_weight_decay"],
                        first=optim.STEPPED_BEFORE_USE)


@dataclass
class MSN:
    """Everything one MSN step touches: `online`/`target` are what is called (DDP and/or compiled), the
    `*_net` modules hold the weights."""
    env: trainer.Env
    views: augment.MSNViews
    online_net: models.MSNNet
    target_net: models.MSNNet
    prototypes: models.Prototypes
    online: torch.nn.Module
    target: torch.nn.Module
    optimizer: torch.optim.Optimizer


def build(cfg: dict, env: trainer.Env) -> trainer.Parts:
    """Data, the online and EMA target nets, the prototypes, AdamW and the views. Under torchrun the batch norms
    (the head's: msn_train.py L176-178) see the global batch, the online net is DDP-wrapped and the prototypes'
    gradient is summed over processes in train_step (facebookresearch/msn)."""
    m, cache = cfg["msn"], cfg["data"]["cache"]
    df = data.read_manifest(cache, data.TRAIN_COLUMNS)
    if cfg["data"]["split"] is not None:
        df = data.select(df, split=cfg["data"]["split"])
    dataset = data.LogMelCrops(cache, df, frames=cfg["model"]["crop_frames"], random_crop=True)
    stats = data.logmel_stats(cache, df) if cfg["aug"]["norm"] == "precomputed" else None

    encoder = models.build_encoder(cfg)
    if cfg["model"]["pretrained"]:
        models.load_torchvision_vit(encoder, cfg["model"]["pretrained"])
    head = models.MSNHead(encoder.embed_dim, m["hidden_dim"], m["output_dim"], m["use_bn"])
    online_net = models.MSNNet(encoder, head).to(env.device)
    target_net = copy.deepcopy(online_net).requires_grad_(False)
    prototypes = models.Prototypes(m["num_prototypes"], m["output_dim"], not m["freeze_prototypes"]).to(env.device)
    online, target = env.wrap(online_net), env.wrap(target_net, ddp=False)

    groups = optim.decay_groups(online_net.named_parameters(), cfg["optim"]["weight_decay"])
    if not m["freeze_prototypes"]:
        groups.append({"params": [prototypes.weight], "weight_decay": 0.0, "lars_exclude": True})
    optimizer = torch.optim.AdamW(groups, lr=cfg["optim"]["lr"], fused=env.device.type == "cuda")
    views = augment.MSNViews(cfg["aug"], m["focal_views"], stats, seed=cfg["seed"])
    run = MSN(env, views, online_net, target_net, prototypes, online, target, optimizer)
    return trainer.Parts(
        dataset=dataset, batches=data.training_batches(dataset, cfg["data"], cfg["optim"]["batch_size"], cfg["seed"]),
        modules={"online": online_net, "target": target_net, "prototypes": prototypes},
        optimizers={"adamw": optimizer}, encoder=target_net.encoder,
        step=lambda batch, step: train_step(run, batch=batch, step=step),
        log_keys=[*LOSS_KEYS, "lr", "wd", "momentum"], mean_keys=LOSS_KEYS, state={"views": views},
        meta={"norm_stats": stats})


def train_step(run: MSN, *, batch: tuple, step: int) -> dict:
    """One MSN step on this process's clips logmel [b, 1, F, T]: views of the global batch on the device, bf16
    forward (CUDA), fp32 loss, AdamW, EMA. Returns the schedules' values and the global batch's losses."""
    env, m, o = run.env, run.env.cfg["msn"], run.env.cfg["optim"]
    epochs = env.cfg["train"]["epochs"]
    lr, wd = lr_at(step, o, env.steps_per_epoch, epochs), wd_at(step, o, env.steps_per_epoch, epochs)
    optim.set_lr(run.optimizer, lr, wd)
    torch.manual_seed(randomness.key_seed(env.cfg["seed"], step))  # the token mask: the same in every process
    logmel = distributed.gather_batch(batch[0].to(env.device, non_blocking=True))
    target_view, anchor_view, focal_views = run.views(logmel, step, env.rank, env.world)
    with env.autocast():
        z_anchor = run.online(anchor_view, focal_views, m["patch_drop"])
        with torch.no_grad():
            z_target = run.target(target_view)
    out = msn_loss(z_anchor.float(), z_target.float(), run.prototypes.weight, m["temperature"], m["sharpen"],
                   m["sinkhorn"], m["me_max_weight"], m["ent_weight"])
    run.optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if run.prototypes.weight.grad is not None:
        distributed.all_reduce_sum(run.prototypes.weight.grad)  # summed, not averaged, across processes (msn L367)
    if o["clip_grad"]:
        torch.nn.utils.clip_grad_norm_(run.online_net.parameters(), o["clip_grad"])
    run.optimizer.step()
    momentum = optim.ema_momentum(step, env.total_steps, m["ema_start"], m["ema_final"])
    models.ema_update(run.target_net, run.online_net, momentum)
    values = distributed.all_reduce_mean(torch.stack([out[key].detach().float() for key in LOSS_KEYS]))
    return {**dict(zip(LOSS_KEYS, values.tolist())), "lr": lr, "wd": wd, "momentum": momentum}


def bench_views(cfg: dict):
    """For `bench.py augment`: (per_sample(logmel, state), make_batched(), description) of this config's views.
    per_sample is the pipeline a data-loader worker would run clip by clip: RunningNorm, then per view
    MixupBYOLA -> torchvision RandomResizedCrop -> RandomLinearFader (augment's per-sample classes)."""
    aug, focal = cfg["aug"], cfg["msn"]["focal_views"]

    def per_sample(logmel: torch.Tensor, state: dict) -> None:
        if not state:
            state.update(norm=augment.RunningNorm(aug["running_norm_epoch_samples"]),
                         mixup=augment.MixupBYOLA(aug["mixup_ratio"], aug["mixup_memory"]),
                         rand=augment.RandomResizedCrop(aug["rand_size"], aug["rand_scale"]),
                         focal=augment.RandomResizedCrop(aug["focal_size"], aug["focal_scale"]),
                         fader=augment.RandomLinearFader(aug["fader_gain"]))
        for clip in logmel.split(1):
            clip = state["norm"](clip)
            for crop in [state["rand"]] * 2 + [state["focal"]] * focal:
                state["fader"](crop(state["mixup"](clip)))

    what = (f"1 + 1 x {aug['rand_size']} and {focal} x {aug['focal_size']} per clip, crop '{aug['crop']}', "
            f"norm '{aug['norm']}'")
    return per_sample, lambda: augment.MSNViews(aug, focal, seed=0), what


def resolve_config(path: str, overrides: list[str]) -> dict:
    return trainer.resolve_config(path, overrides, DEFAULTS, validate)


def main(argv: list[str] | None = None) -> dict:
    return trainer.main("msn", DEFAULTS, build, __doc__, argv, validate)


if __name__ == "__main__":
    trainer.cli("msn", DEFAULTS, build, __doc__, validate)
