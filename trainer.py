"""The training core that every pretraining script runs on (MSN, CLAR, BYOL-A).

A method script holds only what is its own: its DEFAULTS, how it builds its nets, views and loss, and its
train step. Everything else lives here, once:

    config      config.resolve: the YAML (a delta: only what differs) merged onto COMMON + the method's DEFAULTS
                (one nested merge rule), unknown keys and keys that moved (MOVED) are errors, then `key=value`
                overrides; --print-config prints the result and exits
    run folder  train.out_dir (default runs/<config name>): config.yaml, environment.txt (the installed versions,
                runlog.environment_installed), log.csv, ckpt_last.pt (at an epoch end once train.ckpt_seconds have
                passed, and at the end), ckpt_epochNNN.pt (every train.save_every epochs and at the end), results.json
    seeding     the same initial weights in every process; before each step torch's RNG is seeded by
                (seed, step), the same in every process, so draws that are not keyed (dropout) resume exactly
                and N processes draw what one would (each draw is made for the global batch: GlobalDropout)
    torchrun    distributed.init_distributed; Env.wrap adds global batch norm, global dropout, DDP and torch.compile
    the loop    epochs of global batches (optim.batch_size is the GLOBAL batch: process r of N takes positions
                r::N of every batch); train.max_steps; mid-epoch resume; a tqdm bar and the CSV log
    checkpoint  one file layout for every method (CHECKPOINT_KEYS), written atomically (new file complete first,
                then the old one retired: LastGood), only when the loss and every weight are finite; --resume
                (falling back to ckpt_prev.pt) restores weights, optimisers, the per-process RNG and the
                per-process augmentation state, so a resumed run equals the straight one; a fresh run refuses a
                folder that holds checkpoints unless --overwrite
    kNN monitor train.monitor: monitor.Monitor scores the frozen encoder before the first step and every
                `every` epochs (DINO's weighted kNN); `knn_acc` rows in log.csv, monitor_* in results.json
    costs       results.json: median step time, clips/s, peak memory, and (train.count_flops) model FLOPs per step

A method plugs in like this (pretrain_byola.py is the smallest example), and gets one entry in methods.py, the
registry that demo.py, bench.py, hear_check.py and the tests iterate over (docs/adding_a_method.md):

    DEFAULTS = {"model": {...}, "byol": {...}, "optim": {"lr": 1e-4}}   # + COMMON below: every key, once
    def validate(cfg: dict) -> None: ...                                # optional: choices, aliases
    def build(cfg: dict, env: trainer.Env) -> trainer.Parts: ...        # data, nets, optimisers, views
    def train_step(run, *, batch: tuple, step: int) -> dict: ...        # one update -> {"loss": ..., "lr": ...}
    if __name__ == "__main__":
        trainer.cli("byola", DEFAULTS, build, __doc__, validate)      # --config, --resume, --print-config

Schedules are functions of `step`, the 0-based global index of the update being made (optim.py); every caller
passes it as it is. The reference's offset is named once in optim: CLAR's warmup + cosine is read before it is
stepped (optim.READ_BEFORE_STEP: its first update has lr 0), MSN's schedulers are stepped before each update
(optim.STEPPED_BEFORE_USE, msn_train.py; pretrain_msn.lr_at); BYOL-A's lr is constant. Every train_step
returns the lr it used, so log.csv has an `lr` column for every method.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import config as config_lib
import distributed
import files
import randomness
import runlog
from monitor import Monitor


class NonFiniteLoss(RuntimeError):
    """Training stopped on a non-finite loss or non-finite weights (the message names the step and checkpoint)."""


# Keys every method's config has, with the same meaning everywhere (README "Configs").
COMMON = {
    "seed": 0,
    "data": {"cache": "cache/synth_small", "num_workers": 4,
             # log-mel packs: epoch order random (per clip) | block (blocks of consecutive clips; a pack larger
             # than RAM) | auto (block when the pack exceeds half the RAM); data.training_batches, docs/scale.md
             "order": "auto", "block_clips": 256, "open_blocks": 8},
    "optim": {"batch_size": 256, "lr": 1e-4},  # batch_size: the GLOBAL batch, split over torchrun processes
    "train": {"epochs": 100, "max_steps": None, "device": "auto", "out_dir": None, "amp": True, "compile": False,
              "log_every": 10, "save_every": 0,
              "ckpt_seconds": 60,  # ckpt_last.pt at an epoch end once this long since the last one (0: every epoch)
              "count_flops": False,  # count the model FLOPs of the run's first step (results.json; bench.py gpu)
              "monitor": {"cache": None, "every": 1, "k": 20, "temperature": 0.07}},  # kNN monitor (Monitor)
}
# Keys that moved when the three methods were put on one core: old dotted key -> where it went.
MOVED = {
    "train.seed": "moved to the top level: 'seed'",
    "train.batch_size": "moved to 'optim.batch_size' (the global batch)",
    "optim.epochs": "moved to 'train.epochs'",
    "train.ckpt_every": "was removed: ckpt_last.pt is written every epoch; numbered copies: 'train.save_every'",
    "train.probe_epochs": "was removed: the end-of-run probe is the EVAR probe; switch it with 'train.final_probe'",
    "augment": "was renamed 'aug' (the augmentation section has one name in every method): write 'aug.<key>'",
}
CHECKPOINT_KEYS = ("kind", "config", "git", "epoch", "step", "seconds", "encoder", "modules", "optimizers",
                   "per_process", "meta")
LAST, PREVIOUS, DIVERGED = "ckpt_last.pt", "ckpt_prev.pt", "ckpt_diverged.pt"


def resolve_config(path: str, overrides: list[str], defaults: dict, validate: Callable[[dict], None] | None = None
                   ) -> dict:
    """COMMON + the method's DEFAULTS, the file and the overrides (config.resolve), then the method's checks."""
    cfg = config_lib.resolve(path, overrides, config_lib.merge(COMMON, defaults), MOVED)
    if cfg["optim"]["batch_size"] < 1 or cfg["train"]["epochs"] < 1:
        raise config_lib.ConfigError(f"{path}: optim.batch_size and train.epochs must be >= 1")
    if validate:
        validate(cfg)
    return cfg


def check_choice(cfg: dict, key: str, allowed: tuple) -> None:
    """ConfigError unless the dotted `key` of cfg is one of `allowed`."""
    value = cfg
    for part in key.split("."):
        value = value[part]
    if value not in allowed:
        raise config_lib.ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")

# ----------------------------------------------------------------------------- what a method hands the core


@dataclass
class Env:
    """Where a run executes: the config, this process's rank, the world size and the device. `steps_per_epoch`
    and `total_steps` are set by the core once the method's batches are known (schedules read them)."""

    cfg: dict
    rank: int
    world: int
    device: torch.device
    steps_per_epoch: int = 0

    @property
    def total_steps(self) -> int:
        return self.cfg["train"]["epochs"] * self.steps_per_epoch

    @property
    def amp(self) -> bool:
        """bf16 autocast: train.amp on a CUDA device."""
        return bool(self.cfg["train"]["amp"]) and self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def wrap(self, module: nn.Module, sync_bn: bool = True, ddp: bool = True) -> nn.Module:
        """What a step calls: under torchrun batch norm over the global batch (SyncBatchNorm on CUDA,
        distributed.GlobalBatchNorm on CPU; converted in place), dropout masks drawn for the global batch
        (distributed.GlobalDropout) and DDP (ddp=False for an EMA target, which gets no gradient); train.compile adds
        torch.compile. The plain module keeps the weights (state dicts, EMA)."""
        called = module
        if self.world > 1:
            distributed.convert_dropout(module)
        if self.world > 1 and sync_bn:
            for name, child in list(module.named_children()):
                module.add_module(name, distributed.convert_sync_batchnorm(child, self.device))
        if self.world > 1 and ddp:
            called = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg["train"]["compile"]:
            called = torch.compile(called)
        return called


