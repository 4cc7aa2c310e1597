"""MSN pretraining on log-mel spectrograms (Assran et al. 2022, adapted to audio as in the seed; SPEC A2, B1).

    python pretrain_msn.py --config config/demo_msn.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 8 pretrain_msn.py --config config/msn.yaml data.cache=cache/audioset

Per clip: a random crop of model.crop_frames frames from the cache, normalised (RunningNorm by default,
the seed's), then 1 target view, 1 anchor view (rand_size, masked in the encoder) and focal_views focal
views (focal_size), each MixupBYOLA -> random resized crop -> RandomLinearFader. The anchor/focal views go
through the online encoder + head, the target view through the EMA target; the loss is msn_loss.
Writes OUT/config.yaml, OUT/log.csv, OUT/ckpt_last.pt (every epoch) and OUT/ckpt_epochNNN.pt (every
train.save_every epochs and at the end); --resume continues from OUT/ckpt_last.pt exactly.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import augment
import config as config_lib
import data
import models
import utils
from losses import msn_loss

DEFAULTS = {
    "seed": 0,
    "data": {"cache": "cache/audioset", "split": None, "num_workers": 8},
    "model": {"arch": "vit_b_32", "crop_frames": 96, "pretrained": None,
              "image_size": 224,  # vit_b_32 only
              "n_mels": 64, "patch": [16, 16], "width": 384, "depth": 12, "heads": 6, "mlp_ratio": 4.0,
              "pos_embed": "sincos"},  # vit_audio only
    "msn": {"num_prototypes": 1024, "hidden_dim": 2048, "output_dim": 256, "use_bn": True, "temperature": 0.1,
            "sharpen": 0.25, "sinkhorn": True, "me_max_weight": 1.0, "ent_weight": 0.0, "patch_drop": 0.15,
            "focal_views": 10, "ema_start": 0.996, "ema_final": 1.0, "freeze_prototypes": False},
    "aug": {"norm": "running", "running_norm_epoch_samples": 10, "crop": "torchvision",
            "rand_size": [224, 224], "focal_size": [96, 96], "rand_scale": [0.3, 1.0], "focal_scale": [0.05, 0.3],
            "mixup_ratio": 0.2, "mixup_memory": 2048, "fader_gain": 1.0, "normalize_batch": False},
    "optim": {"batch_size": 64, "epochs": 500, "lr": 1e-4, "schedule": "multistep",
              "milestones": [100, 200, 300, 400], "gamma": 0.1,  # multistep (the seed)
              "warmup_epochs": 15, "start_lr": 2e-4, "final_lr": 1e-6,  # warmup_cosine (MSN)
              "weight_decay": 0.04, "final_weight_decay": 0.04, "clip_grad": 3.0},
    "train": {"out_dir": None, "device": "auto", "amp": True, "log_every": 10, "save_every": 50,
              "max_steps": None},
}


def resolve_config(path: str, overrides: list[str]) -> dict:
    """The file's config on top of DEFAULTS (unknown keys rejected), then the command-line overrides."""
    cfg = config_lib.load_config(path)
    config_lib.check_keys(cfg, DEFAULTS)
    merged = copy.deepcopy(DEFAULTS)
    for section, value in cfg.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section].update(value)
        else:
            merged[section] = value
    merged = config_lib.apply_overrides(merged, overrides)
    for key in ("schedule", "crop", "norm"):
        section = "optim" if key == "schedule" else "aug"
        allowed = {"schedule": ("multistep", "warmup_cosine"), "crop": ("torchvision", "byola"),
                   "norm": ("running", "precomputed", "none")}[key]
        if merged[section][key] not in allowed:
            raise config_lib.ConfigError(f"{path}: {section}.{key} must be one of {allowed}")
    return merged


