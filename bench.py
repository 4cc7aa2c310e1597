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
    import preprocess
    root = make_esc50_like(BENCH_DIR / f"esc50_like_{args.clips}x{args.seconds:g}s", args.clips, args.seconds)
    audio_seconds = args.clips * args.seconds
    cache = BENCH_DIR / "cache_preprocess"
    shutil.rmtree(cache, ignore_errors=True)
    argv = ["--dataset", "esc50", "--root", str(root), "--out", str(cache)]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    start = time.time()
    preprocess.main(argv)
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
    args = parser.parse_args()
    {"preprocess": bench_preprocess, "loader": bench_loader}[args.mode](args)


if __name__ == "__main__":
    main()