@dataclass
class Parts:
    """What a method's build() returns.

    dataset      items read by the loader: dataset[i] is a tuple of tensors (read under a keyed RNG)
    batches      len(batches) global batches per epoch; batches.epoch(e) -> lists of dataset indices
    modules      every network with state, saved and restored by name (plain modules, not DDP/compiled)
    optimizers   every optimiser, saved and restored by name
    encoder      the module whose weights linear_eval.py loads (checkpoint["encoder"])
    step         train_step(batch, step) -> {"loss": float, ...}: one update on this process's batch;
                 the values of the GLOBAL batch (distributed.all_reduce_mean)
    log_keys     the keys `step` returns, in log order; mean_keys of them are averaged between log rows
    state        per-process objects with state_dict()/load_state_dict() (views: mixup memory, RunningNorm)
    epoch_end    optional: after each full epoch, epoch_end(epoch) -> extra log values (keys in log_keys)
    finish       optional: at the end of training, finish() -> results (written to results.json)
    meta         anything else the checkpoint should carry (e.g. the class names)
    """

    dataset: Dataset
    batches: Any
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    encoder: nn.Module
    step: Callable[[tuple, int], dict]
    log_keys: list[str]
    mean_keys: tuple[str, ...] = ("loss",)
    state: dict[str, Any] = field(default_factory=dict)
    epoch_end: Callable[[int], dict] | None = None
    finish: Callable[[], dict] | None = None
    meta: dict = field(default_factory=dict)