class MSNViews:
    """The seed's view maker: norm (per clip), then per view MixupBYOLA -> random resized crop -> fader.

    views(logmel [B, 1, F, T]) -> target [B, 1, S...], anchor [B, 1, S...], focal [M*B, 1, s...] (view-major).
    Views are made one after the other over the whole batch, so the mixup memory receives the batch once
    per view (as BYOL-A, whose views are independent passes of one augmentation module).
    """

    def __init__(self, aug: dict, focal_views: int, stats: tuple[float, float] | None = None):
        if aug["norm"] == "running":
            self.norm = augment.RunningNorm(aug["running_norm_epoch_samples"])
        elif aug["norm"] == "precomputed":
            self.norm = augment.PrecomputedNorm(*stats)
        else:
            self.norm = None
        self.mixup = augment.MixupBYOLA(aug["mixup_ratio"], aug["mixup_memory"]) if aug["mixup_ratio"] > 0 else None
        if aug["crop"] == "torchvision":
            self.rand_crop = augment.RandomResizedCrop(aug["rand_size"], aug["rand_scale"])
            self.focal_crop = augment.RandomResizedCrop(aug["focal_size"], aug["focal_scale"])
        else:
            self.rand_crop = augment.RandomResizeCropBYOLA(aug["rand_size"])
            self.focal_crop = augment.RandomResizeCropBYOLA(aug["focal_size"])
        self.fader = augment.RandomLinearFader(aug["fader_gain"]) if aug["fader_gain"] > 0 else None
        self.focal_views, self.normalize_batch = focal_views, aug["normalize_batch"]

    def view(self, logmel: torch.Tensor, crop) -> torch.Tensor:
        x = self.mixup(logmel) if self.mixup else logmel
        x = crop(x)
        return self.fader(x) if self.fader else x

    def __call__(self, logmel: torch.Tensor):
        logmel = self.norm(logmel) if self.norm else logmel
        target, anchor = self.view(logmel, self.rand_crop), self.view(logmel, self.rand_crop)
        focal = torch.cat([self.view(logmel, self.focal_crop) for _ in range(self.focal_views)])
        if self.normalize_batch:  # BYOL-A NormalizeBatch, per view size
            big = augment.normalize_batch(torch.cat([target, anchor]))
            target, anchor, focal = *big.chunk(2), augment.normalize_batch(focal)
        return target, anchor, focal

    def state_dict(self) -> dict:
        return {"norm": self.norm.state_dict() if isinstance(self.norm, augment.RunningNorm) else None,
                "mixup": self.mixup.state_dict() if self.mixup else None}

    def load_state_dict(self, state: dict) -> None:
        if state["norm"] is not None:
            self.norm.load_state_dict(state["norm"])
        if state["mixup"] is not None:
            self.mixup.load_state_dict(state["mixup"])


