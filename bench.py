"""Benchmarks that print numbers (speed and memory targets are checked here, never in unit tests).

    python bench.py preprocess [--clips 2000] [--seconds 5] [--workers N]
    python bench.py loader [--clips 2000] [--workers 0,2]

preprocess: generates an ESC-50-sized set once (2000 clips x 5 s at 44.1 kHz, cached in
bench_data/), then times preprocess.py with its default workers and, in the same run, a plain
single-process, single-thread loop (load, resample, log-mel, save per file). Prints clips/s, times
real time, and the ratio. Targets (issue 2): >= 1000x real time on 2 cores and >= 1.5x the plain loop.

loader: a cache of ten-second log-mels [64, 1001] (generated once), read through data.LogMelCrops and a
DataLoader (batch 64) from the page cache, per-clip files vs the packed memory map, whole clips and
96-frame random crops. Target (issue 6): >= 5,000 ten-second clips/s on 2 cores.

    python bench.py augment [--config CONFIG] [--batch 64]
    python bench.py train [--batch B] [--steps 5]
    python bench.py gpu [--steps 10] [--peak-tflops T]
    python bench.py eval [--clips 128] [--seconds 5]
    python bench.py scale [--clips 10000,50000,200000] [--dir /tmp/bench_scale] [--dtype float16]

augment: for each registry method whose script has `bench_views` (e.g. the seed config's multi-crop views:
1 + 1 x 224 and 10 x 96 crops per clip, mixup, fader, RunningNorm), the views made clip by clip with augment's
per-sample classes, as a loader worker would, and by the batched view maker (CPU, and CUDA when present) in the
same run; prints clips/s and the ratio. Target: >= 5x.
train: each method's small (demo) config run as `python pretrain_X.py ... train.max_steps=N` on CPU over random
clips; median step time, training clips/s (loading excluded), peak memory and model FLOPs per step, from the
run's results.json (trainer.py, train.count_flops).
gpu: the same for each method's FULL config on one GPU (today: ViT-B/32 with 1 + 1 + 10 views, a 2-D ResNet18 at
batch 1024, AudioNTT2022 at batch 256) with bf16 autocast, train.compile off and on, MFU against the GPU's dense
bf16 peak; then a CUDA-vs-CPU parity check of one fp32 step of each small config. Under 8 minutes on one H200.
eval: models.embed_dataset over in-memory clips (small encoders on CPU, the full ones on CUDA).
scale: for each N, a packed cache of N ten-second log-mels (float16 by default: 128 KB a clip), then times
the pack, manifest read, sampler epoch, loader start-up, one epoch of 96-frame crops, the loader's index
memory and an embedding-cache write; prints each per clip, its growth exponent and its extrapolation to
2 M clips (AudioSet), with the issue-10 targets (printed, not asserted).
Then (issue 21), for float32 and float16, a pack larger than free RAM: the disk's own cold figures on it
(sequential GB/s; random crop-sized reads/s with 1, --workers and --workers x data.READ_THREADS reads in
flight), the bounds they give, and the training loader's read paths (LOADERS: item reads by memory map or
pread, block order, batch reads by pread or O_DIRECT) for --seconds each after dropping the pack from the page
cache, with the CPU cores they use; the best against the bounds and the 1,300 crops/s before, O_DIRECT against
buffered batch reads, worker memory, index bytes per clip and start-up, extrapolated to 2 M clips (targets
printed, not asserted).
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

import methods

BENCH_DIR = Path("bench_data")


def make_esc50_like(root: Path, clips: int, seconds: float, sr: int = 44100) -> Path:
    """ESC-50 layout with `clips` noisy tone clips; reused when already complete."""
    meta = root / "meta" / "esc50.csv"
    if meta.exists() and len(pd.read_csv(meta)) == clips:
        return root
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    rows = []
    for i in range(clips):
        fold, target = i % 5 + 1, i % 50
        name = f"{fold}-{100000 + i}-A-{target}.wav"
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.normal(size=t.size)
        sf.write(root / "audio" / name, wave.astype(np.float32), sr, subtype="PCM_16")
        rows.append(dict(filename=name, fold=fold, target=target, category=f"class{target}", esc10=target < 10,
                         src_file=100000 + i, take="A"))
    meta.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(meta, index=False)
    return root


def plain_loop(root: Path, out: Path) -> float:
    """The baseline: one process, one thread, load -> resample -> log-mel -> save, file by file."""
    from audio import LogMel, load_audio
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    logmel = LogMel()
    start = time.time()
    for path in sorted((root / "audio").glob("*.wav")):
        wave = load_audio(path)
        np.save(out / f"{path.stem}.npy", logmel(torch.from_numpy(wave)).numpy())
    return time.time() - start


def bench_preprocess(args: argparse.Namespace) -> None:
    import subprocess
    import sys
    root = make_esc50_like(BENCH_DIR / f"esc50_like_{args.clips}x{args.seconds:g}s", args.clips, args.seconds)
    audio_seconds = args.clips * args.seconds
    cache = BENCH_DIR / "cache_preprocess"
    shutil.rmtree(cache, ignore_errors=True)
    argv = ["--dataset", "esc50", "--root", str(root), "--out", str(cache)]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    start = time.time()  # the command as a user runs it (its interpreter start-up, ~2 s, included)
    subprocess.run([sys.executable, "preprocess.py", *argv], check=True)
    t_pre = time.time() - start
    shutil.rmtree(cache, ignore_errors=True)
    t_plain = plain_loop(root, BENCH_DIR / "cache_plain")
    shutil.rmtree(BENCH_DIR / "cache_plain", ignore_errors=True)
    print(f"\n{'':28s}{'seconds':>9s}{'clips/s':>10s}{'x real time':>13s}")
    workers = args.workers or os.cpu_count()
    for name, t in [(f"preprocess.py ({workers} workers)", t_pre), ("plain loop (1 thread)", t_plain)]:
        print(f"{name:28s}{t:9.1f}{args.clips / t:10.1f}{audio_seconds / t:13.0f}")
    print(f"ratio preprocess.py / plain loop: {t_plain / t_pre:.2f}x   (targets: >= 1000x real time, >= 1.5x)")


def make_logmel_cache(root: Path, clips: int, frames: int = 1001) -> Path:
    """A cache of random ten-second log-mels with a manifest and a packed copy; reused when complete."""
    import data
    if (root / "packed" / "index.npz").exists() and len(data.read_manifest(root)) == clips:
        return root
    (root / "logmel").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(clips):
        np.save(root / "logmel" / f"{i}.npy", rng.normal(-5, 2, size=(64, frames)).astype(np.float32))
        rows.append(dict(id=str(i), logmel=f"logmel/{i}.npy", wave="", label=f"c{i % 10}", split="train",
                         fold="", duration=10.0, source=""))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    data.pack_logmels(root)
    return root


def bench_loader(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader

    import data
    cache = make_logmel_cache(BENCH_DIR / f"logmel10s_{args.clips}", args.clips)
    df = data.read_manifest(cache)
    print(f"{'storage':8s}{'item':>12s}{'workers':>9s}{'clips/s':>10s}{'MB/s':>9s}")
    for use_packed in (False, True):
        for frames in (None, 96):
            for workers in [int(w) for w in args.workers.split(",")]:
                ds = data.LogMelCrops(cache, df, frames=frames, random_crop=frames is not None, use_packed=use_packed)
                loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                                    persistent_workers=workers > 0)
                for _ in loader:  # warm the page cache and the workers
                    pass
                start, n, nbytes = time.time(), 0, 0
                for x, _ in loader:
                    n, nbytes = n + len(x), nbytes + x.numel() * 4
                t = time.time() - start
                item = "whole 10 s" if frames is None else f"crop {frames}"
                print(f"{'packed' if use_packed else 'files':8s}{item:>12s}{workers:9d}{n / t:10.0f}"
                      f"{nbytes / t / 1e6:9.0f}")
    print("target: >= 5000 ten-second clips/s on 2 cores (issue 6)")


# ----------------------------------------------------------------------------- augment, train, eval (issue 6)

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "V100": 125.0}  # dense bf16 (V100: fp16) tensor-core peaks, vendor sheets


def bench_devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_augment(args: argparse.Namespace) -> None:
    """Every registry method whose script offers `bench_views(cfg)`: its per-sample view pipeline (clip by clip,
    as a loader worker) against its batched view maker on each device, in clips/s."""
    for method in methods.METHODS.values():
        if not hasattr(method.module, "bench_views"):
            continue
        path = args.config if args.config and methods.for_config(args.config) is method else method.configs["full"]
        cfg = method.resolve(path)  # a complete config (the file is a delta)
        per_sample_views, batched_views, what = method.module.bench_views(cfg)
        logmel = torch.randn(args.batch, 1, cfg["model"]["n_mels"], cfg["model"]["crop_frames"]) * 2 - 5
        print(f"{method.title} views of {path}: {what}; batch {args.batch}, {torch.get_num_threads()} CPU threads")
        state: dict = {}
        for _ in range(2):  # warm up: a running normalisation freezes and a mixup memory fills
            per_sample_views(logmel, state)
        start = time.perf_counter()
        for _ in range(2):
            per_sample_views(logmel, state)
        per_sample = 2 * args.batch / (time.perf_counter() - start)
        rows = [("per-sample (loader worker)", "cpu", per_sample)]
        for device in bench_devices():
            views = batched_views()
            x = logmel.to(device)
            for step in range(2):  # warm up as the per-sample pipeline
                views(x, step)
            sync(device)
            start = time.perf_counter()
            for step in range(2, 2 + args.steps):
                views(x, step)
            sync(device)
            rows.append((f"batched ({type(views).__name__})", device.type,
                         args.batch * args.steps / (time.perf_counter() - start)))
        print(f"{'pipeline':28s}{'device':>8s}{'clips/s':>10s}{'x per-sample':>14s}")
        for name, device, rate in rows:
            print(f"{name:28s}{device:>8s}{rate:10.0f}{rate / per_sample:14.1f}")
        print("target: batched >= 5x per-sample on CPU (issue 6)")

# ----------------------------------------------------------------------------- training steps (train, gpu)
# Each method runs as the user runs it, `python pretrain_X.py --config ... train.max_steps=N`, on a cache of
# random clips; the training core writes the median step time, clips/s, peak memory and (train.count_flops)
# the model FLOPs of a step into the run's results.json.

# The methods, their configs ("full", "demo") and the overrides that leave only training: methods.METHODS.


def make_train_cache(root: Path, clips: int) -> Path:
    """Random ten-second log-mels [64, 1001] and two-second waves, 10 labels, folds 1-5; reused when complete."""
    import data
    if (root / "manifest.csv").exists() and len(data.read_manifest(root)) == clips:
        return root
    for sub in ("logmel", "wave"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(clips):
        np.save(root / "logmel" / f"{i}.npy", rng.normal(-5, 2, size=(64, 1001)).astype(np.float32))
        np.save(root / "wave" / f"{i}.npy", (0.1 * rng.normal(size=32000)).astype(np.float32))
        rows.append(dict(id=str(i), logmel=f"logmel/{i}.npy", wave=f"wave/{i}.npy", label=f"c{i % 10}", split="",
                         fold=i % 5 + 1, duration=2.0, source=""))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def run_method(method: methods.Method, config: str, overrides: list[str], out: Path) -> dict:
    """One short pretraining run as a subprocess; its results.json, or {'error': last lines of its output}."""
    import json
    import subprocess
    import sys
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, method.script, "--config", config, f"train.out_dir={out}", "train.log_every=1",
               "train.save_every=0", *method.bench_overrides, *overrides]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stdout + done.stderr).strip().splitlines()[-1:]}
    results = json.loads((out / "results.json").read_text())
    log = pd.read_csv(out / "log.csv")
    results["first_loss"] = float(log["loss"].dropna().iloc[0])
    return results


def peak_tflops(args: argparse.Namespace) -> float | None:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)


def train_row(label: str, device: str, batch: int, r: dict, flops: float | None, peak: float | None) -> str:
    if "error" in r:
        return f"{label:34s}{device:>7s}{batch:7d}   failed: {' '.join(r['error'])[:80]}"
    seconds = r["step_ms"] / 1000
    mfu = f"{100 * flops / seconds / (peak * 1e12):.1f}%" if flops and peak and device == "cuda" else "-"
    gflop = f"{flops / 1e9:.1f}" if flops else "-"
    return (f"{label:34s}{device:>7s}{batch:7d}{r['step_ms']:9.1f}{r['train_clips_per_s']:9.0f}"
            f"{r['peak_memory_gib']:11.2f}{gflop:>12s}{mfu:>7s}")


TRAIN_HEADER = f"{'run':34s}{'device':>7s}{'batch':>7s}{'step ms':>9s}{'clips/s':>9s}{'peak GiB':>11s}" \
               f"{'GFLOP/step':>12s}{'MFU':>7s}"


def bench_train(args: argparse.Namespace) -> None:
    """The small (demo) configs on CPU, a few steps each."""
    cache = make_train_cache(BENCH_DIR / "train_cache", 300)
    print(f"short runs of each method's small config on random clips ({cache}); peak GiB on CPU = peak RSS")
    print(TRAIN_HEADER)
    for method in methods.METHODS.values():
        name, small, batch = method.title, method.configs["demo"], args.batch or 32
        r = run_method(method, small, [f"data.cache={cache}", f"optim.batch_size={batch}", "train.device=cpu",
                                     f"train.max_steps={args.steps + 2}", "train.count_flops=true",
                                     "data.num_workers=0"], BENCH_DIR / "runs" / method.name)
        print(train_row(f"{name} ({small})", "cpu", batch, r, r.get("flops_per_step"), None))


def bench_gpu(args: argparse.Namespace) -> None:
    """On one GPU: each method's full config (bf16 autocast, train.compile off and on), clips/s, step time, peak
    memory and MFU; then a CUDA-vs-CPU parity check of one fp32 step of each small config. One table."""
    if not torch.cuda.is_available():
        raise SystemExit("bench.py gpu: no CUDA device")
    cache = make_train_cache(BENCH_DIR / "train_cache", 1400)  # the largest full batch (1024) from folds 1-4
    peak = peak_tflops(args)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, dense bf16 peak {peak} TFLOPS; "
          f"{args.steps} measured steps per run after 2 warm-up steps")
    print(TRAIN_HEADER)
    common = [f"data.cache={cache}", "train.device=cuda", "train.amp=true", f"data.num_workers={args.workers}",
              f"train.max_steps={args.steps + 2}"]
    for method in methods.METHODS.values():
        name, full, flops = method.title, method.configs["full"], None
        for compile_ in (False, True):
            r = run_method(method, full, [*common, f"train.compile={str(compile_).lower()}",
                                          f"train.count_flops={str(not compile_).lower()}"],
                           BENCH_DIR / "runs" / method.name)
            flops = r.get("flops_per_step") or flops
            batch = r.get("batch_size", 0)
            print(train_row(f"{name} full, bf16, compile {'on' if compile_ else 'off'}", "cuda", batch, r, flops,
                            peak), flush=True)
    print("\nparity: one fp32 step of each small config, loss on CUDA vs CPU")
    for method in methods.METHODS.values():
        name, small, losses = method.title, method.configs["demo"], {}
        for device in ("cpu", "cuda"):
            r = run_method(method, small, [f"data.cache={cache}", f"train.device={device}", "train.amp=false",
                                           "train.max_steps=1", "data.num_workers=0"],
                           BENCH_DIR / "runs" / method.name)
            losses[device] = r.get("first_loss", float("nan"))
        diff = abs(losses["cuda"] - losses["cpu"]) / max(abs(losses["cpu"]), 1e-12)
        verdict = "ok" if diff < 1e-3 else "MISMATCH"
        print(f"{name:8s} cpu {losses['cpu']:.6f}  cuda {losses['cuda']:.6f}  rel diff {diff:.1e}  {verdict}")
    print("targets: " + "; ".join(f"{m.title} {m.gpu_target}" for m in methods.METHODS.values() if m.gpu_target))


def bench_eval(args: argparse.Namespace) -> None:
    import models
    print(f"models.embed_dataset on {args.seconds:g} s clips (long='chunk', pool='cls'), "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'encoder':34s}{'device':>7s}{'batch':>7s}{'clips/s':>9s}{'x real time':>13s}")
    for device in bench_devices():
        for method in methods.METHODS.values():
            path = method.configs["full" if device.type == "cuda" else "demo"]
            cfg = method.resolve(path, method.bench_overrides)
            encoder = method.build_encoder(cfg)
            n = args.clips if device.type == "cpu" else 8 * args.clips
            if encoder.input_kind == "wave":
                clips = 0.1 * torch.randn(n, int(args.seconds * 16000))
            else:
                clips = torch.randn(n, 1, 64, 1 + int(args.seconds * 100))
            batch = args.batch if device.type == "cpu" else 8 * args.batch
            models.embed_dataset(encoder, clips[:batch], "chunk", "cls", batch, 0, device, desc="warm up")
            sync(device)
            start = time.perf_counter()
            models.embed_dataset(encoder, clips, "chunk", "cls", batch, 0, device, desc=path)
            sync(device)
            rate = n / (time.perf_counter() - start)
            name = f"{cfg['model']['arch']} ({path.split('/')[-1]})"
            print(f"{name:34s}{device.type:>7s}{batch:7d}{rate:9.1f}{rate * args.seconds:13.0f}")


# ----------------------------------------------------------------------------- scale (issue 10)

SCALE_TARGET_CLIPS = 2_000_000  # AudioSet


def make_scale_cache(root: Path, clips: int, frames: int, dtype: str) -> float:
    """N ten-second log-mels [64, frames] written straight into pack shards (data.PackWriter, the workers' code
    path; 64 distinct random clips reused, so that generating them costs nothing) + manifest.csv + index.npz;
    returns the seconds spent packing."""
    import data
    rng = np.random.default_rng(0)
    pool = [rng.normal(-5, 2, size=(64, frames)).astype(dtype) for _ in range(64)]
    ids = [f"Y{i:010d}" for i in range(clips)]
    start = time.perf_counter()
    writer = data.PackWriter(root / data.PACKED_DIR, "all", dtype)
    entries = {cid: writer.append(pool[i % 64]) for i, cid in enumerate(ids)}
    data.write_pack_index(root / data.PACKED_DIR, "index.npz", entries, ids, 64, dtype)
    seconds = time.perf_counter() - start
    pd.DataFrame({"id": ids, "logmel": [f"logmel/{c}.npy" for c in ids], "wave": "", "label": "/m/09x0r",
                  "split": "unbalanced_train", "fold": "", "duration": 10.0,
                  "source": [f"audio/{c}.wav" for c in ids]}).to_csv(root / "manifest.csv", index=False)
    return seconds


def scale_costs(root: Path, clips: int, frames: int, dtype: str, dim: int, workers: int = 0) -> dict:
    """Seconds (and bytes) of each cost the issue lists, for one cache of `clips` clips."""
    import tracemalloc

    from torch.utils.data import DataLoader

    import data
    costs = {"pack (s)": make_scale_cache(root, clips, frames, dtype)}
    start = time.perf_counter()
    df = data.read_manifest(root)
    costs["manifest read (s)"] = time.perf_counter() - start
    tracemalloc.start()
    start = time.perf_counter()
    dataset = data.LogMelCrops(root, df, frames=96, random_crop=True)
    sampler = data.EpochBatches(len(dataset), 64, seed=0)  # the training core's global batches
    loader = DataLoader(dataset, batch_sampler=sampler.epoch(0), num_workers=workers)
    batches = iter(loader)
    next(batches)
    costs["loader start-up (s)"] = time.perf_counter() - start
    index_bytes, index_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    costs["index memory (MB)"] = index_bytes / 1e6
    costs["index peak (MB)"] = index_peak / 1e6
    costs["manifest frame (MB)"] = df.memory_usage(deep=True).sum() / 1e6
    start = time.perf_counter()
    order = sampler.epoch(1)
    costs["sampler epoch (s)"] = time.perf_counter() - start
    start, seen = time.perf_counter(), 64
    for x, _ in batches:
        seen += len(x)
    costs["epoch of 96-frame crops (s)"] = time.perf_counter() - start
    costs["crops/s"] = (seen - 64) / costs["epoch of 96-frame crops (s)"]
    assert seen == 64 * len(sampler) == 64 * len(order)
    costs["embedding cache write (s)"] = write_embeddings(root / "embeddings", clips, dim)
    return costs


def write_embeddings(folder: Path, clips: int, dim: int) -> float:
    """Seconds to write [clips, dim] float32 embeddings as linear_eval does (temp + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    X = np.full((clips, dim), 0.5, dtype=np.float32)
    start = time.perf_counter()
    tmp = folder / f".task-model-key.npy.tmp{os.getpid()}.npy"
    np.save(tmp, X)
    os.replace(tmp, folder / "task-model-key.npy")
    return time.perf_counter() - start


def print_scale_table(results: dict[int, dict]) -> None:
    """Each cost per clip at every N, its growth exponent (log-log slope; 1 = linear) and its value at 2 M."""
    sizes = sorted(results)
    print(f"\n{'cost':30s}" + "".join(f"{f'N={n:,}':>16s}" for n in sizes) + f"{'growth':>8s}{'at 2 M':>14s}")
    for name in results[sizes[0]]:
        values = np.array([results[n][name] for n in sizes])
        rate = name == "crops/s"
        per_clip = values if rate else values / np.array(sizes)
        slope = np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-9)), 1)[0] if len(sizes) > 1 else np.nan
        at_target = values[-1] if rate else per_clip[-1] * SCALE_TARGET_CLIPS
        cells = "".join(f"{v if rate else v * 1e6:16.2f}" for v in per_clip)  # s -> us, MB -> bytes per clip
        print(f"{name:30s}{cells}{slope:8.2f}{at_target:14,.1f}")
    print("per clip: us (times) or bytes (memory); crops/s as measured; 'at 2 M' = the largest N's per-clip cost "
          "x 2,000,000 (s or MB)")
    print("targets (not asserted): growth <= 1 (at most linear); loader start-up at 2 M < 30 s; index memory at "
          "2 M < 200 MB per process; crops >= 5,000/s on 2 cores")