# ----------------------------------------------------------------------------- run folder and checkpoints


def prepare_out_dir(cfg: dict) -> Path:
    """train.out_dir (default runs/<config name>) as a Path: an error if it is a file; stale temp files of an
    interrupted checkpoint write removed (on a full disk they keep the disk full)."""
    out_dir = Path(cfg["train"]["out_dir"] or f"runs/{cfg['_meta']['config_name']}")
    cfg["train"]["out_dir"] = str(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"train.out_dir {out_dir}: is a file, not a folder")
    if out_dir.is_dir() and distributed.is_main():
        files.remove_stale_temps(out_dir)
    return out_dir


def check_fresh(out_dir: Path, overwrite: bool) -> list[Path]:
    """The checkpoints an earlier run left in out_dir; an error unless `overwrite` (--overwrite) says to start over:
    a fresh run never deletes or overwrites the work of an earlier one by accident."""
    earlier = sorted(out_dir.glob("ckpt*.pt")) if out_dir.is_dir() else []
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise FileExistsError(f"{out_dir} holds checkpoints of an earlier run ({names}): continue it with --resume, "
                              "or start over with --overwrite (deletes them)")
    return earlier


def load_resume(path: Path, kind: str, cfg: dict) -> tuple[Path, dict]:
    """The checkpoint to resume from and its path, checked to be of this method and this model config. When
    `path` is a ckpt_last.pt that is missing or unreadable (a kill or a full disk during a write), the ckpt_prev.pt
    beside it is taken instead, and the run says which file it took and why."""
    previous = path.with_name(PREVIOUS)
    try:
        ckpt = files.load_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:
        if path.name == LAST and not previous.is_file() and isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no checkpoint to resume from (nor {PREVIOUS})") from None
        if path.name != LAST or not previous.is_file():
            raise
        why = "is missing" if isinstance(err, FileNotFoundError) else f"is unreadable ({err})"
        path, ckpt = previous, files.load_checkpoint(previous)
        if distributed.is_main():
            print(f"resume: {LAST} {why}; taking {path} (epoch {ckpt.get('epoch')}, step {ckpt.get('step')})",
                  file=sys.stderr)
    if ckpt.get("kind") != kind or "modules" not in ckpt:
        raise ValueError(f"{path}: not a {kind} checkpoint of this package (kind={ckpt.get('kind')!r})")
    if ckpt["config"].get("model") != cfg.get("model"):
        raise ValueError(f"{path}: its model config differs from this run's; resume with the same model.* keys")
    return path, ckpt


def restore(parts: Parts, ckpt: dict, env: Env) -> None:
    """Weights, optimisers, and this process's RNG and state (any world size: rank r takes entry r, or 0)."""
    for name, module in parts.modules.items():
        module.load_state_dict(ckpt["modules"][name])
    for name, optimizer in parts.optimizers.items():
        optimizer.load_state_dict(ckpt["optimizers"][name])
    states = ckpt["per_process"]
    mine = states[env.rank if len(states) == env.world else 0]
    randomness.set_rng_state(mine["rng"])
    for name, obj in parts.state.items():
        obj.load_state_dict(mine["state"][name])


