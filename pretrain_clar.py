"""CLAR pretraining (Al-Tahan and Mohsenzadeh 2021; SPEC A3, B4): supervised, self-supervised or CLAR.

    python pretrain_clar.py --config config/demo_clar.yaml                       # -> runs/demo_clar
    python pretrain_clar.py --config config/demo_clar.yaml mode=selfsupervised encoder=1d label_fraction=0.1
    python pretrain_clar.py --config config/demo_clar.yaml --resume              # continue from OUT/checkpoint.pt
    python pretrain_clar.py --config config/demo_clar.yaml --resume-from runs/x/checkpoint.pt train.epochs=20
    torchrun --nproc_per_node 4 pretrain_clar.py --config config/clar.yaml      # global batch split over GPUs

Each training clip gives two views, two independent passes of augment.BatchWaveAugment over the same crop, made
batched on the training device (the loader only reads cached waves). The
encoder (models.ClarEncoder: 1-D ResNet18 on the wave, or 2-D ResNet18 on audio.ClarFeatures) maps both to
h [B, 512], the projection head to z [B, 128]. losses.clar_loss: NT-Xent over z of all clips (mode clar,
selfsupervised) + cross entropy of a linear classifier on z for the labelled clips (mode clar, supervised).
A linear online-evaluation head learns from the detached h of view 1 with every clip's true label; its test
accuracy is logged every `train.eval_every` epochs (the paper's learning-speed curves). At the end, a linear
probe on the frozen encoder (the paper's evaluation head, full labels) gives the run's accuracy.

Run folder (train.out_dir, default runs/<config name>): config.yaml, log.csv, checkpoint.pt (the whole
training state, rewritten atomically every train.ckpt_every epochs and at the end), results.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from audio import SAMPLE_RATE, ClarFeatureConfig
from augment import BatchWaveAugment
from config import ConfigError, check_keys, load_config, save_config
from data import LabelMap, WaveClips, read_manifest, select, stratified_subset
from losses import clar_loss
from models import ProjectionHead, build_encoder
from optim import LARS
from utils import (
    CSVLog,
    KeyedBatches,
    KeyedItems,
    NonFiniteLoss,
    all_reduce_mean,
    all_reduce_sum,
    atomic_torch_save,
    atomic_write_text,
    check_finite,
    convert_sync_batchnorm,
    decay_groups,
    git_commit,
    init_distributed,
    is_main,
    key_generator,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_lr,
    set_rng_state,
    warmup_cosine,
)

MODES = ("supervised", "selfsupervised", "clar")
ENCODERS = {"2d": "resnet18_2d", "1d": "resnet18_1d"}
DEFAULTS = {
    "mode": "clar",            # supervised (CE only) | selfsupervised (NT-Xent only) | clar (both)
    "encoder": "2d",           # 2d | 1d; sets model.arch (resnet18_2d | resnet18_1d)
    "label_fraction": 1.0,     # stratified fraction of training clips that keep their label
    "data": {
        "cache": "cache/synth_small",
        "train_folds": [1, 2, 3, 4], "train_split": None,  # rows of these folds and/or split (null = any)
        "test_folds": [5], "test_split": None,
        "classes": None,       # keep only these labels (e.g. the ten digits of Speech Commands); null = all
        "label_seed": 1337,    # seed of the stratified labelled subset
        "num_workers": 4,
    },
    "model": {
        "arch": "resnet18_2d", "width": 64, "kernel_1d": 9, "clip_seconds": 1.0,
        "features": ClarFeatureConfig().to_dict(),
        "proj_hidden": 512, "proj_dim": 128, "proj_batch_norm": False,
    },
    "augment": {
        "names": ["fade", "time_mask"], "p": 1.0, "max_semitones": 15.0, "snr_db": [0.0, 20.0],
        "max_fade": 0.5, "max_mask": 0.125, "mask_noise_std": 0.01, "max_shift": 0.5, "stretch": [0.5, 1.5],
        "n_fft": 512, "hop": 128,
    },
    "loss": {"tau": 0.5, "ce_weight": 1.0, "contrastive": "ntxent"},
    "optim": {"lr": 1.2, "momentum": 0.9, "weight_decay": 1e-4, "eta": 0.001, "warmup_epochs": 10,
              "online_lr": 1e-3},
    "train": {
        "epochs": 1000, "batch_size": 1024,  # global batch (split over processes under torchrun)
        "max_steps": None,     # stop early after this many steps (the schedule still spans `epochs`)
        "seed": 0, "out_dir": None, "device": None,
        "log_every": 10, "eval_every": 10, "ckpt_every": 1,
        "amp": True,           # bf16 autocast on CUDA
        "sync_bn": True,       # batch norm over the global batch under torchrun (SyncBatchNorm on CUDA)
        "channels_last": True,  # NHWC 2-D ResNet on CUDA
        "compile": False,      # torch.compile the model
        "probe_epochs": 300,   # full-batch Adam steps of the final linear probe; 0 = skip
    },
}
LOG_FIELDS = ["step", "epoch", "lr", "loss", "ntxent", "ce", "online_loss", "test_acc", "seconds"]


def resolve_config(cfg: dict) -> dict:
    """Check keys against DEFAULTS, fill what the file leaves out, apply the `encoder` alias, validate."""
    check_keys(cfg, DEFAULTS)
    merged = copy.deepcopy(DEFAULTS)
    for section, value in cfg.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            for key, item in value.items():
                merged[section][key] = ({**merged[section][key], **item} if isinstance(item, dict)
                                        and isinstance(merged[section][key], dict) else item)
        else:
            merged[section] = value
    if merged["mode"] not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {merged['mode']!r}")
    if merged["encoder"] not in ENCODERS:
        raise ConfigError(f"encoder must be one of {list(ENCODERS)}, got {merged['encoder']!r}")
    merged["model"]["arch"] = ENCODERS[merged["encoder"]]
    if merged["loss"]["contrastive"] not in ("ntxent", "supcon"):
        raise ConfigError(f"loss.contrastive must be ntxent or supcon, got {merged['loss']['contrastive']!r}")
    if not 0 < merged["label_fraction"] <= 1:
        raise ConfigError(f"label_fraction must be in (0, 1], got {merged['label_fraction']}")
    if merged["train"]["out_dir"] is None:
        merged["train"]["out_dir"] = f"runs/{merged['_meta']['config_name']}"
    return merged

# ----------------------------------------------------------------------------- data


class TrainClips(Dataset):
    """(wave [L], training target (-1 = unlabelled), true label) of each training clip; the two augmented views
    are made on the training device (augment.BatchWaveAugment in train_step)."""

    def __init__(self, clips: WaveClips, targets: np.ndarray):
        self.clips, self.targets = clips, targets

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        wave, label = self.clips[i]
        return wave, int(self.targets[i]), label


class RatioBatchSampler(Sampler):
    """Batches with a fixed labelled/unlabelled ratio (CLAR's stratified sampling, SPEC A3), rank-sliced.

    Each epoch both pools are shuffled with seed + epoch. A global batch of `batch_size` holds
    round(batch_size * n_labelled / n) labelled clips (at least one if any) and the rest unlabelled; a pool
    that runs out is reshuffled and reused. There are n // batch_size batches (drop last). Process `rank`
    of `world` gets items rank::world of each global batch, so this replaces DistributedSampler.
    """

    def __init__(self, labelled: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world} processes")
        if batch_size > len(labelled):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(labelled)} training clips")
        self.labelled_idx, self.unlabelled_idx = np.flatnonzero(labelled), np.flatnonzero(~labelled)
        n = len(labelled)
        self.n_labelled = int(round(batch_size * len(self.labelled_idx) / n))
        if len(self.labelled_idx):
            self.n_labelled = min(max(self.n_labelled, 1), batch_size - (1 if len(self.unlabelled_idx) else 0))
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's order; `skip` leaves out its first batches (mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return (len(self.labelled_idx) + len(self.unlabelled_idx)) // self.batch_size

    @staticmethod
    def _stream(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        rounds = -(-count // len(pool))
        return np.concatenate([pool[rng.permutation(len(pool))] for _ in range(rounds)])[:count]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n_unlabelled = self.batch_size - self.n_labelled
        labelled = self._stream(self.labelled_idx, len(self) * self.n_labelled, rng)
        unlabelled = self._stream(self.unlabelled_idx, len(self) * n_unlabelled, rng)
        for b in range(self.skip, len(self)):
            batch = np.concatenate([labelled[b * self.n_labelled:(b + 1) * self.n_labelled],
                                    unlabelled[b * n_unlabelled:(b + 1) * n_unlabelled]])
            yield batch[self.rank::self.world].tolist()


def load_splits(cfg: dict):
    """(train rows, test rows, LabelMap) of the cache, after the optional class filter."""
    data = cfg["data"]
    df = read_manifest(data["cache"])
    if data["classes"]:
        df = df[df["label"].isin([str(c) for c in data["classes"]])].reset_index(drop=True)
    train_df = select(df, split=data["train_split"], folds=data["train_folds"])
    test_df = select(df, split=data["test_split"], folds=data["test_folds"])
    if len(train_df) == 0 or len(test_df) == 0:
        raise ValueError(f"{data['cache']}: no training ({len(train_df)}) or test ({len(test_df)}) rows for "
                         f"folds {data['train_folds']}/{data['test_folds']}, splits {data['train_split']}/"
                         f"{data['test_split']}")
    return train_df, test_df, LabelMap.from_labels(train_df["label"])


def training_targets(true_labels: np.ndarray, mode: str, fraction: float, seed: int) -> np.ndarray:
    """Per-clip CE target: the label for the stratified labelled subset, -1 otherwise (always -1 if
    self-supervised)."""
    targets = np.full(len(true_labels), -1, dtype=np.int64)
    if mode != "selfsupervised":
        keep = np.arange(len(true_labels)) if fraction >= 1 else stratified_subset(true_labels, fraction, seed=seed)
        targets[keep] = true_labels[keep]
    return targets

# ----------------------------------------------------------------------------- model


class ClarNet(nn.Module):
    """Encoder + projection head + classifier on z (if the mode has CE) + online head on detached h."""

    def __init__(self, encoder: nn.Module, model_cfg: dict, n_classes: int, with_classifier: bool):
        super().__init__()
        self.encoder = encoder
        self.projection = ProjectionHead(encoder.embed_dim, model_cfg["proj_hidden"], model_cfg["proj_dim"],
                                         model_cfg["proj_batch_norm"])
        self.classifier = nn.Linear(model_cfg["proj_dim"], n_classes) if with_classifier else None
        self.online = nn.Linear(encoder.embed_dim, n_classes)

    def forward(self, wave1: torch.Tensor, wave2: torch.Tensor):
        """Both views [B, L] in one pass -> z1, z2 [B, 128], classifier logits of each view, online logits."""
        n = wave1.shape[0]
        h = self.encoder(torch.cat([wave1, wave2]))
        z = self.projection(h)
        logits = self.classifier(z) if self.classifier is not None else None
        online = self.online(h[:n].detach())
        return z[:n], z[n:], (logits[:n] if logits is not None else None), \
            (logits[n:] if logits is not None else None), online


@torch.no_grad()
def embed_all(encoder: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-encoder embeddings [N, D] and labels [N] of a loader of (wave, label)."""
    encoder.eval()
    feats, labels = [], []
    for wave, label in loader:
        feats.append(encoder.embed(wave.to(device)).float().cpu())
        labels.append(label)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def online_accuracy(net: ClarNet, loader: DataLoader, device: torch.device) -> float:
    """Test accuracy of the online head (each process scores its shard; counts summed over processes).

    Runs under a forked RNG (the loader draws a seed), so evaluating or not never changes training draws.
    """
    net.eval()
    counts = torch.zeros(2, device=device)
    with torch.random.fork_rng(devices=[]):
        for wave, label in loader:
            pred = net.online(net.encoder(wave.to(device))).argmax(1)
            counts += torch.tensor([(pred.cpu() == label).sum().item(), len(label)], device=device)
    all_reduce_sum(counts)
    net.train()
    return (counts[0] / counts[1].clamp_min(1)).item()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 n_classes: int, steps: int, seed: int = 0) -> float:
    """Test accuracy of a linear classifier on standardised frozen embeddings (Adam 1e-3, full batch)."""
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant (dead) units: scale 1, as StandardScaler
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(train_x.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (head(test_x).argmax(1) == test_y).float().mean().item()

# ----------------------------------------------------------------------------- training step


@dataclass
class Training:
    """Everything one CLAR step touches: `net` the plain ClarNet (state dicts), `model` what is called (DDP-wrapped
    and/or compiled)."""
    cfg: dict
    device: torch.device
    rank: int
    world: int
    net: ClarNet
    model: nn.Module
    optimizer: torch.optim.Optimizer
    online_optimizer: torch.optim.Optimizer
    augment: BatchWaveAugment
    total_steps: int
    warmup_steps: int


def build_training(cfg: dict, n_classes: int, device: torch.device, rank: int, world: int,
                   steps_per_epoch: int) -> Training:
    """ClarNet, LARS (+ Adam for the online head) and the on-device augmentation, the same weights everywhere.

    Under torchrun: batch norm over the global batch (train.sync_bn: SyncBatchNorm on CUDA, utils.GlobalBatchNorm
    on CPU), DDP. On CUDA the 2-D ResNet runs channels-last (train.channels_last) and Adam is fused;
    train.compile wraps the model with torch.compile.
    """
    tcfg, ocfg = cfg["train"], cfg["optim"]
    torch.manual_seed(tcfg["seed"])
    net = ClarNet(build_encoder(cfg), cfg["model"], n_classes, cfg["mode"] != "selfsupervised").to(device)
    if tcfg["channels_last"] and device.type == "cuda":
        net.encoder.use_channels_last()
    model = net
    if world > 1:
        if tcfg["sync_bn"]:
            net = convert_sync_batchnorm(net, device)
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tcfg["compile"]:
        model = torch.compile(model)
    trained = [(name, p) for name, p in net.named_parameters() if not name.startswith("online.")]
    optimizer = LARS(decay_groups(trained, ocfg["weight_decay"]), lr=ocfg["lr"], momentum=ocfg["momentum"],
                     eta=ocfg["eta"])
    online_optimizer = torch.optim.Adam(net.online.parameters(), lr=ocfg["online_lr"], fused=device.type == "cuda")
    return Training(cfg, device, rank, world, net, model, optimizer, online_optimizer,
                    BatchWaveAugment(**cfg["augment"]), tcfg["epochs"] * steps_per_epoch,
                    ocfg["warmup_epochs"] * steps_per_epoch)


LOSS_KEYS = ("loss", "ntxent", "ce", "online_loss")


def train_step(run: Training, wave: torch.Tensor, target: torch.Tensor, label: torch.Tensor, step: int,
               last_ckpt=None) -> dict:
    """One CLAR step on this process's clips wave [b, L]: two views augmented on the device (parameters drawn for
    the global batch, keyed by seed, step and view), bf16 forward (CUDA), fp32 losses, LARS. Returns lr and the
    losses of the GLOBAL batch (mean over processes)."""
    cfg, device = run.cfg, run.device
    wave, target, label = (x.to(device, non_blocking=True) for x in (wave, target, label))
    lr = warmup_cosine(step, run.warmup_steps, run.total_steps, 0.0, cfg["optim"]["lr"], 0.0)
    set_lr(run.optimizer, lr)
    rows, n_global = slice(run.rank, None, run.world), len(wave) * run.world
    view1, view2 = (run.augment.apply(wave, run.augment.draw(n_global, wave.shape[-1],
                                                             key_generator(cfg["train"]["seed"], step, view,
                                                                           device=device)), rows)
                    for view in (1, 2))
    amp = cfg["train"]["amp"] and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        z1, z2, logits1, logits2, online_logits = run.model(view1, view2)
    losses = clar_loss(z1, z2, logits1, logits2, target, cfg["mode"], cfg["loss"]["tau"], cfg["loss"]["ce_weight"],
                       cfg["loss"]["contrastive"])
    online_loss = F.cross_entropy(online_logits.float(), label)
    check_finite(losses["loss"], step, last_ckpt)
    run.optimizer.zero_grad(set_to_none=True)
    run.online_optimizer.zero_grad(set_to_none=True)
    (losses["loss"] + online_loss).backward()
    run.optimizer.step()
    run.online_optimizer.step()
    values = {**losses, "online_loss": online_loss}
    values = all_reduce_mean(torch.stack([values[key].detach().float() for key in LOSS_KEYS]))
    return {"lr": lr, **dict(zip(LOSS_KEYS, values.tolist()))}

# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint.pt")
    parser.add_argument("--resume-from", type=Path, default=None, help="continue from this checkpoint file")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # options may sit between key=value overrides
    cfg = resolve_config(load_config(args.config, args.overrides))
    tcfg = cfg["train"]
    out_dir = Path(tcfg["out_dir"])

    rank, world, device = init_distributed()
    if tcfg["device"]:
        device = torch.device(tcfg["device"])
    seed_everything(tcfg["seed"] + rank)
    main_process = is_main()

    # data: the loader only reads cached waves (crops keyed by seed, step and batch position)
    train_df, test_df, labels = load_splits(cfg)
    samples = int(round(cfg["model"]["clip_seconds"] * SAMPLE_RATE))
    true_labels = labels.encode(train_df["label"])
    targets = training_targets(true_labels, cfg["mode"], cfg["label_fraction"], cfg["data"]["label_seed"])
    if cfg["mode"] == "supervised":  # CE only: unlabelled clips carry no signal
        keep = np.flatnonzero(targets >= 0)
        train_df, true_labels, targets = train_df.iloc[keep].reset_index(drop=True), true_labels[keep], targets[keep]
    clips = WaveClips(cfg["data"]["cache"], train_df, labels, samples, random_crop=True)
    train_set = KeyedItems(TrainClips(clips, targets))
    batch_size = tcfg["batch_size"]
    if batch_size > len(train_set):
        batch_size = len(train_set) - len(train_set) % world
        print(f"note: batch_size {tcfg['batch_size']} > {len(train_set)} training clips; using {batch_size}")
    sampler = RatioBatchSampler(targets >= 0, batch_size, tcfg["seed"], rank, world)
    workers = cfg["data"]["num_workers"]
    test_set = WaveClips(cfg["data"]["cache"], test_df, labels, samples)
    test_loader = DataLoader(Subset(test_set, range(rank, len(test_set), world)), batch_size=64,
                             num_workers=workers)

    # model, optimisers (schedules: functions of the global step)
    steps_per_epoch = len(sampler)
    run = build_training(cfg, len(labels), device, rank, world, steps_per_epoch)
    net, optimizer, online_optimizer = run.net, run.optimizer, run.online_optimizer

    # resume
    ckpt_path = out_dir / "checkpoint.pt"
    epoch = step = 0
    resuming = args.resume or args.resume_from is not None
    if resuming:
        path = args.resume_from or ckpt_path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        ckpt = load_checkpoint(path, map_location=device)
        if ckpt.get("kind") != "clar":
            raise ValueError(f"{path}: not a CLAR checkpoint (kind={ckpt.get('kind')!r})")
        net.encoder.load_state_dict(ckpt["encoder"])
        net.projection.load_state_dict(ckpt["projection"])
        if net.classifier is not None:
            net.classifier.load_state_dict(ckpt["classifier"])
        net.online.load_state_dict(ckpt["online"])
        optimizer.load_state_dict(ckpt["optimizer"])
        online_optimizer.load_state_dict(ckpt["online_optimizer"])
        epoch, step = ckpt["epoch"], ckpt["step"]
        rng = ckpt["rng"]  # training draws are keyed by the step; this only restores the rest (any world size)
        set_rng_state(rng[rank if len(rng) == world else 0] if isinstance(rng, list) else rng)
        if main_process:
            print(f"resumed from {path} at epoch {epoch}, step {step}")
    if main_process:
        save_config(cfg, out_dir / "config.yaml")
        print(f"CLAR {cfg['mode']} {cfg['model']['arch']} | {len(train_set)} train / {len(test_set)} test clips, "
              f"{len(labels)} classes, {int((targets >= 0).sum())} labelled | {steps_per_epoch} steps/epoch "
              f"| {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params | {device} x{world} | {out_dir}")
    log = CSVLog(out_dir / "log.csv", LOG_FIELDS, resume_step=step + 1 if resuming else None) \
        if main_process else None

    def save_checkpoint() -> None:
        states = [None] * world
        if world > 1:  # every process's RNG state (training draws are keyed; this keeps the rest exact)
            torch.distributed.all_gather_object(states, rng_state())
        else:
            states = rng_state()
        if main_process:
            atomic_torch_save({
                "kind": "clar", "config": cfg, "git": git_commit(), "labels": labels.names,
                "encoder": net.encoder.state_dict(), "projection": net.projection.state_dict(),
                "classifier": net.classifier.state_dict() if net.classifier is not None else None,
                "online": net.online.state_dict(), "optimizer": optimizer.state_dict(),
                "online_optimizer": online_optimizer.state_dict(), "epoch": epoch, "step": step, "rng": states,
            }, ckpt_path)

    # loop
    start_time, test_acc, stop = time.time(), float("nan"), False
    last_ckpt = str(ckpt_path) if ckpt_path.exists() else None
    while epoch < tcfg["epochs"] and not stop:
        skip = step - epoch * steps_per_epoch
        sampler.set_epoch(epoch, skip=skip)
        loader = DataLoader(train_set, batch_sampler=KeyedBatches(sampler, tcfg["seed"], step, rank, world),
                            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False)
        net.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg['epochs']}", disable=not main_process, leave=False)
        for wave, target, label in bar:
            row = train_step(run, wave, target, label, step, last_ckpt)
            step += 1
            if main_process and (step % tcfg["log_every"] == 0 or step == 1):
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}")
                log.write({"step": step, "epoch": epoch, **row, "seconds": time.time() - start_time})
            if tcfg["max_steps"] is not None and step >= tcfg["max_steps"]:
                stop = True
                break
        if step == (epoch + 1) * steps_per_epoch:  # the epoch is complete
            epoch += 1
            if epoch % tcfg["eval_every"] == 0 or epoch == tcfg["epochs"] or stop:
                test_acc = online_accuracy(net, test_loader, device)
                if main_process:
                    log.write({"step": step, "epoch": epoch, "test_acc": test_acc,
                               "seconds": time.time() - start_time})
                    print(f"epoch {epoch} step {step}: loss {row['loss']:.4f} online test acc {test_acc:.3f}")
        if epoch % tcfg["ckpt_every"] == 0 or epoch == tcfg["epochs"] or stop:
            save_checkpoint()
            last_ckpt = str(ckpt_path)

    # final linear probe on the frozen encoder (the paper's evaluation head, full labels)
    results = {"mode": cfg["mode"], "arch": cfg["model"]["arch"], "label_fraction": cfg["label_fraction"],
               "epoch": epoch, "step": step, "online_test_acc": test_acc, "probe_test_acc": None,
               "out_dir": str(out_dir)}
    if main_process and tcfg["probe_epochs"] > 0:
        probe_train = WaveClips(cfg["data"]["cache"], load_splits(cfg)[0], labels, samples)
        train_x, train_y = embed_all(net.encoder, DataLoader(probe_train, batch_size=64, num_workers=workers), device)
        test_x, test_y = embed_all(net.encoder, DataLoader(test_set, batch_size=64, num_workers=workers), device)
        results["probe_test_acc"] = linear_probe(train_x, train_y, test_x, test_y, len(labels),
                                                 tcfg["probe_epochs"], tcfg["seed"])
        print(f"linear probe test accuracy {results['probe_test_acc']:.3f}")
    if main_process:
        atomic_write_text(json.dumps(results, indent=2) + "\n", out_dir / "results.json")
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, FileNotFoundError, NonFiniteLoss, ValueError) as err:
        sys.exit(f"pretrain_clar.py: error: {err}")
