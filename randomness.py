"""Randomness a run can reproduce: seeding, the RNG state a checkpoint carries, and keyed draws.

Training draws that must not depend on the number of processes (augmentation parameters, crop starts,
MSN's token mask) come from generators seeded by a key such as (seed, step, stream, global position).
A 2-process run then draws exactly what a 1-process run on the same global batch draws, and a resumed
run needs only the step.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a training step draws from (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def key_seed(*key: int) -> int:
    """A 63-bit seed from non-negative integers (NumPy SeedSequence: nearby keys give unrelated seeds)."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> np.uint64(1))


def key_generator(*key: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with key_seed(*key)."""
    return torch.Generator(device=device).manual_seed(key_seed(*key))


class KeyedItems(torch.utils.data.Dataset):
    """Items are (index, key) pairs, key = (seed, step, global batch position): dataset[index] is read with
    torch's RNG seeded by key_seed(*key), so a clip's random crop depends on its key, not on which process or
    loader worker reads it. A dataset with `batch_reads` on gets the whole batch at once instead
    (`read_batch(indices, (seed, step), positions)`: one keyed draw per batch; data.LogMelCrops)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, key = item
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues a CUDA seed with a stack trace on CUDA builds
            # (about 0.13 ms an item, more than reading the crop; bench.py scale)
            torch.default_generator.manual_seed(key_seed(*key))
            return self.dataset[index]

    @staticmethod
    def collate(items: list | tuple):
        """The DataLoader's collate_fn: torch's default_collate of a list of items; a tuple is a batch that
        read_batch collated itself."""
        return items if isinstance(items, tuple) else torch.utils.data.default_collate(items)

    def __getitems__(self, items: list) -> list | tuple:
        """A batch (torch's DataLoader calls this with the batch sampler's list): a list of items, or with
        batch reads the collated batch."""
        if not getattr(self.dataset, "batch_reads", False):
            return [self[item] for item in items]
        seed, step, _ = items[0][1]
        return self.dataset.read_batch([index for index, _ in items], (seed, step), [key[2] for _, key in items])


class KeyedBatches:
    """A batch sampler for KeyedItems: this process's batches (lists of dataset indices, the i-th at global
    batch position rank + world * i) with each index paired with its key (seed, step, position)."""

    def __init__(self, batches, seed: int, first_step: int, rank: int = 0, world: int = 1):
        self.batches, self.seed, self.first_step, self.rank, self.world = batches, seed, first_step, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for step, batch in enumerate(self.batches, self.first_step):
            yield [(int(index), (self.seed, step, self.rank + self.world * i)) for i, index in enumerate(batch)]