def per_process_states(parts: Parts, env: Env) -> list[dict]:
    """Every process's RNG and augmentation state, in rank order (a collective: every process calls it)."""
    local = {"rng": randomness.rng_state(), "state": {name: obj.state_dict() for name, obj in parts.state.items()}}
    if env.world == 1:
        return [local]
    states = [None] * env.world
    torch.distributed.all_gather_object(states, local)
    return states


class LastGood:
    """Which checkpoint is good. The loss is only seen one step after an update, so a checkpoint with finite but
    diverged weights would pass every check when it is written: ckpt_last.pt becomes the last good one once a
    step after it had a finite loss. Until then the one before it is kept as ckpt_prev.pt, and a non-finite loss
    moves the suspect to ckpt_diverged.pt and puts ckpt_prev.pt back, so `--resume` starts from good weights.

    A complete checkpoint exists at every instant under a name `--resume` finds: the new file is written and
    fsync'd under a temp name first; only then is the old ckpt_last.pt kept as ckpt_prev.pt (a hard link, so
    ckpt_last.pt never disappears; a rename where links are not supported) and the new file renamed over it.
    ckpt_prev.pt exists exactly while ckpt_last.pt is unconfirmed, which is also how a resumed run knows."""

    def __init__(self, out_dir: Path, resumed_from: Path | None):
        self.out_dir = out_dir
        self.pending = resumed_from is not None and (out_dir / PREVIOUS).is_file()
        if resumed_from is None:
            self.good = None
        elif resumed_from.name != LAST:
            self.good = resumed_from
        else:
            self.good = out_dir / (PREVIOUS if self.pending else LAST)

    def retire_last(self) -> None:
        """Called once the new ckpt_last.pt is complete on disk, just before it is renamed into place."""
        last, previous = self.out_dir / LAST, self.out_dir / PREVIOUS
        if last.exists() and not self.pending:
            link = files.temp_path(previous)
            try:
                os.link(last, link)
                os.replace(link, previous)
            except OSError:
                link.unlink(missing_ok=True)
                os.replace(last, previous)
        self.pending = True

    def confirm(self) -> None:
        """A step after the latest checkpoint had a finite loss."""
        if self.pending:
            (self.out_dir / PREVIOUS).unlink(missing_ok=True)
            self.pending, self.good = False, self.out_dir / LAST

    def rollback(self) -> str:
        """After a non-finite loss: set the suspect aside; returns where the last good checkpoint is."""
        if not self.pending:
            return f"last good checkpoint: {self.good or 'none written yet'}"
        last, previous = self.out_dir / LAST, self.out_dir / PREVIOUS
        os.replace(last, self.out_dir / DIVERGED)
        self.pending = False
        if previous.exists():
            os.replace(previous, last)
            return (f"the checkpoint written just before led straight to it and was moved to {DIVERGED}; "
                    f"last good checkpoint: {last}")
        self.good = None
        return f"the only checkpoint led straight to it and was moved to {DIVERGED}; no good checkpoint"

    def finish(self) -> None:
        (self.out_dir / PREVIOUS).unlink(missing_ok=True)


