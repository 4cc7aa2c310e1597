"""Spectrogram augmentations for MSN and BYOL-A (nttcslab/byol-a v2 `byol_a2/augmentations.py`) and the batched
view makers their scripts call (MSNViews, BYOLAViews). CLAR's waveform augmentations and BatchWaveAugment are
in augment_wave.py.

    views = augment.BYOLAViews(cfg["aug"], (n_mels, crop_frames), norm_stats, seed=cfg["seed"])
    view1, view2 = views(logmel, step, rank, world)   # logmel [B, 1, F, T] of the global batch -> this process's

Every augmentation exposes its deterministic core (a function of explicit parameters) separately
from its random draws, so the core can be tested exactly and the batched version can be checked
against the per-sample one for the same drawn parameters.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop as TorchvisionRandomResizedCrop

import distributed
import randomness

# ============================================================================ spectrogram (MSN / BYOL-A)
# All spectrogram augmentations take a batch logmel [B, 1, F, T] on any device and apply the reference's
# per-sample semantics sample by sample in batch order (nttcslab/byol-a v2). Random draws use the global NumPy /
# Python / torch RNGs exactly where the reference does, so randomness.rng_state() captures them for resume.

LOG_EPS = float(np.finfo(np.float32).eps)


def log_mixup_exp(xa: torch.Tensor, xb: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """BYOL-A log-mixup-exp: log(alpha * exp(xa) + (1 - alpha) * exp(xb) + eps) (nttcslab/byol-a v2)."""
    return torch.log(alpha * xa.exp() + (1 - alpha) * xb.exp() + LOG_EPS)


class MixupBYOLA:
    """BYOL-A mixup with a FIFO memory of the last `n_memory` UNMIXED inputs (nttcslab/byol-a v2, v2 ratio 0.2).

    Per sample, in batch order: alpha = ratio * U[0, 1) (np.random); if the memory is non-empty, z = a
    uniformly drawn memory item (np.random.randint) and out = log_mixup_exp(x, z, 1 - alpha), else out = x;
    then x is appended to the memory. Inputs earlier in the same batch are in the memory for later ones.
    The memory is a ring buffer on the input's device; all inputs must have the same shape.

        mix = MixupBYOLA(ratio=0.2); views = mix(logmel)   # [B, 1, F, T] -> same shape
    """

    def __init__(self, ratio: float = 0.2, n_memory: int = 2048, log_mixup: bool = True):
        self.ratio, self.n_memory, self.log_mixup = ratio, n_memory, log_mixup
        self.ring: torch.Tensor | None = None  # [n_memory, 1, F, T]
        self.count, self.next = 0, 0  # items held, next write position

    def draw(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """alphas [B] and pool indices [B] (-1 = no mix); pool = the memory, oldest first, then the batch."""
        alphas, picks = np.zeros(batch), np.full(batch, -1)
        for b in range(batch):
            alphas[b] = self.ratio * np.random.random()
            available = min(self.count + b, self.n_memory)  # memory length when sample b is processed
            if available > 0:
                picks[b] = self.count + b - available + np.random.randint(available)
        return alphas, picks

    def mix(self, x: torch.Tensor, alphas: np.ndarray, picks: np.ndarray, rows=None) -> torch.Tensor:
        """Deterministic core: mix x [B, 1, F, T] with the pool items `picks`, then push x into the memory.

        rows (an index or slice into the batch, e.g. slice(rank, None, world)): mix and return only those rows;
        alphas and picks are still given for the whole batch, and the whole batch x is pushed (the global batch
        under torchrun, so that every process holds the same memory).
        """
        if self.ring is None:
            self.ring = x.new_zeros(self.n_memory, *x.shape[1:])
        self.ring = self.ring.to(x)
        rows = np.arange(len(x))[rows if rows is not None else slice(None)]
        alphas, picks = np.asarray(alphas)[rows], np.asarray(picks)[rows]
        own = x[torch.as_tensor(rows, device=x.device)]
        from_memory = (picks >= 0) & (picks < self.count)
        z = own.detach().clone()
        if from_memory.any():
            slots = (self.next - self.count + picks[from_memory]) % self.n_memory
            z[torch.as_tensor(from_memory, device=x.device)] = self.ring[torch.as_tensor(slots, device=x.device)]
        in_batch = picks >= self.count
        if in_batch.any():
            z[torch.as_tensor(in_batch, device=x.device)] = x.detach()[torch.as_tensor(picks[in_batch] - self.count,
                                                                                      device=x.device)]
        lam = torch.as_tensor(1 - alphas, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        if self.log_mixup:  # log_mixup_exp(own, z, lam), the same operations in place (no fresh buffers)
            mixed = own.exp().mul_(lam).add_(z.exp_().mul_(1 - lam)).add_(LOG_EPS).log_()
        else:
            mixed = lam * own + (1 - lam) * z
        keep = x.detach()[-self.n_memory:]
        slots = (self.next + torch.arange(len(x) - len(keep), len(x))) % self.n_memory
        self.ring[slots.to(x.device)] = keep
        self.next = (self.next + len(x)) % self.n_memory
        self.count = min(self.count + len(x), self.n_memory)
        if (picks < 0).any():  # nothing to mix with (the very first inputs): unchanged
            unmixed = torch.as_tensor(picks < 0, device=x.device)
            mixed[unmixed] = own[unmixed]
        return mixed

    @property
    def memory(self) -> torch.Tensor | None:
        """The held inputs [count, 1, F, T], oldest first."""
        if self.ring is None:
            return None
        return self.ring[(self.next - self.count + torch.arange(self.count)) % self.n_memory]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x, *self.draw(len(x)))

    def state_dict(self) -> dict:
        return {"memory": None if self.ring is None else self.memory.cpu()}

    def load_state_dict(self, state: dict) -> None:
        memory = state["memory"]
        self.ring, self.count, self.next = None, 0, 0
        if memory is not None:
            self.ring = memory.new_zeros(self.n_memory, *memory.shape[1:])
            self.ring[:len(memory)] = memory
            self.count, self.next = len(memory), len(memory) % self.n_memory


def _size2(size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resized_crop(x: torch.Tensor, box: tuple[int, int, int, int], size, mode: str = "bilinear") -> torch.Tensor:
    """Crop x [..., F, T] to box (i, j, h, w) (top, left, height, width) and resize to `size`.

    bilinear: align_corners=False and no antialiasing (= torchvision resized_crop(antialias=False), the
    seed's crop); bicubic: align_corners=True (BYOL-A RandomResizeCrop).
    """
    i, j, h, w = box
    crop = x[..., i:i + h, j:j + w]
    shape = crop.shape
    crop = crop.reshape(-1, 1, h, w)
    align = None if mode in ("nearest", "area") else mode == "bicubic"
    out = F.interpolate(crop, size=_size2(size), mode=mode, align_corners=align)
    return out.reshape(*shape[:-2], *out.shape[-2:])


class RandomResizedCrop:
    """The seed's crop: torchvision RandomResizedCrop(size, scale, ratio (3/4, 4/3), antialias=False).

    Boxes are drawn per sample with torchvision's own sampler (torch RNG); the crop is `resized_crop`.
    """

    def __init__(self, size, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = _size2(size), tuple(scale), tuple(ratio)

    def draw(self, shape: torch.Size) -> list[tuple[int, int, int, int]]:
        dummy = torch.empty(1, shape[-2], shape[-1])  # get_params only reads the size
        return [TorchvisionRandomResizedCrop.get_params(dummy, list(self.scale), list(self.ratio))
                for _ in range(shape[0])]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([resized_crop(xb, box, self.size) for xb, box in zip(x, self.draw(x.shape))])


class RandomResizeCropBYOLA:
    """BYOL-A RandomResizeCrop (nttcslab/byol-a v2): zero canvas [F*v0, T*v1] with the input in its centre, a box of
    U(freq_scale)*F x U(time_scale)*T (np.random), position by Python random.randint, bicubic resize with
    align_corners=True to `size` (None = the input size, as in BYOL-A).
    """

    def __init__(self, size=None, virtual_crop_scale=(1.0, 1.5), freq_scale=(0.6, 1.5), time_scale=(0.6, 1.5)):
        self.size = None if size is None else _size2(size)
        self.virtual_crop_scale, self.freq_scale, self.time_scale = virtual_crop_scale, freq_scale, time_scale

    def canvas(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, F, T] pasted at the centre of a zero canvas [B, 1, int(F*v0), int(T*v1)]."""
        f, t = x.shape[-2:]
        cf, ct = int(f * self.virtual_crop_scale[0]), int(t * self.virtual_crop_scale[1])
        out = x.new_zeros(*x.shape[:-2], cf, ct)
        y0, x0 = (cf - f) // 2, (ct - t) // 2
        out[..., y0:y0 + f, x0:x0 + t] = x
        return out

    def draw(self, shape: torch.Size) -> list[tuple[int, int, int, int]]:
        f, t = shape[-2:]
        cf, ct = int(f * self.virtual_crop_scale[0]), int(t * self.virtual_crop_scale[1])
        boxes = []
        for _ in range(shape[0]):
            h = int(np.clip(int(np.random.uniform(*self.freq_scale) * f), 1, cf))
            w = int(np.clip(int(np.random.uniform(*self.time_scale) * t), 1, ct))
            i = random.randint(0, cf - h) if cf > h else 0
            j = random.randint(0, ct - w) if ct > w else 0
            boxes.append((i, j, h, w))
        return boxes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size or tuple(x.shape[-2:])
        canvas = self.canvas(x)
        return torch.stack([resized_crop(cb, box, size, mode="bicubic") for cb, box in zip(canvas, self.draw(x.shape))])


def linear_fade(x: torch.Tensor, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Add linspace(head[b], tail[b], T) to every frequency bin of x[b] [B, 1, F, T] (BYOL-A v2 fader)."""
    ramp = torch.linspace(0, 1, x.shape[-1], device=x.device, dtype=x.dtype)
    head = torch.as_tensor(head, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    tail = torch.as_tensor(tail, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return x + (head + (tail - head) * ramp)  # the [B, 1, 1, T] gain first: one pass over x


class RandomLinearFader:
    """BYOL-A v2 RandomLinearFader(gain): per sample head, tail = gain * (2 * np.random.rand(2) - 1)."""

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def draw(self, batch: int) -> np.ndarray:
        return np.stack([self.gain * (2 * np.random.rand(2) - 1) for _ in range(batch)]).reshape(batch, 2)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gains = self.draw(len(x))
        return linear_fade(x, gains[:, 0], gains[:, 1])


class RunningNorm:
    """BYOL-A v1 RunningNorm (nttcslab/byol-a byol_a/augmentations.py): running scalar mean/std of the first
    epoch_samples*max_update_epochs samples, frozen afterwards. Each sample (in batch order) first updates the
    statistics, then is normalised with the updated ones: mu += (mean(x) - mu)/n;
    var += (mean((x - mu)^2) - var)/n; std clamped at eps.
    """

    def __init__(self, epoch_samples: int, max_update_epochs: int = 10):
        self.max_update = epoch_samples * max_update_epochs
        self.n, self.mu, self.var = 0, 0.0, 0.0

    def update(self, sample: torch.Tensor) -> None:
        self.n += 1
        self.mu += (sample.double().mean().item() - self.mu) / self.n
        self.var += (((sample.double() - self.mu) ** 2).mean().item() - self.var) / self.n

    @property
    def std(self) -> float:
        return min(max(math.sqrt(self.var), float(torch.finfo().eps)), float(torch.finfo().max))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.n >= self.max_update:  # frozen: one vectorised step
            return (x - self.mu) / self.std
        out = torch.empty_like(x)
        for b in range(len(x)):
            if self.n < self.max_update:
                self.update(x[b])
            out[b] = (x[b] - self.mu) / self.std
        return out

    def state_dict(self) -> dict:
        return {"n": self.n, "mu": self.mu, "var": self.var, "max_update": self.max_update}

    def load_state_dict(self, state: dict) -> None:
        self.n, self.mu, self.var, self.max_update = state["n"], state["mu"], state["var"], state["max_update"]


class PrecomputedNorm:
    """BYOL-A v2 PrecomputedNorm: (x - mean) / std with dataset statistics (data.logmel_stats)."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def normalize_batch(x: torch.Tensor, dims=(0, 2, 3)) -> torch.Tensor:
    """BYOL-A NormalizeBatch: standardise over `dims` with the UNBIASED std clamped at float32 eps."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp(float(torch.finfo(torch.float32).eps), float(torch.finfo().max))
    return (x - mean) / std


def normalize_global(x: torch.Tensor) -> torch.Tensor:
    """normalize_batch (mean and unbiased std over all but the channel axis) over every process's x."""
    if distributed.world_size() == 1:
        return normalize_batch(x)
    count = distributed.all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
    mean = distributed.all_reduce_sum(x.sum(dim=(0, 2, 3), keepdim=True)) / count
    var = distributed.all_reduce_sum((x - mean).pow(2).sum(dim=(0, 2, 3), keepdim=True)) / (count - 1)
    return (x - mean) / var.sqrt().clamp(float(torch.finfo(torch.float32).eps), float(torch.finfo().max))

# ============================================================================ batched view makers
# The views of a training batch, made on the training device from keyed draws: view v of step s draws its
# parameters for the whole GLOBAL batch from randomness.key_generator(seed, s, v), so N processes make the views
# one process would make for the same global batch, and a resumed run needs only the step.


class LogMelViews:
    """Per-clip normalisation, then per view MixupBYOLA -> random resized crop -> RandomLinearFader (BYOL-A v2
    order, nttcslab/byol-a v2), batched; the parameters come from the ranges of the per-sample classes above.

        views = LogMelViews(aug, sizes=[(64, 96)] * 2, scales=[None] * 2, stats=(mean, std), seed=0)
        view_list = views(logmel, step, rank, world)   # logmel [N, 1, F, T]: the GLOBAL batch

    aug keys: norm (running | precomputed | none), running_norm_epoch_samples, crop (torchvision: RandomResizedCrop
    boxes at each view's scale, bilinear | byola: RandomResizeCrop on the 1.5x time canvas, bicubic),
    mixup_ratio, mixup_memory, fader_gain. RunningNorm and the mixup memory see every clip of the global batch,
    so every process holds the same state. Views are made one after the other and the mixup memory receives
    the batch once per view (BYOL-A: the views are independent passes of one augmentation module). A process
    returns its own rows (rank::world) of each view.
    """

    def __init__(self, aug: dict, sizes: list, scales: list, stats: tuple[float, float] | None = None,
                 seed: int = 0):
        if aug["norm"] == "running":
            self.norm = RunningNorm(aug["running_norm_epoch_samples"])
        elif aug["norm"] == "precomputed":
            self.norm = PrecomputedNorm(*stats)
        else:
            self.norm = None
        self.mixup = MixupBYOLA(aug["mixup_ratio"], aug["mixup_memory"]) if aug["mixup_ratio"] > 0 else None
        self.canvas = RandomResizeCropBYOLA().canvas if aug["crop"] == "byola" else None
        self.sizes, self.scales, self.fader_gain, self.seed = sizes, scales, aug["fader_gain"], seed

    def draw(self, n: int, shape: tuple[int, int], step: int, view: int) -> dict:
        """Parameters of view `view` for n clips of log-mel shape (F, T): mixup alphas/picks (against the memory
        as it is now), crop boxes [n, 4], fader gains [n, 2]."""
        g = randomness.key_generator(self.seed, step, view)
        params = {}
        if self.mixup:
            params["alphas"], params["picks"] = draw_mixup(g, n, self.mixup.ratio, self.mixup.count,
                                                           self.mixup.n_memory)
        if self.canvas is None:
            params["boxes"] = draw_rrc_boxes(g, n, *shape, scale=self.scales[view])
        else:
            params["boxes"] = draw_byola_boxes(g, n, *shape)
        if self.fader_gain > 0:
            params["gains"] = draw_fader(g, n, self.fader_gain)
        return params

    def apply(self, logmel: torch.Tensor, params: dict, view: int, rows=slice(None)) -> torch.Tensor:
        """One view of rows `rows` of the normalised global batch logmel [N, 1, F, T] (the memory gets all N)."""
        x = self.mixup.mix(logmel, params["alphas"], params["picks"], rows) if self.mixup else logmel[rows]
        mode = "bilinear" if self.canvas is None else "bicubic"
        x = resized_crop_batch(x if self.canvas is None else self.canvas(x), params["boxes"][rows],
                               self.sizes[view], mode)
        if self.fader_gain > 0:
            gains = params["gains"][rows]
            x = linear_fade(x, gains[:, 0], gains[:, 1])
        return x

    def __call__(self, logmel: torch.Tensor, step: int = 0, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        logmel = self.norm(logmel) if self.norm else logmel
        rows = slice(rank, None, world)
        return [self.apply(logmel, self.draw(len(logmel), logmel.shape[-2:], step, view), view, rows)
                for view in range(len(self.sizes))]

    def state_dict(self) -> dict:
        return {"norm": self.norm.state_dict() if isinstance(self.norm, RunningNorm) else None,
                "mixup": self.mixup.state_dict() if self.mixup else None}

    def load_state_dict(self, state: dict) -> None:
        if state["norm"] is not None:
            self.norm.load_state_dict(state["norm"])
        if state["mixup"] is not None:
            self.mixup.load_state_dict(state["mixup"])


class MSNViews(LogMelViews):
    """The seed's MSN views (nttcslab/byol-a v2): 1 target and 1 anchor view (rand_size, rand_scale) and focal_views
    focal views (focal_size, focal_scale).

        target, anchor, focal = MSNViews(aug, focal_views=10, seed=0)(logmel, step, rank, world)
    target [b, 1, S...], anchor [b, 1, S...], focal [M*b, 1, s...] (view-major). aug.normalize_batch adds BYOL-A's
    NormalizeBatch per view size over the global batch.
    """

    def __init__(self, aug: dict, focal_views: int, stats: tuple[float, float] | None = None, seed: int = 0):
        super().__init__(aug, [aug["rand_size"]] * 2 + [aug["focal_size"]] * focal_views,
                         [aug["rand_scale"]] * 2 + [aug["focal_scale"]] * focal_views, stats, seed)
        self.normalize_batch = aug["normalize_batch"]

    def __call__(self, logmel: torch.Tensor, step: int = 0, rank: int = 0, world: int = 1):
        views = super().__call__(logmel, step, rank, world)
        target, anchor, focal = views[0], views[1], torch.cat(views[2:])
        if self.normalize_batch:
            big = normalize_global(torch.cat([target, anchor]))
            target, anchor, focal = *big.chunk(2), normalize_global(focal)
        return target, anchor, focal


class BYOLAViews(LogMelViews):
    """BYOL-A v2's two views (train_v2.py; byol-a v2): PrecomputedNorm, then per view MixupBYOLA (log-mixup-exp)
    -> RandomResizeCrop (virtual crop 1.0-1.5, frequency and time scale 0.6-1.5) -> RandomLinearFader, the
    output the size of the input crop; then NormalizeBatch over both views together.

        view1, view2 = BYOLAViews(aug, stats=(mean, std), seed=0)(logmel [N, 1, F, T], step, rank, world)
    """

    def __init__(self, aug: dict, shape: tuple[int, int], stats: tuple[float, float] | None = None, seed: int = 0):
        super().__init__({**aug, "crop": "byola"}, [tuple(shape)] * 2, [None] * 2, stats, seed)

    def __call__(self, logmel: torch.Tensor, step: int = 0, rank: int = 0, world: int = 1):
        view1, view2 = super().__call__(logmel, step, rank, world)
        return normalize_global(torch.cat([view1, view2])).chunk(2)


# ============================================================================ batched, on the training device
# The same augmentations for a whole batch at once on the model's device (issue 6), so a data loader only
# reads cached arrays. Parameters are drawn per sample, from the same distributions as the per-sample classes
# above, but as vectors from an explicit torch.Generator (e.g. randomness.key_generator(seed, step, view)) for the
# GLOBAL batch; each process applies the rows it holds. For the same drawn parameters the batched cores give
# the per-sample results (tests/test_batched_augment.py).


def randint_rows(generator: torch.Generator, low: torch.Tensor | int, high: torch.Tensor | int,
                  n: int) -> torch.Tensor:
    """n uniform integers, row k in [low_k, high_k] (both ends included), int64 on the generator's device."""
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    low = torch.as_tensor(low, dtype=torch.float64, device=u.device)
    high = torch.as_tensor(high, dtype=torch.float64, device=u.device)
    return (low + torch.floor(u * (high - low + 1))).long()


def draw_rrc_boxes(generator: torch.Generator, n: int, height: int, width: int, scale=(0.08, 1.0),
                   ratio=(3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params for n samples at once -> boxes [n, 4] (top, left, h, w).

    Per sample: up to `attempts` (area fraction ~ U(scale), log aspect ~ U(log ratio)) draws, the first that
    fits wins; none fits -> the central crop clamped to the ratio range; position uniform over the valid range.
    """
    g = generator
    area = height * width
    target = area * torch.empty(n, attempts, device=g.device).uniform_(scale[0], scale[1], generator=g)
    log_ratio = torch.log(torch.tensor(ratio, device=g.device))
    aspect = torch.exp(torch.empty(n, attempts, device=g.device).uniform_(log_ratio[0].item(), log_ratio[1].item(),
                                                                           generator=g))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    found = fits.any(dim=1)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    i = torch.where(found, randint_rows(g, 0, height - h, n), (height - fh) // 2)
    j = torch.where(found, randint_rows(g, 0, width - w, n), (width - fw) // 2)
    return torch.stack([i, j, h, w], dim=1)


def draw_byola_boxes(generator: torch.Generator, n: int, height: int, width: int, virtual_crop_scale=(1.0, 1.5),
                     freq_scale=(0.6, 1.5), time_scale=(0.6, 1.5)) -> torch.Tensor:
    """BYOL-A RandomResizeCrop boxes (see RandomResizeCropBYOLA.draw) for n samples on the canvas -> [n, 4]."""
    g = generator
    cf, ct = int(height * virtual_crop_scale[0]), int(width * virtual_crop_scale[1])
    u = torch.rand(n, 2, generator=g, dtype=torch.float64, device=g.device)
    h = (freq_scale[0] + u[:, 0] * (freq_scale[1] - freq_scale[0])).mul(height).long().clamp(1, cf)
    w = (time_scale[0] + u[:, 1] * (time_scale[1] - time_scale[0])).mul(width).long().clamp(1, ct)
    return torch.stack([randint_rows(g, 0, cf - h, n), randint_rows(g, 0, ct - w, n), h, w], dim=1)


def _interp_taps(start: torch.Tensor, length: torch.Tensor, out_size: int, mode: str):
    """Source indices and weights [n, out_size, k] with which F.interpolate resizes the span [start, start +
    length) of one axis to out_size: bilinear (align_corners=False, k=2) or bicubic (align_corners=True, k=4,
    A = -0.75, taps clamped to the span). All arithmetic in fp32, as torch's CPU kernels."""
    dst = torch.arange(out_size, device=start.device, dtype=torch.float32)[None]
    length_f = length.float()[:, None]
    if mode == "bilinear":
        scale = (length_f / out_size).double()  # fp32 scale; the source index rounded once (torch uses an FMA)
        src = (scale * (dst.double() + 0.5) - 0.5).float().clamp_min(0)
        i0 = src.floor().long().clamp_max(length[:, None] - 1)
        lam = (src - i0).clamp(0, 1)
        i1 = torch.minimum(i0 + 1, length[:, None] - 1)
        idx, weights = torch.stack([i0, i1], -1), torch.stack([1 - lam, lam], -1)
    elif mode == "bicubic":
        scale = (length_f - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(length_f)
        src = scale * dst
        i0 = src.floor().long().clamp_max(length[:, None] - 1)
        t = (src - i0).clamp(0, 1)
        a = -0.75
        weights = torch.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                               ((a + 2) * t - (a + 3)) * t * t + 1,
                               ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                               ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a], -1)
        offsets = torch.arange(-1, 3, device=start.device)
        idx = torch.minimum((i0[..., None] + offsets).clamp_min(0), length[:, None, None] - 1)
    else:
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    return idx + start[:, None, None], weights


def _weighted_rows(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights[:, i, :, None] * table[rows[:, i]]: rows [B, k, S] index the rows of table [N, D] -> [B, S, D]."""
    b, k, s = rows.shape
    picked = table.index_select(0, rows.flatten()).view(b, k, s, -1)
    weights = weights.to(table.dtype)[..., None]
    out = picked[:, 0].mul_(weights[:, 0])
    for i in range(1, k):
        out.addcmul_(picked[:, i], weights[:, i])
    return out


def resized_crop_batch(x: torch.Tensor, boxes: torch.Tensor, size, mode: str = "bilinear") -> torch.Tensor:
    """Batched `resized_crop`: x [B, C, F, T], boxes [B, 4] (top, left, h, w), one box per sample -> [B, C, *size].

    Separable, as torch's kernel: interpolate along time, then along frequency; each pass copies whole rows
    (index_select) and adds them with their weights, so it is fast on CPU and GPU alike.
    """
    out_h, out_w = _size2(size)
    boxes = boxes.to(x.device)
    b, c, f, t = x.shape
    idx_w, w_w = (v.transpose(1, 2) for v in _interp_taps(boxes[:, 1], boxes[:, 3], out_w, mode))  # [B, k, out_w]
    idx_h, w_h = (v.transpose(1, 2) for v in _interp_taps(boxes[:, 0], boxes[:, 2], out_h, mode))  # [B, k, out_h]
    first = torch.arange(b, device=x.device)[:, None, None]
    by_time = x.permute(0, 3, 1, 2).reshape(b * t, c * f)
    cols = _weighted_rows(by_time, first * t + idx_w, w_w)  # [B, out_w, C * F]
    by_freq = cols.view(b, out_w, c, f).permute(0, 3, 2, 1).reshape(b * f, c * out_w)
    out = _weighted_rows(by_freq, first * f + idx_h, w_h)  # [B, out_h, C * out_w]
    return out.view(b, out_h, c, out_w).permute(0, 2, 1, 3).contiguous()


def draw_mixup(generator: torch.Generator, n: int, ratio: float, count: int, n_memory: int):
    """MixupBYOLA.draw for n samples at once: alphas [n] = ratio * U[0, 1) and pool indices [n] (-1 = no mix)
    uniform over the memory as sample b sees it (the `count` held items and the b earlier batch items, at most
    n_memory); both as NumPy arrays, the form MixupBYOLA.mix takes."""
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64, device=generator.device).cpu().numpy()
    b = np.arange(n)
    available = np.minimum(count + b, n_memory)
    picks = np.where(available > 0, count + b - available + np.floor(u[:, 1] * available), -1).astype(np.int64)
    return ratio * u[:, 0], picks


def draw_fader(generator: torch.Generator, n: int, gain: float) -> torch.Tensor:
    """RandomLinearFader gains for n samples: [n, 2] (head, tail) = gain * (2 U[0, 1) - 1)."""
    return gain * (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64, device=generator.device) - 1)