def bench_scale(args: argparse.Namespace) -> None:
    results = {}
    for clips in [int(n) for n in str(args.clips).split(",") if n]:
        root = Path(args.dir) / f"scale_{clips}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        try:
            results[clips] = scale_costs(root, clips, args.frames, args.dtype, args.dim, args.workers)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        print(f"N={clips:,}: " + ", ".join(f"{k} {v:,.2f}" for k, v in results[clips].items()), flush=True)
    if results:
        print_scale_table(results)
    if args.disk_dtypes:
        import data
        print_disk_table(scale_disk(args), args.workers, args.workers * (args.read_threads or data.READ_THREADS))


# ----------------------------------------------------------------------------- scale: against the disk (issue 21)

CROP_FRAMES, N_MELS, CLIP_FRAMES = 96, 64, 1001
BASELINE_CROPS_PER_S = 1300  # random crops/s of the memory-mapped pack at 200k clips before block order (issue 21)


def write_big_pack(root: Path, clips: int, dtype: str) -> Path:
    """A packed cache of `clips` ten-second log-mels written in 64 MB chunks straight into 2 GiB shards (one
    random chunk repeated: generating it costs nothing), its index.npz and a manifest; returns root."""
    import data
    folder = root / data.PACKED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    frame_bytes = N_MELS * np.dtype(dtype).itemsize
    per_shard = data.SHARD_BYTES // (CLIP_FRAMES * frame_bytes)
    chunk = np.random.default_rng(0).normal(-5, 2, size=(64 << 20) // frame_bytes * N_MELS).astype(dtype).tobytes()
    entries, ids = {}, [f"Y{i:010d}" for i in range(clips)]
    for shard, first in enumerate(range(0, clips, per_shard)):
        count, name = min(per_shard, clips - first), f"logmel-all-0-{shard + 1:03d}.bin"
        left = count * CLIP_FRAMES * frame_bytes
        with open(folder / name, "wb") as f:
            while left > 0:
                left -= f.write(chunk[:min(left, len(chunk))])
        entries.update({ids[first + k]: (name, k * CLIP_FRAMES, CLIP_FRAMES) for k in range(count)})
    data.write_pack_index(folder, "index.npz", entries, ids, N_MELS, dtype)
    pd.DataFrame({"id": ids, "logmel": [f"logmel/{c}.npy" for c in ids], "wave": "", "label": "/m/09x0r,/m/04rlf",
                  "split": "unbalanced_train", "fold": "", "duration": 10.0,  # AudioSet-like rows
                  "source": [f"audioset/unbalanced_train_segments/{c}_30.000.flac" for c in ids]}).to_csv(
        root / "manifest.csv", index=False)
    return root


def drop_cache(files: list[Path]) -> None:
    """Evict the files from the page cache (posix_fadvise DONTNEED), so that the next reads come from the disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def disk_sequential(files: list[Path], max_bytes: int = 4 << 30, block: int = 16 << 20) -> float:
    """Cold sequential read bandwidth (bytes/s) over the first `max_bytes` of the pack, in 16 MB reads."""
    drop_cache(files)
    done, start = 0, time.perf_counter()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        offset = 0
        while done < max_bytes and (n := len(os.pread(fd, block, offset))):
            done, offset = done + n, offset + n
        os.close(fd)
        if done >= max_bytes:
            break
    return done / (time.perf_counter() - start)


def disk_random(files: list[Path], read_bytes: int, threads: int, seconds: float = 4.0) -> float:
    """Cold random reads/s of `read_bytes` at random frame-aligned offsets of the pack, `threads` in flight."""
    from concurrent.futures import ThreadPoolExecutor
    drop_cache(files)
    sizes = [os.path.getsize(p) for p in files]

    def worker(seed: int) -> int:
        rng, fds, count = np.random.default_rng(seed), [os.open(p, os.O_RDONLY) for p in files], 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            k = int(rng.integers(len(files)))
            os.pread(fds[k], read_bytes, int(rng.integers(0, (sizes[k] - read_bytes) // 4096)) * 4096)
            count += 1
        for fd in fds:
            os.close(fd)
        return count

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(worker, range(threads))) / seconds


def worker_stats(loader_iter) -> tuple[float, float, float]:
    """Of a DataLoader iterator's worker processes: mean RSS and mean private memory (MB, smaps_rollup: pages
    no other process maps; the index arrays the workers share with the training process are not private), and
    their CPU seconds so far (utime + stime) summed; zeros without workers."""
    rss, private, cpu = [], [], 0.0
    for w in getattr(loader_iter, "_workers", []):
        try:
            with open(f"/proc/{w.pid}/smaps_rollup") as f:
                fields = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f if ":" in line)
                          if v.strip().endswith("kB")}
            with open(f"/proc/{w.pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a worker that has just exited
            continue
        rss.append(fields["Rss"] / 1024)
        private.append((fields["Private_Clean"] + fields["Private_Dirty"]) / 1024)
        cpu += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return (float(np.mean(rss)) if rss else 0.0), (float(np.mean(private)) if private else 0.0), cpu


LOADERS = [  # (name, data.order, LogMelCrops read, batch reads): the read paths of the disk table
    ("random/mmap items (before issue 21)", "random", "mmap", False),
    ("random/pread items", "random", "pread", False),
    ("block/mmap items", "block", "mmap", False),
    ("random/pread batches", "random", "pread", True),
    ("random/direct batches", "random", "direct", True),
    ("block/pread batches", "block", "pread", True),
]


def loader_rate(root: Path, order: str, read: str, batch_reads: bool, workers: int, seconds: float,
                batch: int = 64, read_threads: int | None = None) -> dict:
    """The training loader (trainer.epoch_loader's keyed batches over data.LogMelCrops) in `order`, reading with
    `read`, item by item or in batch reads, for `seconds` (at most one epoch) after dropping the pack from the
    page cache: crops/s, the CPU it used (cores: training process + workers) and the workers' memory (MB)."""
    from torch.utils.data import DataLoader

    import data
    import randomness
    df = data.read_manifest(root, data.TRAIN_COLUMNS)
    dataset = data.LogMelCrops(root, df, frames=CROP_FRAMES, random_crop=True)
    batches = data.training_batches(dataset, {"order": order, "block_clips": 256, "open_blocks": 8}, batch, 0)
    dataset.read, dataset.batch_reads = read, batch_reads  # measure exactly this read path
    dataset.read_threads = read_threads or data.READ_THREADS
    drop_cache([m.filename for m in dataset.packed.maps])
    keyed = randomness.KeyedBatches(batches.epoch(0), 0, 0)
    loader = iter(DataLoader(randomness.KeyedItems(dataset), batch_sampler=keyed, num_workers=workers,
                             collate_fn=randomness.KeyedItems.collate, prefetch_factor=4 if workers else None))
    next(loader)
    seen, start, first = 0, time.perf_counter(), None
    rss = private = cores = 0.0
    for batches_seen, (logmel, _) in enumerate(loader, 1):
        seen += len(logmel)
        if batches_seen % 20 == 0:  # sampled while the workers live (they exit at the epoch's end)
            now, (w_rss, w_private, w_cpu) = time.perf_counter(), worker_stats(loader)
            cpu = w_cpu + time.process_time()
            rss, private = max(rss, w_rss), max(private, w_private)
            if first is None:
                first = (now, cpu)
            elif now > first[0]:
                cores = (cpu - first[1]) / (now - first[0])
        if time.perf_counter() - start > seconds:
            break
    rate = seen / (time.perf_counter() - start)
    del loader
    return {"crops/s": rate, "cores": cores, "worker RSS MB": rss, "worker private MB": private}


def startup_seconds(root: Path) -> tuple[float, int]:
    """Seconds to open the cache for training (manifest, pack index, dataset, block order) and the loader's
    per-clip index bytes (pack index + targets + block numbers)."""
    import data
    start = time.perf_counter()
    df = data.read_manifest(root, data.TRAIN_COLUMNS)  # as pretrain_msn.py / pretrain_byola.py
    dataset = data.LogMelCrops(root, df, frames=CROP_FRAMES, random_crop=True)
    data.training_batches(dataset, {"order": "block", "block_clips": 256, "open_blocks": 8}, 64, 0)
    seconds = time.perf_counter() - start
    return seconds, dataset.packed.nbytes + dataset.targets.nbytes + dataset.block_of.nbytes


def free_ram() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def scale_disk(args: argparse.Namespace) -> list[dict]:
    """One row per dtype: the disk's cold figures on a pack larger than free RAM, their bounds, the loader's read
    paths (LOADERS), memory and start-up."""
    import data
    rows = []
    depth = args.workers * (args.read_threads or data.READ_THREADS)  # reads in flight of batch reads with pread
    for dtype in args.disk_dtypes.split(","):
        clip_bytes = CLIP_FRAMES * N_MELS * np.dtype(dtype).itemsize
        crop_bytes = CROP_FRAMES * N_MELS * np.dtype(dtype).itemsize
        clips = int(args.pack_gb * 1e9 / clip_bytes) if args.pack_gb else int(1.1 * free_ram() / clip_bytes)
        root = Path(args.dir) / f"disk_{dtype}"
        shutil.rmtree(root, ignore_errors=True)
        try:
            start = time.perf_counter()
            write_big_pack(root, clips, dtype)
            row = {"dtype": dtype, "clips": clips, "pack GB": clips * clip_bytes / 1e9,
                   "free RAM GB": free_ram() / 1e9, "write s": time.perf_counter() - start}
            files = sorted((root / "packed").glob("*.bin"))
            row["disk: sequential GB/s"] = disk_sequential(files) / 1e9
            for qd in sorted({1, args.workers, depth}):
                row[f"disk: random crop reads/s, {qd} in flight"] = disk_random(files, crop_bytes, qd)
            row["bound: clips/s read in order"] = row["disk: sequential GB/s"] * 1e9 / clip_bytes
            for name, order, read, batch_reads in LOADERS:
                measured = loader_rate(root, order, read, batch_reads, args.workers, args.seconds,
                                       read_threads=args.read_threads)
                row[f"loader {name}"] = measured["crops/s"]
                row[f"  CPU cores used, {name}"] = measured["cores"]
                if batch_reads and order == "random" and read == "pread":
                    row["worker RSS MB (random/pread batches)"] = measured["worker RSS MB"]
                    row["worker private MB (random/pread batches)"] = measured["worker private MB"]
            row["startup s"], index_bytes = startup_seconds(root)
            row["index B/clip"] = index_bytes / clips
            print(f"{dtype}: " + ", ".join(f"{k.strip()} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in row.items()), flush=True)
            rows.append(row)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def print_disk_table(rows: list[dict], workers: int, depth: int) -> None:
    """The disk table, then per dtype the best loader against the bounds (the issue's: the disk's sequential
    clips/s and its random crop reads/s at 1 in flight; and with the random reads at the loader's own depth),
    the 1,300/s before, and memory and start-up at 2 M clips (targets printed, not asserted)."""
    print(f"\n{'on a pack larger than free RAM (cold)':58s}" + "".join(f"{r['dtype']:>14s}" for r in rows))
    for key in rows[0]:
        if key != "dtype":
            print(f"{key:58s}" + "".join(f"{r[key]:14,.2f}" if isinstance(r[key], float) else f"{r[key]:>14,}"
                                          for r in rows))
    print()
    for r in rows:
        best_key = max((k for k in r if k.startswith("loader ")), key=lambda k: r[k])
        best, seq = r[best_key], r["bound: clips/s read in order"]
        print(f"{r['dtype']}: best loader {best_key[7:]}: {best:,.0f} crops/s "
              f"= {best / BASELINE_CROPS_PER_S:.1f}x the {BASELINE_CROPS_PER_S:,}/s before (target >= 5x)")
        direct, buffered = r["loader random/direct batches"], r["loader random/pread batches"]
        print(f"{r['dtype']}:   random order, batch reads: O_DIRECT {direct:,.0f} vs buffered pread {buffered:,.0f} "
              f"crops/s = {direct / buffered:.2f}x")
        for qd, what in ((1, "the issue's bound (random reads 1 in flight)"),
                         (depth, f"random reads {depth} in flight, as the loader keeps them")):
            bound = max(seq, r[f"disk: random crop reads/s, {qd} in flight"])
            print(f"{r['dtype']}:   vs {what}: better bound {bound:,.0f}/s -> {best / bound:.0%} (target >= 70%)")
        private, rss, index = (r["worker private MB (random/pread batches)"],
                               r["worker RSS MB (random/pread batches)"], r["index B/clip"])
        rss_2m = rss + index * (SCALE_TARGET_CLIPS - r["clips"]) / 1e6  # the index pages it maps grow with N
        print(f"{r['dtype']}: memory: index {index:.0f} B/clip (target <= 64) -> {index * SCALE_TARGET_CLIPS / 1e6:.0f}"
              f" MB at 2 M, shared by the {workers} workers, not copied; per worker {private:.0f} MB private, RSS "
              f"{rss:.0f} MB at {r['clips']:,} clips -> {rss_2m:.0f} MB at 2 M (RSS + index growth)")
        print(f"{r['dtype']}: start-up {r['startup s']:.2f} s at {r['clips']:,} clips -> "
              f"{r['startup s'] * SCALE_TARGET_CLIPS / r['clips']:.1f} s at 2 M, linear extrapolation (target <= 5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("preprocess", help="preprocess.py vs a plain loop on ESC-50-sized data")
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=0, help="0 = preprocess.py's default")
    p = sub.add_parser("loader", help="data.LogMelCrops throughput from the page cache")
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    p = sub.add_parser("augment", help="batched on-device views vs the per-sample pipeline (methods with bench_views)")
    p.add_argument("--config", default=None, help="a config of such a method (default: its full config)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p = sub.add_parser("train", help="each method's small config on CPU: step time, clips/s, peak memory")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 32)")
    p.add_argument("--steps", type=int, default=5)
    p = sub.add_parser("gpu", help="each method's full config on one GPU (bf16, compile off/on, MFU) + parity")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    p = sub.add_parser("eval", help="models.embed_dataset throughput")
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p = sub.add_parser("scale", help="how manifest, pack, sampler, loader, index and embedding cache grow with N")
    p.add_argument("--clips", default="10000,50000", help="N, or comma-separated Ns, of the growth table ('' = none)")
    p.add_argument("--dir", default="/tmp/bench_scale", help="where the caches are written (deleted after each N)")
    p.add_argument("--frames", type=int, default=1001, help="log-mel frames per clip (1001 = 10 s)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="pack storage type")
    p.add_argument("--dim", type=int, default=768, help="embedding size for the embedding-cache write")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (and reads in flight) for the loaders")
    p.add_argument("--keep", action="store_true", help="keep the caches of the growth table")
    p.add_argument("--disk-dtypes", default="float32,float16", help="dtypes of the disk table ('' = none)")
    p.add_argument("--pack-gb", type=float, default=None, help="disk-table pack size (default 1.1 x free RAM)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per loader measurement of the disk table")
    p.add_argument("--read-threads", type=int, default=None, help="reads in flight per worker in batch reads "
                   "(default data.READ_THREADS)")
    args = parser.parse_args()
    {"preprocess": bench_preprocess, "loader": bench_loader, "augment": bench_augment, "train": bench_train,
     "gpu": bench_gpu, "eval": bench_eval, "scale": bench_scale}[args.mode](args)


if __name__ == "__main__":
    main()