def non_finite_weights(parts: Parts) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or an infinity."""
    return [f"{name}.{key}" for name, module in parts.modules.items()
            for key, value in module.state_dict().items()
            if value.is_floating_point() and not torch.isfinite(value).all()]


def checkpoint(parts: Parts, cfg: dict, kind: str, epoch: int, step: int, seconds: float, states: list[dict]) -> dict:
    """The whole training state in the one layout of CHECKPOINT_KEYS."""
    return {"kind": kind, "config": cfg, "git": cfg["_meta"]["git"], "epoch": epoch, "step": step, "seconds": seconds,
            "encoder": parts.encoder.state_dict(),
            "modules": {name: module.state_dict() for name, module in parts.modules.items()},
            "optimizers": {name: opt.state_dict() for name, opt in parts.optimizers.items()},
            "per_process": states, "meta": parts.meta}

# ----------------------------------------------------------------------------- the loop


def epoch_loader(parts: Parts, env: Env, epoch: int, skip: int) -> DataLoader:
    """This process's batches of one epoch, minus the first `skip` (mid-epoch resume). Process r takes
    positions r::world of each global batch; each item is read under a seed keyed by (seed, step, position),
    so what a clip looks like depends neither on the world size nor on the loader workers."""
    batches = [batch[env.rank::env.world] for batch in parts.batches.epoch(epoch)[skip:]]
    first_step = epoch * env.steps_per_epoch + skip
    keyed = randomness.KeyedBatches(batches, env.cfg["seed"], first_step, env.rank, env.world)
    return DataLoader(randomness.KeyedItems(parts.dataset), batch_sampler=keyed,
                      num_workers=env.cfg["data"]["num_workers"], collate_fn=randomness.KeyedItems.collate,
                      pin_memory=env.device.type == "cuda", persistent_workers=False)


def check_batches(parts: Parts, env: Env) -> int:
    """Steps per epoch; errors for an empty epoch or a batch the processes cannot share evenly."""
    batch_size, n = env.cfg["optim"]["batch_size"], len(parts.dataset)
    if batch_size % env.world:
        raise ValueError(f"optim.batch_size {batch_size} is not divisible by the {env.world} processes")
    if len(parts.batches) == 0:
        raise ValueError(f"{env.cfg['data']['cache']}: {n} training clips is less than one batch of {batch_size}; "
                         "lower optim.batch_size")
    return len(parts.batches)


class Logger:
    """The CSV log (rank 0): a row every train.log_every steps with the mean of mean_keys since the last row."""

    def __init__(self, path: Path, parts: Parts, every: int, resume_step: int | None, seconds: float = 0.0,
                 monitor: bool = False):
        self.fields = ["step", "epoch", *parts.log_keys, *(["knn_acc"] if monitor else []), "clips_per_s", "seconds"]
        self.mean_keys, self.every, self.window = parts.mean_keys, every, []
        self.csv = runlog.CSVLog(path, self.fields, resume_step=resume_step) if distributed.is_main() else None
        self.start = time.time() - seconds  # training seconds continue across a resume

    @property
    def seconds(self) -> float:
        return time.time() - self.start

    def step(self, row: dict, step: int, clips_per_s: float, force: bool) -> dict | None:
        self.window.append(row)
        if self.csv is None or not (force or step % self.every == 0):
            return None
        mean = {key: sum(r[key] for r in self.window) / len(self.window) for key in self.mean_keys}
        out = {**row, **mean, "clips_per_s": clips_per_s, "seconds": time.time() - self.start}
        self.csv.write(out)
        self.window = []
        return out

    def extra(self, row: dict) -> None:
        if self.csv is not None:
            self.csv.write({**row, "seconds": time.time() - self.start})


def count_flops(step_fn: Callable, batch: tuple, step: int) -> tuple[dict, float]:
    """One step under torch's FlopCounterMode: (its values, the model FLOPs of forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        values = step_fn(batch, step)
    return values, float(counter.get_total_flops())


def step_costs(step_times: list[float], batch_size: int, device: torch.device) -> dict:
    """Median step time (the first two steps, warm-up and compilation, left out when there are more), training
    clips/s at that speed (data loading excluded), and peak memory: CUDA allocated, or the process's peak RSS."""
    times = sorted(step_times[2:] if len(step_times) > 2 else step_times)
    median = times[len(times) // 2] if times else float("nan")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"step_ms": 1000 * median, "train_clips_per_s": batch_size / median if times else None,
            "peak_memory_gib": peak}


