"""MSN pretraining on log-mel spectrograms (Assran et al. 2022, adapted to audio as in the seed; SPEC A2, B1).

    python pretrain_msn.py --config config/demo_msn.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 8 pretrain_msn.py --config config/msn.yaml data.cache=cache/audioset

Per clip: a random crop of model.crop_frames frames from the cache, normalised (RunningNorm by default,
the seed's), then 1 target view, 1 anchor view (rand_size, masked in the encoder) and focal_views focal
views (focal_size), each MixupBYOLA -> random resized crop -> RandomLinearFader. The anchor/focal views go
through the online encoder + head, the target view through the EMA target; the loss is msn_loss.
The loader only reads crops; the views are made batched on the training device (MSNViews). Under torchrun
(optim.batch_size per process) every draw is keyed by (seed, step, view, global batch position), so N
processes train as one process on the global batch (tests/test_distributed.py).
Writes OUT/config.yaml, OUT/log.csv, OUT/ckpt_last.pt (every epoch) and OUT/ckpt_epochNNN.pt (every
train.save_every epochs and at the end); --resume continues from OUT/ckpt_last.pt exactly.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
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
    "train": {"out_dir": None, "device": "auto", "amp": True, "compile": False, "log_every": 10, "save_every": 50,
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
    """The seed's view maker, batched on the training device: norm (per clip), then per view MixupBYOLA ->
    random resized crop -> RandomLinearFader (SPEC A2, B2).

        views = MSNViews(cfg["aug"], focal_views=10, seed=cfg["seed"])
        target, anchor, focal = views(logmel, step, rank, world)

    logmel [N, 1, F, T] is the GLOBAL batch (utils.gather_batch; process r holds rows r::world). RunningNorm and
    the mixup memory see every clip, so every process holds the same state, and each view's parameters are drawn
    for all N clips from utils.key_generator(seed, step, view), from the ranges of the per-sample augment classes.
    A process returns its own rows, the values a 1-process run gives for those clips: target [b, 1, S...], anchor
    [b, 1, S...], focal [M*b, 1, s...] (view-major). Views are made one after the other and the mixup memory
    receives the batch once per view (BYOL-A: views are independent passes of one augmentation module).
    """

    def __init__(self, aug: dict, focal_views: int, stats: tuple[float, float] | None = None, seed: int = 0):
        if aug["norm"] == "running":
            self.norm = augment.RunningNorm(aug["running_norm_epoch_samples"])
        elif aug["norm"] == "precomputed":
            self.norm = augment.PrecomputedNorm(*stats)
        else:
            self.norm = None
        self.mixup = augment.MixupBYOLA(aug["mixup_ratio"], aug["mixup_memory"]) if aug["mixup_ratio"] > 0 else None
        self.canvas = augment.RandomResizeCropBYOLA().canvas if aug["crop"] == "byola" else None
        self.sizes = [aug["rand_size"]] * 2 + [aug["focal_size"]] * focal_views  # target, anchor, focal views
        self.scales = [aug["rand_scale"]] * 2 + [aug["focal_scale"]] * focal_views
        self.fader_gain, self.focal_views, self.normalize_batch = aug["fader_gain"], focal_views, aug["normalize_batch"]
        self.seed = seed

    def draw(self, n: int, shape: tuple[int, int], step: int, view: int) -> dict:
        """Parameters of view `view` for n clips of log-mel shape (F, T): mixup alphas/picks (against the memory
        as it is now), crop boxes [n, 4], fader gains [n, 2]."""
        g = utils.key_generator(self.seed, step, view)
        params = {}
        if self.mixup:
            params["alphas"], params["picks"] = augment.draw_mixup(g, n, self.mixup.ratio, self.mixup.count,
                                                                   self.mixup.n_memory)
        if self.canvas is None:
            params["boxes"] = augment.draw_rrc_boxes(g, n, *shape, scale=self.scales[view])
        else:
            params["boxes"] = augment.draw_byola_boxes(g, n, *shape)
        if self.fader_gain > 0:
            params["gains"] = augment.draw_fader(g, n, self.fader_gain)
        return params

    def apply(self, logmel: torch.Tensor, params: dict, view: int, rows=slice(None)) -> torch.Tensor:
        """One view of rows `rows` of the normalised global batch logmel [N, 1, F, T] (the memory gets all N)."""
        x = self.mixup.mix(logmel, params["alphas"], params["picks"], rows) if self.mixup else logmel[rows]
        mode = "bilinear" if self.canvas is None else "bicubic"
        x = augment.resized_crop_batch(x if self.canvas is None else self.canvas(x), params["boxes"][rows],
                                       self.sizes[view], mode)
        if self.fader_gain > 0:
            gains = params["gains"][rows]
            x = augment.linear_fade(x, gains[:, 0], gains[:, 1])
        return x

    def __call__(self, logmel: torch.Tensor, step: int = 0, rank: int = 0, world: int = 1):
        logmel = self.norm(logmel) if self.norm else logmel
        rows = slice(rank, None, world)
        views = []
        for view in range(2 + self.focal_views):
            views.append(self.apply(logmel, self.draw(len(logmel), logmel.shape[-2:], step, view), view, rows))
        target, anchor, focal = views[0], views[1], torch.cat(views[2:])
        if self.normalize_batch:  # BYOL-A NormalizeBatch per view size, over the global batch
            big = normalize_global(torch.cat([target, anchor]))
            target, anchor, focal = *big.chunk(2), normalize_global(focal)
        return target, anchor, focal

    def state_dict(self) -> dict:
        return {"norm": self.norm.state_dict() if isinstance(self.norm, augment.RunningNorm) else None,
                "mixup": self.mixup.state_dict() if self.mixup else None}

    def load_state_dict(self, state: dict) -> None:
        if state["norm"] is not None:
            self.norm.load_state_dict(state["norm"])
        if state["mixup"] is not None:
            self.mixup.load_state_dict(state["mixup"])


def normalize_global(x: torch.Tensor) -> torch.Tensor:
    """augment.normalize_batch (mean and unbiased std over all but the channel axis) over every process's x."""
    if utils.world_size() == 1:
        return augment.normalize_batch(x)
    count = utils.all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
    mean = utils.all_reduce_sum(x.sum(dim=(0, 2, 3), keepdim=True)) / count
    var = utils.all_reduce_sum((x - mean).pow(2).sum(dim=(0, 2, 3), keepdim=True)) / (count - 1)
    return (x - mean) / var.sqrt().clamp(float(torch.finfo(torch.float32).eps), float(torch.finfo().max))


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


