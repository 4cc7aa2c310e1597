"""CLAR pretraining (Al-Tahan and Mohsenzadeh 2021; haideraltahan/CLAR code): supervised, self-supervised or CLAR.

    python pretrain_clar.py --config config/demo_clar.yaml                       # -> runs/demo_clar
    python pretrain_clar.py --config config/demo_clar.yaml mode=selfsupervised encoder=1d label_fraction=0.1
    python pretrain_clar.py --config config/demo_clar.yaml --resume              # continue from OUT/ckpt_last.pt
    torchrun --nproc_per_node 4 pretrain_clar.py --config config/clar.yaml      # global batch split over GPUs

Each training clip gives two views, two independent passes of augment_wave.BatchWaveAugment over the same crop,
made batched on the training device. The encoder (models.ClarEncoder: 1-D ResNet18 on the wave, or 2-D
ResNet18 on audio.ClarFeatures) maps both to h [B, 512], the projection head to z [B, 128]. losses.clar_loss:
NT-Xent over z of all clips (modes clar, selfsupervised) + cross entropy of a linear classifier on z for the
labelled clips (modes clar, supervised). A linear online head learns from the detached h of view 1 with every
clip's true label; its test accuracy is logged every `train.eval_every` epochs (the paper's learning-speed
curves). At the end the EVAR linear probe (probe.py) on the frozen encoder gives the run's accuracy
(train.final_probe). Config, run folder, loop, checkpoints, resume and torchrun are trainer.py's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import data
import distributed
import models
import optim
import probe
import randomness
import trainer
from audio import SAMPLE_RATE, ClarFeatureConfig
from augment_wave import BatchWaveAugment
from config import ConfigError
from losses import clar_loss

MODES = ("supervised", "selfsupervised", "clar")
ENCODERS = {"2d": "resnet18_2d", "1d": "resnet18_1d"}
DEFAULTS = {
    "mode": "clar",            # supervised (CE only) | selfsupervised (NT-Xent only) | clar (both)
    "encoder": "2d",           # 2d | 1d; sets model.arch (resnet18_2d | resnet18_1d)
    "label_fraction": 1.0,     # stratified fraction of training clips that keep their label
    "data": {
        "train_folds": [1, 2, 3, 4], "train_split": None,  # rows of these folds and/or split (null = any)
        "test_folds": [5], "test_split": None,
        "classes": None,       # keep only these labels (e.g. the ten digits of Speech Commands); null = all
        "label_seed": 1337,    # seed of the stratified labelled subset
    },
    "model": {
        "arch": "resnet18_2d", "width": 64, "kernel_1d": 9, "clip_seconds": 1.0,
        "features": ClarFeatureConfig().to_dict(),
        "proj_hidden": 512, "proj_dim": 128, "proj_batch_norm": False,
        "joint_views": False,  # True: both views through encoder + projection as one 2B batch (BN over both)
    },
    "aug": {
        "names": ["fade", "time_mask"], "p": 1.0, "max_semitones": 15.0, "snr_db": [0.0, 20.0],
        "max_fade": 0.5, "max_mask": 0.125, "mask_noise_std": 0.01, "max_shift": 0.5, "stretch": [0.5, 1.5],
        "n_fft": 512, "hop": 128,
    },
    "loss": {"tau": 0.5, "ce_weight": 1.0, "contrastive": "ntxent"},
    "optim": {"batch_size": 1024, "lr": 1.2, "momentum": 0.9, "weight_decay": 1e-4, "eta": 0.001,
              "warmup_epochs": 10, "online_lr": 1e-3},
    "train": {
        "epochs": 1000, "eval_every": 10,
        "sync_bn": True,       # batch norm over the global batch under torchrun (SyncBatchNorm on CUDA)
        "channels_last": True,  # NHWC 2-D ResNet on CUDA
        "final_probe": True,   # the EVAR probe on the frozen encoder at the end of the run
    },
}
LOSS_KEYS = ("loss", "ntxent", "ce", "online_loss")


def validate(cfg: dict) -> None:
    """Check the choices and apply the `encoder` alias (model.arch)."""
    trainer.check_choice(cfg, "mode", MODES)
    trainer.check_choice(cfg, "encoder", tuple(ENCODERS))
    trainer.check_choice(cfg, "loss.contrastive", ("ntxent", "supcon"))
    if not 0 < cfg["label_fraction"] <= 1:
        raise ConfigError(f"label_fraction must be in (0, 1], got {cfg['label_fraction']}")
    cfg["model"]["arch"] = ENCODERS[cfg["encoder"]]


def load_splits(cfg: dict):
    """(train rows, test rows, LabelMap) of the cache, after the optional class filter."""
    d = cfg["data"]
    df = data.read_manifest(d["cache"])
    if d["classes"]:
        df = df[df["label"].isin([str(c) for c in d["classes"]])].reset_index(drop=True)
    train_df = data.select(df, split=d["train_split"], folds=d["train_folds"])
    test_df = data.select(df, split=d["test_split"], folds=d["test_folds"])
    if len(train_df) == 0 or len(test_df) == 0:
        raise ValueError(f"{d['cache']}: no training ({len(train_df)}) or test ({len(test_df)}) rows for "
                         f"folds {d['train_folds']}/{d['test_folds']}, splits {d['train_split']}/{d['test_split']}")
    return train_df, test_df, data.LabelMap.from_labels(train_df["label"])


def training_targets(true_labels: np.ndarray, mode: str, fraction: float, seed: int) -> np.ndarray:
    """Per-clip CE target: the label for the stratified labelled subset, -1 otherwise (always -1 if
    self-supervised)."""
    targets = np.full(len(true_labels), -1, dtype=np.int64)
    if mode != "selfsupervised":
        keep = (np.arange(len(true_labels)) if fraction >= 1
                else data.stratified_subset(true_labels, fraction, seed=seed))
        targets[keep] = true_labels[keep]
    return targets


@torch.no_grad()
def online_accuracy(net: models.ClarNet, loader: DataLoader, device: torch.device) -> float:
    """Test accuracy of the online head (each process scores its shard; counts summed over processes)."""
    net.eval()
    counts = torch.zeros(2, device=device)
    for wave, label in loader:
        pred = net.online(net.encoder(wave.to(device))).argmax(1)
        counts += torch.tensor([(pred.cpu() == label).sum().item(), len(label)], device=device)
    distributed.all_reduce_sum(counts)
    net.train()
    return (counts[0] / counts[1].clamp_min(1)).item()


def build(cfg: dict, env: trainer.Env) -> trainer.Parts:
    """Clips and their training targets, ClarNet, LARS (+ Adam for the online head) and the on-device views.
    On CUDA the 2-D ResNet runs channels-last (train.channels_last)."""
    train_df, test_df, labels = load_splits(cfg)
    samples = int(round(cfg["model"]["clip_seconds"] * SAMPLE_RATE))
    true_labels = labels.encode(train_df["label"])
    targets = training_targets(true_labels, cfg["mode"], cfg["label_fraction"], cfg["data"]["label_seed"])
    probe_df = train_df  # the final probe sees every training clip with its true label
    if cfg["mode"] == "supervised":  # CE only: unlabelled clips carry no signal
        keep = np.flatnonzero(targets >= 0)
        train_df, targets = train_df.iloc[keep].reset_index(drop=True), targets[keep]
    if cfg["optim"]["batch_size"] > len(targets):  # e.g. supervised on 1 % of the labels
        lowered = len(targets) - len(targets) % env.world
        print(f"note: optim.batch_size {cfg['optim']['batch_size']} > {len(targets)} training clips; using {lowered}")
        cfg["optim"]["batch_size"] = lowered
    cache = cfg["data"]["cache"]
    clips = data.WaveClips(cache, train_df, labels, samples, random_crop=True)
    test_set = data.WaveClips(cache, test_df, labels, samples)
    test_loader = DataLoader(Subset(test_set, range(env.rank, len(test_set), env.world)), batch_size=64)

    net = models.ClarNet(models.build_encoder(cfg), cfg["model"], len(labels), cfg["mode"] != "selfsupervised")
    net = net.to(env.device)
    if cfg["train"]["channels_last"] and env.device.type == "cuda":
        net.encoder.use_channels_last()
    model = env.wrap(net, sync_bn=cfg["train"]["sync_bn"])
    o = cfg["optim"]
    trained = [(name, p) for name, p in net.named_parameters() if not name.startswith("online.")]
    lars = optim.LARS(optim.decay_groups(trained, o["weight_decay"]), lr=o["lr"], momentum=o["momentum"], eta=o["eta"])
    adam = torch.optim.Adam(net.online.parameters(), lr=o["online_lr"], fused=env.device.type == "cuda")
    views = BatchWaveAugment(**cfg["aug"])

    def step(batch: tuple, step: int) -> dict:
        return train_step(env=env, net=net, model=model, lars=lars, adam=adam, views=views, batch=batch, step=step)

    online = {"online_test_acc": None}  # the online head's latest test accuracy

    def epoch_end(epoch: int) -> dict:
        if epoch % cfg["train"]["eval_every"] and epoch != cfg["train"]["epochs"]:
            return {}
        online["online_test_acc"] = online_accuracy(net, test_loader, env.device)
        return {"test_acc": online["online_test_acc"]}

    def finish() -> dict:
        results = {"mode": cfg["mode"], "arch": cfg["model"]["arch"], "label_fraction": cfg["label_fraction"],
                   **online, "probe_test_acc": None}
        if not (cfg["train"]["final_probe"] and distributed.is_main()):
            return results
        probe_train = data.WaveClips(cache, probe_df, labels, samples)
        train_x = models.embed_dataset(net.encoder, probe_train, batch_size=64, device=env.device)
        test_x = models.embed_dataset(net.encoder, test_set, batch_size=64, device=env.device)
        net.train()
        train_y, test_y = probe_train.targets, test_set.targets
        acc = probe.split_accuracy(train_x, train_y, test_x, test_y, len(labels), seed=cfg["seed"])
        print(f"EVAR linear probe, test accuracy {acc:.3f}")
        return {**results, "probe_test_acc": acc}

    return trainer.Parts(
        dataset=data.TrainClips(clips, targets), batches=data.RatioBatches(targets >= 0, o["batch_size"], cfg["seed"]),
        modules={"net": net}, optimizers={"lars": lars, "online_adam": adam}, encoder=net.encoder, step=step,
        log_keys=[*LOSS_KEYS, "lr", "test_acc"], mean_keys=LOSS_KEYS, epoch_end=epoch_end, finish=finish,
        meta={"labels": labels.names})


def train_step(*, env: trainer.Env, net: models.ClarNet, model: torch.nn.Module, lars: optim.LARS,
               adam: torch.optim.Optimizer, views: BatchWaveAugment, batch: tuple, step: int) -> dict:
    """One CLAR step on this process's clips wave [b, L]: two views augmented on the device (parameters drawn for
    the global batch, keyed by seed, step and view), bf16 forward (CUDA), fp32 losses, LARS with warmup + cosine
    per iteration. Returns lr and the losses of the GLOBAL batch (mean over processes)."""
    cfg, device = env.cfg, env.device
    wave, target, label = (x.to(device, non_blocking=True) for x in batch)
    warmup = cfg["optim"]["warmup_epochs"] * env.steps_per_epoch
    lr = optim.warmup_cosine(step, warmup, env.total_steps, 0.0, cfg["optim"]["lr"], 0.0,
                             first=optim.READ_BEFORE_STEP)
    optim.set_lr(lars, lr)
    rows, n_global = slice(env.rank, None, env.world), len(wave) * env.world
    keys = (randomness.key_generator(cfg["seed"], step, view, device=device) for view in (1, 2))
    view1, view2 = (views.apply(wave, views.draw(n_global, wave.shape[-1], key), rows) for key in keys)
    with env.autocast():
        z1, z2, logits1, logits2, online_logits = model(view1, view2)
    losses = clar_loss(z1, z2, logits1, logits2, target, cfg["mode"], cfg["loss"]["tau"], cfg["loss"]["ce_weight"],
                       cfg["loss"]["contrastive"])
    known = label >= 0  # unlabelled clips (label -1, e.g. files directly in a --dataset folder root) teach it nothing
    online_loss = (F.cross_entropy(online_logits.float()[known], label[known]) if known.any()
                   else online_logits.float().sum() * 0.0)
    lars.zero_grad(set_to_none=True)
    adam.zero_grad(set_to_none=True)
    (losses["loss"] + online_loss).backward()
    lars.step()
    adam.step()
    values = {**losses, "online_loss": online_loss}
    values = distributed.all_reduce_mean(torch.stack([values[key].detach().float() for key in LOSS_KEYS]))
    return {**dict(zip(LOSS_KEYS, values.tolist())), "lr": lr}


def resolve_config(path: str, overrides: list[str]) -> dict:
    return trainer.resolve_config(path, overrides, DEFAULTS, validate)


def main(argv: list[str] | None = None) -> dict:
    return trainer.main("clar", DEFAULTS, build, __doc__, argv, validate)


if __name__ == "__main__":
    trainer.cli("clar", DEFAULTS, build, __doc__, validate)