def train(kind: str, cfg: dict, build: Callable[[dict, Env], Parts], resume: Path | None = None,
          overwrite: bool = False) -> dict:
    """Run (or resume) one pretraining run of method `kind`; returns {history, out_dir, step, epoch, ...}.
    A fresh run into a folder that holds checkpoints stops unless `overwrite` (then they are deleted)."""
    rank, world, device = distributed.init_distributed()
    if cfg["train"]["device"] not in ("auto", None):
        device = torch.device(cfg["train"]["device"])
    cfg["_meta"]["git"] = runlog.git_commit()
    out_dir = prepare_out_dir(cfg)
    resumed_from, ckpt = load_resume(resume, kind, cfg) if resume is not None else (None, None)
    earlier = check_fresh(out_dir, overwrite) if ckpt is None else []
    env = Env(cfg, rank, world, device)

    randomness.seed_everything(cfg["seed"])  # the same initial weights in every process
    parts = build(cfg, env)  # reads and checks the data: nothing is written before it succeeds
    env.steps_per_epoch = check_batches(parts, env)
    epoch, step = 0, 0
    if ckpt is not None:
        restore(parts, ckpt, env)
        epoch, step = ckpt["epoch"], ckpt["step"]
    if distributed.is_main():
        for path in earlier:  # --overwrite: start over on purpose, once the data has been read
            path.unlink(missing_ok=True)
        config_lib.save_config(cfg, out_dir / "config.yaml")
        runlog.record_environment(out_dir, step)
        n_params = sum(p.numel() for m in parts.modules.values() for p in m.parameters()) / 1e6
        print(f"{kind}: {len(parts.dataset)} clips, {env.steps_per_epoch} steps/epoch of {cfg['optim']['batch_size']}"
              f" | {n_params:.2f}M params | {device} x{world} | {out_dir}"
              + (f" | resumed from {resumed_from.name} at epoch {epoch}, step {step}" if ckpt else ""))
    mcfg = cfg["train"]["monitor"]
    monitor = Monitor(mcfg, parts.encoder.input_kind, device) if mcfg["cache"] and distributed.is_main() else None
    logger = Logger(out_dir / "log.csv", parts, cfg["train"]["log_every"], step + 1 if ckpt else None,
                    ckpt["seconds"] if ckpt else 0.0, monitor=bool(mcfg["cache"]))

    def watch() -> None:
        """A monitor row (rank 0), its time left out of the training seconds."""
        if monitor is not None:
            before = monitor.seconds
            accuracy = monitor(parts.encoder)
            logger.start += monitor.seconds - before
            logger.extra({"step": step, "epoch": epoch, "knn_acc": accuracy})
            print(f"monitor: epoch {epoch}, kNN accuracy {100 * accuracy:.1f} %")

    if ckpt is None:
        watch()  # the starting point (random init), on the same axes as the curve
    last_good = LastGood(out_dir, resumed_from)
    max_steps, epochs, history = cfg["train"]["max_steps"], cfg["train"]["epochs"], []
    step_times, flops = [], None

    def save(name: str) -> Path:
        states = per_process_states(parts, env)
        if distributed.is_main():
            bad = non_finite_weights(parts)
            if bad:
                raise NonFiniteLoss(f"weights are not finite after step {step} ({', '.join(bad[:3])}); "
                                          f"no checkpoint written (last good: {last_good.good or 'none'})")
            files.atomic_torch_save(checkpoint(parts, cfg, kind, epoch, step, logger.seconds, states), out_dir / name,
                                    before_replace=last_good.retire_last if name == LAST else None)
        return out_dir / name

    def save_last(last_write: float, final: bool) -> float:
        """ckpt_last.pt at the end of the run, and at an epoch end once train.ckpt_seconds have passed since
        the last write (tiny epochs would otherwise spend their time writing checkpoints)."""
        if final or time.time() - last_write >= cfg["train"]["ckpt_seconds"]:
            save(LAST)
            return time.time()
        return last_write

    last_write = time.time()
    while epoch < epochs and (max_steps is None or step < max_steps):
        skip = step - epoch * env.steps_per_epoch
        bar = tqdm(epoch_loader(parts, env, epoch, skip), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   initial=skip, total=env.steps_per_epoch, disable=not distributed.is_main())
        tick, done_here = time.time(), 0
        for batch in bar:
            # the same default generator on every process (key 0 = the one-process stream): what a step draws
            # from it is drawn for the global batch (GlobalDropout, MSN's one token permutation), never per rank
            torch.manual_seed(randomness.key_seed(cfg["seed"], step, 0))
            started = time.perf_counter()
            if cfg["train"]["count_flops"] and not step_times:
                values, flops = count_flops(parts.step, batch, step)
            else:
                values = parts.step(batch, step)  # returns Python floats: the device has finished the step
            step_times.append(time.perf_counter() - started)
            if not math.isfinite(values["loss"]):
                where = last_good.rollback() if distributed.is_main() else ""
                raise NonFiniteLoss(f"loss is {values['loss']} at step {step}; stopping ({where})")
            if distributed.is_main():
                last_good.confirm()
            step, done_here = step + 1, done_here + 1
            row = {"step": step, "epoch": epoch + 1, **values}
            history.append(row)
            speed = done_here * cfg["optim"]["batch_size"] / (time.time() - tick)
            logged = logger.step(row, step, speed, force=step in (env.total_steps, max_steps))
            if logged:
                bar.set_postfix(loss=f"{logged['loss']:.4f}")
            if max_steps is not None and step >= max_steps:
                break
        if step == (epoch + 1) * env.steps_per_epoch:  # the epoch is complete
            epoch += 1
            extra = parts.epoch_end(epoch) if parts.epoch_end is not None else {}
            if extra:
                logger.extra({"step": step, "epoch": epoch, **extra})
            if epoch % mcfg["every"] == 0 or epoch == epochs:
                watch()
        last_write = save_last(last_write, final=epoch == epochs or (max_steps is not None and step >= max_steps))
        every = cfg["train"]["save_every"]
        if every and step == epoch * env.steps_per_epoch and (epoch % every == 0 or epoch == epochs):
            save(f"ckpt_epoch{epoch:03d}.pt")
    results = {"kind": kind, "epoch": epoch, "step": step, "out_dir": str(out_dir),
               "batch_size": cfg["optim"]["batch_size"],
               **step_costs(step_times, cfg["optim"]["batch_size"], device), "flops_per_step": flops}
    if monitor is not None:
        results.update(monitor_knn_acc=monitor.last, monitor_seconds=monitor.seconds)
        print(f"monitor: {monitor.seconds:.1f} s, {100 * monitor.seconds / max(logger.seconds, 1e-9):.1f} % of the "
              f"{logger.seconds:.1f} s of training")
    if parts.finish is not None:
        results.update(parts.finish())
    if distributed.is_main():
        last_good.finish()
        files.atomic_write_text(json.dumps(results, indent=2) + "\n", out_dir / "results.json")
        loss = history[-1]["loss"] if history else float("nan")
        print(f"done: epoch {epoch}, step {step}, loss {loss:.4f}, checkpoint {out_dir / LAST}")
    return {**results, "history": history, "out_dir": out_dir}