def epoch_loader(dataset, cfg: dict, epoch: int, rank: int, world: int, skip_batches: int = 0) -> DataLoader:
    """This process's batches of one epoch: DistributedSampler order (a permutation seeded by seed + epoch, process
    r taking positions r::world), drop_last, minus the first `skip_batches` (mid-epoch resume). Each clip's random
    crop is keyed by (seed, step, global batch position), so it does not depend on the number of processes."""
    batch_size = cfg["optim"]["batch_size"]
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg["seed"],
                                 drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    ipe = len(indices) // batch_size
    batches = [indices[k * batch_size:(k + 1) * batch_size] for k in range(skip_batches, ipe)]
    keyed = utils.KeyedBatches(batches, cfg["seed"], epoch * ipe + skip_batches, rank, world)
    return DataLoader(utils.KeyedItems(dataset), batch_sampler=keyed, num_workers=cfg["data"]["num_workers"],
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


LOSS_KEYS = ("loss", "ploss", "me_max", "ent", "perplexity")


@dataclass
class Training:
    """Everything one MSN step touches. `online`/`target` are what is called (DDP-wrapped and/or compiled);
    `online_module`/`target_module` the plain modules (state dicts, EMA, gradient clipping)."""
    cfg: dict
    device: torch.device
    rank: int
    world: int
    ipe: int
    views: MSNViews
    online: torch.nn.Module
    online_module: torch.nn.Module
    target: torch.nn.Module
    target_module: torch.nn.Module
    prototypes: torch.nn.Parameter
    optimizer: torch.optim.Optimizer

    @property
    def total_steps(self) -> int:
        return self.cfg["optim"]["epochs"] * self.ipe


def build_training(cfg: dict, device: torch.device, rank: int, world: int, ipe: int,
                   stats: tuple[float, float] | None = None, load_pretrained: bool = True) -> Training:
    """Views, online and EMA target nets, prototypes and AdamW, the same initial values in every process.

    Under torchrun: batch norm over the global batch (utils.convert_sync_batchnorm; MSN syncs its head's BN,
    msn_train.py L176-178), DDP on the online net; the prototypes stay outside DDP, their gradient is summed
    across processes in train_step (SPEC B1). train.compile wraps the nets with torch.compile; AdamW is fused on CUDA.
    """
    m = cfg["msn"]
    utils.seed_everything(cfg["seed"])
    encoder = models.build_encoder(cfg)
    if cfg["model"]["pretrained"] and load_pretrained:
        models.load_torchvision_vit(encoder, cfg["model"]["pretrained"])
    head = models.MSNHead(encoder.embed_dim, m["hidden_dim"], m["output_dim"], m["use_bn"])
    online_module = models.MSNNet(encoder, head).to(device)
    target_module = copy.deepcopy(online_module)
    for p in target_module.parameters():
        p.requires_grad_(False)
    bound = 1.0 / m["output_dim"] ** 0.5
    prototypes = torch.nn.Parameter(torch.empty(m["num_prototypes"], m["output_dim"]).uniform_(-bound, bound)
                                    .to(device), requires_grad=not m["freeze_prototypes"])
    online = online_module
    if world > 1:
        online_module = utils.convert_sync_batchnorm(online_module, device)
        target_module = utils.convert_sync_batchnorm(target_module, device)
        online = torch.nn.parallel.DistributedDataParallel(
            online_module, device_ids=[device] if device.type == "cuda" else None)
    target = target_module
    if cfg["train"]["compile"]:
        online, target = torch.compile(online), torch.compile(target_module)
    o = cfg["optim"]
    groups = utils.decay_groups(online_module.named_parameters(), o["weight_decay"])
    if prototypes.requires_grad:
        groups.append({"params": [prototypes], "weight_decay": 0.0, "lars_exclude": True})
    optimizer = torch.optim.AdamW(groups, lr=o["lr"], fused=device.type == "cuda")
    views = MSNViews(cfg["aug"], m["focal_views"], stats, seed=cfg["seed"])
    return Training(cfg, device, rank, world, ipe, views, online, online_module, target, target_module, prototypes,
                    optimizer)


def train_step(run: Training, logmel: torch.Tensor, step: int, last_ckpt=None) -> dict:
    """One MSN step on this process's clips logmel [b, 1, F, T]: views on the device, bf16 forward (CUDA), fp32
    loss, AdamW, EMA. Returns the schedules' values and the losses of the GLOBAL batch (mean over processes)."""
    cfg, m, o = run.cfg, run.cfg["msn"], run.cfg["optim"]
    lr, wd = lr_at(step, o, run.ipe), wd_at(step, o, run.ipe)
    utils.set_lr(run.optimizer, lr, wd)
    torch.manual_seed(utils.key_seed(cfg["seed"], step))  # the token mask: the same in every process, keyed by step
    logmel = utils.gather_batch(logmel.to(run.device, non_blocking=True))
    target_view, anchor_view, focal_views = run.views(logmel, step, run.rank, run.world)
    amp = cfg["train"]["amp"] and run.device.type == "cuda"
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=amp):
        z_anchor = run.online(anchor_view, focal_views, m["patch_drop"])
        with torch.no_grad():
            z_target = run.target(target_view)
    out = msn_loss(z_anchor.float(), z_target.float(), run.prototypes, m["temperature"], m["sharpen"],
                   m["sinkhorn"], m["me_max_weight"], m["ent_weight"])
    utils.check_finite(out["loss"], step, last_ckpt)
    run.optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if run.prototypes.grad is not None:
        utils.all_reduce_sum(run.prototypes.grad)  # summed, not averaged, across processes (msn L367)
    if o["clip_grad"]:
        torch.nn.utils.clip_grad_norm_(run.online_module.parameters(), o["clip_grad"])
    run.optimizer.step()
    momentum = utils.ema_momentum(step, run.total_steps, m["ema_start"], m["ema_final"])
    models.ema_update(run.target_module, run.online_module, momentum)
    values = utils.all_reduce_mean(torch.stack([out[key].detach().float() for key in LOSS_KEYS]))
    return {"lr": lr, "wd": wd, "momentum": momentum, **dict(zip(LOSS_KEYS, values.tolist()))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt_last.pt")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # options may sit between key=value overrides

    # ---------------------------------------------------------------- config
    cfg = resolve_config(args.config, args.overrides)
    rank, world, device = utils.init_distributed()
    if cfg["train"]["device"] != "auto":
        device = torch.device(cfg["train"]["device"])
    out_dir = Path(cfg["train"]["out_dir"] or f"runs/{cfg['_meta']['config_name']}")
    cfg["train"]["out_dir"] = str(out_dir)
    cfg["_meta"]["git"] = utils.git_commit()
    ckpt = None
    if args.resume:
        path = out_dir / "ckpt_last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        ckpt = utils.load_checkpoint(path)
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
    stats = data.logmel_stats(cache, df) if cfg["aug"]["norm"] == "precomputed" else None

    # ---------------------------------------------------------------- model, optimiser (schedules: lr_at, wd_at)
    run = build_training(cfg, device, rank, world, ipe, stats, load_pretrained=ckpt is None)
    o = cfg["optim"]
    start_epoch, step, last_ckpt = 0, 0, None
    if ckpt is not None:
        run.online_module.load_state_dict(ckpt["online"])
        run.target_module.load_state_dict(ckpt["target"])
        run.prototypes.data.copy_(ckpt["prototypes"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        states = ckpt["per_process"]  # every process holds the same view state; any world size resumes
        run.views.load_state_dict(states[rank if len(states) == world else 0]["views"])
        start_epoch, step, last_ckpt = ckpt["epoch"], ckpt["step"], out_dir / "ckpt_last.pt"
    fields = ["step", "epoch", *LOSS_KEYS, "lr", "wd", "momentum", "clips_per_s"]
    log = utils.CSVLog(out_dir / "log.csv", fields, resume_step=step if ckpt else None) if utils.is_main() else None

    def per_process_state() -> list[dict]:
        """Every process's RNG and augmentation state (mixup memory, RunningNorm), in rank order."""
        local = {"rng": utils.rng_state(), "views": run.views.state_dict()}
        if world == 1:
            return [local]
        states = [None] * world
        torch.distributed.all_gather_object(states, local)
        return states

    def save(epoch: int, name: str, states: list[dict]) -> Path:
        state = {"kind": "msn", "config": cfg, "encoder": run.target_module.encoder.state_dict(), "epoch": epoch,
                 "step": step, "online": run.online_module.state_dict(), "target": run.target_module.state_dict(),
                 "prototypes": run.prototypes.detach().cpu(), "optimizer": run.optimizer.state_dict(),
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
            row = {"step": step, "epoch": epoch + 1, **train_step(run, logmel, step, last_ckpt)}  # step: 0-based
            history.append(row)
            step += 1
            if log and (step % cfg["train"]["log_every"] == 0 or step in (run.total_steps, max_steps)):
                # losses: mean over the steps since the previous row (of this run), the rest: this step
                recent = history[-min(len(history), (step - 1) % cfg["train"]["log_every"] + 1):]
                mean_row = {**row, **{key: sum(r[key] for r in recent) / len(recent) for key in LOSS_KEYS}}
                mean_row["clips_per_s"] = len(logmel) * world * (step - epoch * ipe - skip) / (time.time() - tick)
                log.write(mean_row)
                bar.set_postfix(loss=f"{mean_row['loss']:.3f}", lr=f"{row['lr']:.2e}")
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
    try:
        main(sys.argv[1:])
    except (config_lib.ConfigError, FileNotFoundError, utils.NonFiniteLoss, ValueError) as err:
        sys.exit(f"pretrain_msn.py: error: {err}")