def lr_at(step: int, optim: dict, ipe: int) -> float:
    """Seed: MultiStepLR stepped per epoch. MSN: warmup + cosine over 1.25*epochs, stepped before use."""
    if optim["schedule"] == "multistep":
        return utils.multistep(step // ipe, optim["lr"], optim["milestones"], optim["gamma"])
    return utils.warmup_cosine(step + 1, int(optim["warmup_epochs"] * ipe), int(1.25 * optim["epochs"] * ipe),
                               optim["start_lr"], optim["lr"], optim["final_lr"])


def wd_at(step: int, optim: dict, ipe: int) -> float:
    """Constant, or MSN's cosine weight_decay -> final_weight_decay over 1.25*epochs (SPEC B1)."""
    if optim["final_weight_decay"] == optim["weight_decay"]:
        return optim["weight_decay"]
    return utils.cosine(step + 1, int(1.25 * optim["epochs"] * ipe), optim["weight_decay"], optim["final_weight_decay"])


def epoch_loader(dataset, cfg: dict, epoch: int, rank: int, world: int, skip_batches: int = 0):
    """This process's batches of one epoch: DistributedSampler order (seed + epoch), drop_last, minus the
    first `skip_batches` (mid-epoch resume); worker seeds from a generator seeded per epoch and rank."""
    batch_size = cfg["optim"]["batch_size"]
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"],
                                 drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)[skip_batches * batch_size:]
    generator = torch.Generator().manual_seed(cfg["seed"] * 100003 + epoch * 1009 + rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=True, generator=generator,
                      num_workers=cfg["data"]["num_workers"], pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt_last.pt")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    # ---------------------------------------------------------------- config
    cfg = resolve_config(args.config, args.overrides)
    rank, world, device = utils.init_distributed()
    if cfg["train"]["device"] != "auto":
        device = torch.device(cfg["train"]["device"])
    out_dir = Path(cfg["train"]["out_dir"] or f"runs/{cfg['_meta']['config_name']}")
    cfg["train"]["out_dir"] = str(out_dir)
    cfg["_meta"]["git"] = utils.git_commit()
    utils.seed_everything(cfg["seed"])  # the same initial weights and prototypes in every process
    ckpt = None
    if args.resume:
        path = out_dir / "ckpt_last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt.get("kind") != "msn" or ckpt["config"]["model"] != cfg["model"]:
            raise ValueError(f"{path}: not an MSN checkpoint of this model config")
    if utils.is_main():
        config_lib.save_config(cfg, out_dir / "config.yaml")

    # ---------------------------------------------------------------- data
    cache = cfg["data"]["cache"]
    df = data.read_manifest(cache)
    if cfg["data"]["split"] is not None:
        df = data.select(df, split=cfg["data"]["split"])
    dataset = data.LogMelCrops(cache, df, frames=cfg["model"]["crop_frames"], random_crop=True)
    ipe = len(DistributedSampler(dataset, num_replicas=world, rank=rank, drop_last=True)) // cfg["optim"]["batch_size"]
    if ipe == 0:
        raise ValueError(f"{cache}: {len(dataset)} clips is less than one batch of "
                         f"{cfg['optim']['batch_size']} per process; lower optim.batch_size")
    total_steps = cfg["optim"]["epochs"] * ipe
    stats = data.logmel_stats(cache, df) if cfg["aug"]["norm"] == "precomputed" else None
    views = MSNViews(cfg["aug"], cfg["msn"]["focal_views"], stats)

    # ---------------------------------------------------------------- model
    m = cfg["msn"]
    encoder = models.build_encoder(cfg)
    if cfg["model"]["pretrained"] and ckpt is None:
        models.load_torchvision_vit(encoder, cfg["model"]["pretrained"])
    head = models.MSNHead(encoder.embed_dim, m["hidden_dim"], m["output_dim"], m["use_bn"])
    online = models.MSNNet(encoder, head).to(device)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    prototypes = torch.empty(m["num_prototypes"], m["output_dim"])
    bound = 1.0 / m["output_dim"] ** 0.5
    prototypes = torch.nn.Parameter(prototypes.uniform_(-bound, bound).to(device),
                                    requires_grad=not m["freeze_prototypes"])
    utils.seed_everything(cfg["seed"] + rank)  # then distinct augmentation draws per process
    if world > 1:
        if device.type == "cuda":  # MSN syncs the head's BN across GPUs (msn_train.py L176-178); CPU cannot
            online = torch.nn.SyncBatchNorm.convert_sync_batchnorm(online)
            target = torch.nn.SyncBatchNorm.convert_sync_batchnorm(target)
        online = torch.nn.parallel.DistributedDataParallel(online, device_ids=[device] if device.type == "cuda"
                                                           else None)
    online_module = online.module if world > 1 else online

    # ---------------------------------------------------------------- optimiser & schedules
    o = cfg["optim"]
    groups = utils.decay_groups(online_module.named_parameters(), o["weight_decay"])
    if prototypes.requires_grad:
        groups.append({"params": [prototypes], "weight_decay": 0.0, "lars_exclude": True})
    optimizer = torch.optim.AdamW(groups, lr=o["lr"])
    start_epoch, step, last_ckpt = 0, 0, None
    if ckpt is not None:
        online_module.load_state_dict(ckpt["online"])
        target.load_state_dict(ckpt["target"])
        prototypes.data.copy_(ckpt["prototypes"])
        optimizer.load_state_dict(ckpt["optimizer"])
        mine = ckpt["per_process"][rank] if len(ckpt["per_process"]) == world else ckpt["per_process"][0]
        views.load_state_dict(mine["views"])
        utils.set_rng_state(mine["rng"])
        if len(ckpt["per_process"]) != world:  # another world size: keep the processes' draws distinct
            utils.seed_everything(cfg["seed"] + rank + 7919 * step)
        start_epoch, step, last_ckpt = ckpt["epoch"], ckpt["step"], out_dir / "ckpt_last.pt"
    amp = cfg["train"]["amp"] and device.type == "cuda"
    fields = ["step", "epoch", "loss", "ploss", "me_max", "ent", "perplexity", "lr", "wd", "momentum", "clips_per_s"]
    log = utils.CSVLog(out_dir / "log.csv", fields, resume_step=step if ckpt else None) if utils.is_main() else None

    def per_process_state() -> list[dict]:
        """Every process's RNG and augmentation state (mixup memory, RunningNorm), in rank order."""
        local = {"rng": utils.rng_state(), "views": views.state_dict()}
        if world == 1:
            return [local]
        states = [None] * world
        torch.distributed.all_gather_object(states, local)
        return states

    def save(epoch: int, name: str, states: list[dict]) -> Path:
        state = {"kind": "msn", "config": cfg, "encoder": target.encoder.state_dict(), "epoch": epoch, "step": step,
                 "online": online_module.state_dict(), "target": target.state_dict(),
                 "prototypes": prototypes.detach().cpu(), "optimizer": optimizer.state_dict(),
                 "per_process": states, "git": cfg["_meta"]["git"]}
        utils.atomic_torch_save(state, out_dir / name)
        return out_dir / name

    # ---------------------------------------------------------------- loop
    max_steps = cfg["train"]["max_steps"]
    history = []
    for epoch in range(start_epoch, o["epochs"]):
        skip = step - epoch * ipe  # > 0 only when resuming mid-epoch
        loader = epoch_loader(dataset, cfg, epoch, rank, world, skip)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{o['epochs']}", disable=not utils.is_main(), leave=False)
        tick = time.time()
        for logmel, _ in bar:
            lr, wd = lr_at(step, o, ipe), wd_at(step, o, ipe)
            utils.set_lr(optimizer, lr, wd)
            target_view, anchor_view, focal_views = views(logmel.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                z_anchor = online(anchor_view, focal_views, m["patch_drop"])
                with torch.no_grad():
                    z_target = target(target_view)
            out = msn_loss(z_anchor.float(), z_target.float(), prototypes, m["temperature"], m["sharpen"],
                           m["sinkhorn"], m["me_max_weight"], m["ent_weight"])
            utils.check_finite(out["loss"], step, last_ckpt)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if prototypes.grad is not None:
                utils.all_reduce_sum(prototypes.grad)  # summed, not averaged, across processes (msn L367)
            if o["clip_grad"]:
                torch.nn.utils.clip_grad_norm_(online_module.parameters(), o["clip_grad"])
            optimizer.step()
            momentum = utils.ema_momentum(step, total_steps, m["ema_start"], m["ema_final"])
            models.ema_update(target, online_module, momentum)
            row = {"step": step, "epoch": epoch + 1, "lr": lr, "wd": wd, "momentum": momentum,  # step: 0-based
                   **{k: out[k].item() for k in ("loss", "ploss", "me_max", "ent", "perplexity")}}
            history.append(row)
            step += 1
            if log and (step % cfg["train"]["log_every"] == 0 or step in (total_steps, max_steps)):
                # losses: mean over the steps since the previous row (of this run), the rest: this step
                recent = history[-min(len(history), (step - 1) % cfg["train"]["log_every"] + 1):]
                mean_row = {**row, **{key: sum(r[key] for r in recent) / len(recent)
                                      for key in ("loss", "ploss", "me_max", "ent", "perplexity")}}
                mean_row["clips_per_s"] = len(logmel) * world * (step - epoch * ipe - skip) / (time.time() - tick)
                log.write(mean_row)
                bar.set_postfix(loss=f"{mean_row['loss']:.3f}", lr=f"{lr:.2e}")
            if max_steps is not None and step >= max_steps:
                break
        finished = step == (epoch + 1) * ipe
        states = per_process_state()
        if utils.is_main():
            last_ckpt = save(epoch + 1 if finished else epoch, "ckpt_last.pt", states)
            if finished and ((epoch + 1) % cfg["train"]["save_every"] == 0 or epoch + 1 == o["epochs"]):
                save(epoch + 1, f"ckpt_epoch{epoch + 1:03d}.pt", states)
        if not finished or (max_steps is not None and step >= max_steps):
            break
    if utils.is_main():
        print(f"done: step {step}, loss {history[-1]['loss'] if history else float('nan'):.4f}, "
              f"checkpoint {last_ckpt}")
    return {"history": history, "out_dir": out_dir, "step": step}


if __name__ == "__main__":
    main(sys.argv[1:])