def parse_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true",
                        help=f"continue from <train.out_dir>/{LAST} ({PREVIOUS} if {LAST} is missing or unreadable)")
    parser.add_argument("--resume-from", type=Path, default=None, help="continue from this checkpoint file")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a train.out_dir that holds an earlier run's checkpoints (deletes them)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config (defaults + the file + the overrides) as YAML and exit")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser.parse_intermixed_args(argv)  # options may sit between key=value overrides


def main(kind: str, defaults: dict, build: Callable[[dict, Env], Parts], doc: str, argv: list[str] | None = None,
         validate: Callable[[dict], None] | None = None) -> dict:
    """A pretraining script's main(): parse, resolve the config, train (or resume)."""
    args = parse_args(doc, argv)
    cfg = resolve_config(args.config, args.overrides, defaults, validate)
    if args.print_config:
        print(config_lib.dump_config(cfg), end="")
        return {"config": cfg}
    resume = args.resume_from
    if resume is None and args.resume:
        resume = Path(cfg["train"]["out_dir"] or f"runs/{cfg['_meta']['config_name']}") / LAST
    if resume is not None and args.overwrite:
        raise config_lib.ConfigError("--overwrite starts over; it cannot be combined with --resume")
    return train(kind, cfg, build, resume, overwrite=args.overwrite)


def cli(kind: str, defaults: dict, build: Callable[[dict, Env], Parts], doc: str,
        validate: Callable[[dict], None] | None = None) -> None:
    """Run main() from the command line: a bad config, file, disk or a diverged run ends with one line."""
    script = Path(sys.argv[0]).name
    try:
        main(kind, defaults, build, doc, sys.argv[1:], validate)
    except (config_lib.ConfigError, FileNotFoundError, NonFiniteLoss, ValueError, OSError) as err:
        sys.exit(f"{script}: error: {err}")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

