"""Build a feature cache from a data set on disk: the contract between preprocessing and everything else.

    python preprocess.py --dataset esc50 --root ~/data/ESC-50-master --out cache/esc50 --waveform
    python preprocess.py --dataset synthetic --size small --waveform --out cache/synth_small
    python preprocess.py --dataset audioset --root /data/audioset --out cache/audioset --shard 3/8 --pack

Writes (see data.py for how it is read; the data sets and their adapters are datasets.REGISTRY's):
    OUT/manifest.csv        id, logmel, wave, label, split, fold, duration, source, source_key, <data set extras>
    OUT/logmel/<id>.npy     float32 (or --dtype float16) [64, T] log-mel, EVAR front end (16 kHz, n_fft 1024, hop 160,
                            60-7800 Hz, Slaney)
    OUT/wave/<id>.npy       float32 [L] 16 kHz mono (with --waveform)
    OUT/packed/             with --pack: shard files each worker appends its log-mels to, and index.npz
    OUT/preprocess.json     every parameter and the package versions
    OUT/preprocess.lock     while a run writes: its host and pid (a second writer of the cache stops; see lock_cache)
    OUT/errors.csv          file, reason, kind: every file that is not a clip of the cache (kind error: skipped;
                            warning: kept, e.g. truncated; hidden, not_audio, excluded: not clips)

Clips are processed in parallel; every file is written atomically (temp + rename), so an interrupted run
leaves no half-written array and a second run resumes where it stopped. A clip is reused only while its
source_key matches (the source's size, mtime and sha256, the feature parameters, the synthetic generator's
seed: cache_key); an edited or regenerated source is recomputed and counted. A broken clip is skipped and
reported in errors.csv; it never aborts the run, nor does an id clash (assign_ids). `--shard K/N` (or the
SLURM array / torchrun environment) processes every N-th clip (K = 1..N) so that several machines can share a
large set; a later run without --shard merges the shards' results.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cache import DATASETS, CacheError, CacheOptions, build_cache


def parse_percent(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or sum(parts) != 100 or min(parts) < 0:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VALID,TEST percentages summing to 100, got {text!r}")
    return parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", type=Path, help="data set folder (synthetic: where to generate it; "
                   "default data/synthetic-<size>)")
    p.add_argument("--out", type=Path, required=True, help="cache folder to write")
    p.add_argument("--waveform", action="store_true", help="also cache 16 kHz waveforms (CLAR needs them)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard", default=None, help="K/N: process every N-th clip, starting at the K-th (1-based); "
                   "default: from SLURM_ARRAY_TASK_ID/COUNT or torchrun's RANK/WORLD_SIZE when set")
    p.add_argument("--force", action="store_true", help="rebuild every clip, even with other parameters")
    p.add_argument("--pack", action="store_true", help="also pack the log-mels into memory-mapped shard files "
                   "(CACHE/packed/), written by the workers as they go, for fast loading")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="log-mel storage type "
                   "(float16 halves the disk; see README for its error)")
    p.add_argument("--split-dir", type=Path, help="GTZAN: folder with {train,valid,test}_filtered.txt")
    p.add_argument("--labels", type=Path, help="audioset: folder with the segment CSVs and class_labels_indices.csv "
                   "(default: --root), or one file,label CSV")
    p.add_argument("--size", default="small", choices=("small", "default"), help="synthetic: data set size")
    p.add_argument("--seed", type=int, default=0, help="synthetic generation, GTZAN fallback split and --split")
    p.add_argument("--split", type=parse_percent, metavar="TRAIN,VALID,TEST",
                   help="percentages (e.g. 80,10,10): give every clip of a data set with no split of its own (your "
                        "--dataset folder) a stratified train/valid/test split (data.assign_splits; unlabelled "
                        "clips go to train)")
    p.add_argument("--min-seconds", type=float, default=0.1, help="skip clips shorter than this")
    p.add_argument("--mel-scale", default="slaney", choices=("slaney", "htk"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    try:
        return build_cache(CacheOptions(**vars(parse_args(argv))))
    except CacheError as err:
        raise SystemExit(f"preprocess.py: {err}") from None


if __name__ == "__main__":
    try:
        main()
    except OSError as err:  # anything not caught where it happens: still one line naming the file
        sys.exit(f"preprocess.py: error: {f'{err.filename}: {err.strerror}' if err.filename else err}")
