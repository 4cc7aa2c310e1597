"""Build a feature cache from a data set on disk: the contract between preprocessing and everything else.

    python preprocess.py --dataset esc50 --root ~/data/ESC-50-master --out cache/esc50 --waveform
    python preprocess.py --dataset synthetic --size small --waveform --out cache/synth_small
    python preprocess.py --dataset audioset --root /data/audioset --out cache/audioset --shard 3/8

Writes (see data.py for how it is read):
    OUT/manifest.csv        id, logmel, wave, label, split, fold, duration, source, <data set extras>
    OUT/logmel/<id>.npy     float32 [64, T] log-mel, SPEC A1 (16 kHz, n_fft 1024, hop 160, 60-7800 Hz, Slaney)
    OUT/wave/<id>.npy       float32 [L] 16 kHz mono (with --waveform)
    OUT/preprocess.json     every parameter and the package versions
    OUT/errors.csv          file, reason: every clip that was skipped

Clips are processed in parallel; every file is written atomically (temp + rename), so an interrupted run
leaves no half-written array and a second run resumes where it stopped. A broken clip is skipped and
reported in errors.csv; it never aborts the run. `--shard K/N` processes every N-th clip (K = 1..N) so
that several machines can share a large set; a later run without --shard merges the shards' results.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm import tqdm

from audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, LogMel, LogMelConfig, load_audio
from data import MANIFEST_COLUMNS, PACKED_DIR, pack_logmels

DATASETS = ("esc50", "gtzan", "nsynth", "speechcommands", "audioset", "folder", "synthetic")
SC10_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GTZAN_SPLIT_FRACTIONS = (0.5, 0.2, 0.3)  # train/valid/test when no fault-filtered lists are given


@dataclass
class Clip:
    """One source file and its metadata, as an adapter finds it."""

    source: Path
    key: str  # unique, stable name inside the data set (becomes the id)
    label: str = ""
    split: str = ""
    fold: int | None = None
    extras: dict = field(default_factory=dict)


class DatasetLayoutError(Exception):
    """The root folder does not look like the data set it was said to be."""


def clip_id(key: str) -> str:
    """A file-system-safe id: the key with '/' -> '__' and other odd characters -> '_' (+ a hash if changed)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__"))
    if slug != key.replace("/", "__"):
        import hashlib
        slug += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return slug


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{path}: not found ({what})")
    return path

# ----------------------------------------------------------------------------- adapters


def adapt_esc50(root: Path, **_) -> list[Clip]:
    """ESC-50 (Piczak 2015): audio/*.wav and meta/esc50.csv; label = category, folds 1-5, esc10 flag."""
    meta = pd.read_csv(_require(root / "meta" / "esc50.csv", "ESC-50 metadata"))
    return [Clip(root / "audio" / r.filename, Path(r.filename).stem, str(r.category), "", int(r.fold),
                 {"esc10": str(r.esc10).lower() == "true", "target": int(r.target)})
            for r in meta.itertuples()]


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def adapt_gtzan(root: Path, split_dir: Path | None = None, seed: int = 0, **_) -> list[Clip]:
    """GTZAN: genres/<genre>/<genre>.000NN.wav (or genres_original/). Splits from the fault-filtered lists
    (train/valid/test_filtered.txt, Kereliuk et al. 2015, as EVAR) when `split_dir` is given: files in no
    list are left out. Otherwise a seeded stratified split: per genre, sorted names shuffled with
    numpy default_rng(seed), first 50 % train, next 20 % valid, last 30 % test.
    """
    base = next((root / d for d in ("genres", "genres_original", "Data/genres_original") if (root / d).is_dir()),
                root)
    files = sorted(p for p in base.glob("*/*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DatasetLayoutError(f"{root}: no genres/<genre>/<file>.wav found (GTZAN layout)")
    keys = {f"{p.parent.name}/{p.name}": p for p in files}
    split_of: dict[str, str] = {}
    if split_dir is not None:
        for split in ("train", "valid", "test"):
            for key in _read_list(_require(Path(split_dir) / f"{split}_filtered.txt", "GTZAN split list")):
                split_of[key] = split
    else:
        rng = np.random.default_rng(seed)
        for genre in sorted({k.split("/")[0] for k in keys}):
            names = sorted(k for k in keys if k.startswith(genre + "/"))
            names = [names[i] for i in rng.permutation(len(names))]
            n_train = round(GTZAN_SPLIT_FRACTIONS[0] * len(names))
            n_valid = round(GTZAN_SPLIT_FRACTIONS[1] * len(names))
            for i, key in enumerate(names):
                split_of[key] = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
    return [Clip(path, key.rsplit(".", 1)[0], key.split("/")[0], split_of[key])
            for key, path in keys.items() if key in split_of]


def adapt_nsynth(root: Path, **_) -> list[Clip]:
    """NSynth (Engel et al. 2017): nsynth-{train,valid,test}/audio/<note>.wav + examples.json;
    label = instrument_family_str, extras pitch and instrument_source_str."""
    clips = []
    for split in ("train", "valid", "test"):
        folder = root / f"nsynth-{split}"
        if not folder.is_dir():
            continue
        with open(_require(folder / "examples.json", "NSynth metadata")) as f:
            examples = json.load(f)
        for note, ex in sorted(examples.items()):
            clips.append(Clip(folder / "audio" / f"{note}.wav", f"{split}/{note}", ex["instrument_family_str"], split,
                              None, {"pitch": int(ex["pitch"]), "instrument_source_str": ex["instrument_source_str"]}))
    if not clips:
        raise DatasetLayoutError(f"{root}: no nsynth-{{train,valid,test}}/ folder found (NSynth layout)")
    return clips


def adapt_speechcommands(root: Path, **_) -> list[Clip]:
    """Speech Commands v0.02 (Warden 2018): <word>/*.wav, validation_list.txt, testing_list.txt;
    _background_noise_ excluded; column sc10 marks the ten digit words."""
    valid = set(_read_list(_require(root / "validation_list.txt", "Speech Commands validation list")))
    test = set(_read_list(_require(root / "testing_list.txt", "Speech Commands testing list")))
    clips = []
    for path in sorted(root.glob("*/*.wav")):
        word = path.parent.name
        if word.startswith("_"):
            continue
        key = f"{word}/{path.name}"
        split = "valid" if key in valid else "test" if key in test else "train"
        clips.append(Clip(path, key.rsplit(".", 1)[0], word, split, None, {"sc10": word in SC10_WORDS}))
    return clips


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def adapt_audioset(root: Path, labels: Path | None = None, **_) -> list[Clip]:
    """Any folder tree of clips (unlabelled pretraining data, split 'train'). Optional labels CSV: either
    columns `file,label` (file relative to root) or AudioSet segment CSVs (YTID, ..., positive_labels),
    matched on the file name starting with the YTID (or 'Y' + YTID); multiple labels are joined by ';'."""
    label_of: dict[str, str] = {}
    if labels is not None:
        table = pd.read_csv(labels, comment="#", skipinitialspace=True, header=None, dtype=str,
                            keep_default_na=False)
        if table.iloc[0, 0] == "file":
            label_of = {r[0]: r[1] for r in table.iloc[1:].itertuples(index=False)}
        else:  # YTID, start_seconds, end_seconds, positive_labels (may span columns after quoting)
            label_of = {r[0]: ";".join(p.strip('" ') for x in r[3:] for p in x.split(",") if p.strip('" '))
                        for r in table.itertuples(index=False)}
    clips = []
    for path in _audio_files(root):
        rel = path.relative_to(root).as_posix()
        label = label_of.get(rel, "")
        if not label and label_of:
            stem = path.stem[1:] if path.stem.startswith("Y") else path.stem
            label = label_of.get(stem[:11], label_of.get(path.stem[:11], ""))
        clips.append(Clip(path, rel.rsplit(".", 1)[0], label, "train"))
    if not clips:
        raise DatasetLayoutError(f"{root}: no audio files (.wav/.flac/.ogg) found")
    return clips


def adapt_folder(root: Path, **_) -> list[Clip]:
    """<class>/<file>: label = the class folder's name, no split or fold."""
    clips = [Clip(p, f"{p.parent.name}/{p.stem}", p.parent.name) for p in sorted(root.glob("*/*"))
             if p.suffix.lower() in AUDIO_EXTENSIONS]
    if not clips:
        raise DatasetLayoutError(f"{root}: no <class>/<file> audio found")
    return clips


def adapt_synthetic(root: Path, size: str = "small", seed: int = 0, **_) -> list[Clip]:
    """The built-in data set (synthetic.py), generated in the ESC-50 layout and read by that adapter."""
    from synthetic import generate_synthetic
    return adapt_esc50(generate_synthetic(root, size=size, seed=seed))


ADAPTERS = {"esc50": adapt_esc50, "gtzan": adapt_gtzan, "nsynth": adapt_nsynth,
            "speechcommands": adapt_speechcommands, "audioset": adapt_audioset, "folder": adapt_folder,
            "synthetic": adapt_synthetic}

# ----------------------------------------------------------------------------- per-clip work

_WORKER: dict = {}


def _init_worker(params: dict) -> None:
    torch.set_num_threads(1)
    _WORKER["params"] = params
    _WORKER["logmel"] = LogMel(LogMelConfig(**params["logmel"]))


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def process_clip(job: tuple[Clip, str, str]) -> tuple[str, dict | str]:
    """Load, resample, compute the log-mel and save; returns ('ok', row) or ('error', reason)."""
    clip, out, cid = job
    params, out = _WORKER["params"], Path(out)
    try:
        wave = load_audio(clip.source, params["sample_rate"], params["min_seconds"])
    except AudioError as err:
        return "error", err.reason
    logmel = _WORKER["logmel"](torch.from_numpy(wave)).numpy()
    _save_npy(logmel.astype(np.float32), out / "logmel" / f"{cid}.npy")
    if params["waveform"]:
        _save_npy(wave, out / "wave" / f"{cid}.npy")
    return "ok", {"duration": len(wave) / params["sample_rate"]}


def manifest_row(clip: Clip, cid: str, root: Path, duration: float, waveform: bool) -> dict:
    source = clip.source.relative_to(root).as_posix() if clip.source.is_relative_to(root) else str(clip.source)
    return {"id": cid, "logmel": f"logmel/{cid}.npy", "wave": f"wave/{cid}.npy" if waveform else "",
            "label": clip.label, "split": clip.split, "fold": "" if clip.fold is None else clip.fold,
            "duration": round(duration, 4), "source": source, **clip.extras}

# ----------------------------------------------------------------------------- run bookkeeping


def run_params(args: argparse.Namespace) -> dict:
    logmel = LogMelConfig(mel_scale=args.mel_scale)
    return {"dataset": args.dataset, "sample_rate": SAMPLE_RATE, "logmel": logmel.to_dict(),
            "log_offset": "ln(mel + 1.1920929e-07)", "waveform": bool(args.waveform),
            "min_seconds": args.min_seconds, "size": args.size if args.dataset == "synthetic" else None,
            "split_dir": str(args.split_dir) if args.split_dir else None}


def versions() -> dict:
    import torchaudio
    return {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
            "torchaudio": torchaudio.__version__, "soundfile": sf.__version__, "pandas": pd.__version__}


def check_params(out: Path, params: dict, force: bool) -> None:
    """Refuse to mix features made with different parameters in one cache (unless --force)."""
    path = out / "preprocess.json"
    if not path.exists() or force:
        return
    old = json.loads(path.read_text())["params"]
    diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
    if diff:
        lines = "\n".join(f"  {k}: cache has {a!r}, this run asks for {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"{path}: this cache was built with other parameters:\n{lines}\n"
                         "Use another --out, or --force to rebuild every clip with the new parameters.")


def write_csv_atomic(rows: list[dict], path: Path, columns: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_rows(paths: list[Path]) -> dict[str, dict]:
    """Rows of earlier manifests (full or shard), by id."""
    rows = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            rows.update({r["id"]: r for r in csv.DictReader(f)})
    return rows


def read_errors(paths: list[Path]) -> dict[str, str]:
    errors = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            errors.update({r["file"]: r["reason"] for r in csv.DictReader(f)})
    return errors


def remove_stale_temps(out: Path) -> None:
    for folder in (out / "logmel", out / "wave"):
        for tmp in folder.glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)

# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", type=Path, help="data set folder (synthetic: where to generate it; "
                   "default data/synthetic-<size>)")
    p.add_argument("--out", type=Path, required=True, help="cache folder to write")
    p.add_argument("--waveform", action="store_true", help="also cache 16 kHz waveforms (CLAR needs them)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--shard", default=None, help="K/N: process every N-th clip, starting at the K-th (1-based)")
    p.add_argument("--force", action="store_true", help="rebuild every clip, even with other parameters")
    p.add_argument("--pack", action="store_true", help="also pack all log-mels into one memory map "
                   "(CACHE/packed/) for fast loading")
    p.add_argument("--split-dir", type=Path, help="GTZAN: folder with {train,valid,test}_filtered.txt")
    p.add_argument("--labels", type=Path, help="audioset: optional labels CSV")
    p.add_argument("--size", default="small", choices=("small", "default"), help="synthetic: data set size")
    p.add_argument("--seed", type=int, default=0, help="synthetic generation and GTZAN fallback split")
    p.add_argument("--min-seconds", type=float, default=0.1, help="skip clips shorter than this")
    p.add_argument("--mel-scale", default="slaney", choices=("slaney", "htk"))
    return p.parse_args(argv)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise SystemExit(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return int(m[1]), int(m[2])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    shard = parse_shard(args.shard)
    if args.root is None:
        if args.dataset != "synthetic":
            raise SystemExit(f"--root is required for --dataset {args.dataset}")
        args.root = Path("data") / f"synthetic-{args.size}"
    root, out = args.root, args.out
    if args.dataset != "synthetic" and not root.is_dir():
        raise SystemExit(f"{root}: data set folder not found")
    params = run_params(args)
    out.mkdir(parents=True, exist_ok=True)
    check_params(out, params, args.force)
    try:
        clips = ADAPTERS[args.dataset](root, split_dir=args.split_dir, labels=args.labels, size=args.size,
                                       seed=args.seed)
    except DatasetLayoutError as err:
        raise SystemExit(f"{args.dataset}: {err}") from None
    ids = [clip_id(c.key) for c in clips]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{root}: two clips map to the same id; rename them")
    (out / "logmel").mkdir(exist_ok=True)
    (out / "wave").mkdir(exist_ok=True)
    remove_stale_temps(out)
    if args.force:
        shutil.rmtree(out / PACKED_DIR, ignore_errors=True)  # a rebuilt clip would not match the pack
    meta = {"params": params, "versions": versions(), "root": str(root.resolve()), "command": sys.argv}
    (out / ".preprocess.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(out / ".preprocess.json.tmp", out / "preprocess.json")

    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    jobs = list(zip(clips, ids))
    if shard:
        jobs = jobs[shard[0] - 1::shard[1]]
    # Resume / merge: rows of earlier (shard) manifests, files already on disk, and known failures.
    earlier = [] if args.force else sorted(out.glob("manifest*.csv"))
    done_rows = read_rows(earlier)
    known_errors = {} if args.force else read_errors(sorted(out.glob("errors*.csv")))
    rows, errors, todo, resumed = {}, {}, [], 0
    for clip, cid in jobs:
        source = str(clip.source)
        logmel_done = (out / "logmel" / f"{cid}.npy").exists()
        wave_done = not args.waveform or (out / "wave" / f"{cid}.npy").exists()
        if cid in done_rows and logmel_done and wave_done:
            rows[cid], resumed = {**done_rows[cid]}, resumed + 1
        elif logmel_done and wave_done and not args.force:
            info = sf.info(source)  # finished before an interruption: header only, no decoding
            samples = math.ceil(info.frames * SAMPLE_RATE / info.samplerate)  # = torchaudio's resampled length
            rows[cid] = manifest_row(clip, cid, root, samples / SAMPLE_RATE, args.waveform)
            resumed += 1
        elif source in known_errors:
            errors[source] = known_errors[source]
        elif not clip.source.exists():
            errors[source] = "missing (listed in the metadata but not on disk)"
        else:
            todo.append((clip, cid))

    start, audio_seconds, written = time.time(), 0.0, 0
    workers = max(1, min(args.workers, len(todo)))
    job_args = [(clip, str(out), cid) for clip, cid in todo]
    with tqdm(total=len(todo), desc=f"preprocess {args.dataset}", unit="clip", disable=not todo) as bar:
        if workers == 1:
            _init_worker(params)
            results = map(process_clip, job_args)
            results = ((c, r) for c, r in zip(todo, results))
            pool = None
        else:
            pool = Pool(workers, initializer=_init_worker, initargs=(params,))
            results = zip(todo, pool.imap(process_clip, job_args, chunksize=16))
        for (clip, cid), (status, value) in results:
            if status == "ok":
                rows[cid] = manifest_row(clip, cid, root, value["duration"], args.waveform)
                audio_seconds += value["duration"]
                written += 1
            else:
                errors[str(clip.source)] = value
                tqdm.write(f"skipped {clip.source}: {value}")
            bar.update()
        if pool is not None:
            pool.close()
            pool.join()
    if args.pack and not shard and rows:
        pack_logmels(out, pd.DataFrame([rows[cid] for _, cid in jobs if cid in rows]))
    seconds = time.time() - start

    extra_columns = sorted({k for r in rows.values() for k in r} - set(MANIFEST_COLUMNS))
    ordered = [rows[cid] for _, cid in jobs if cid in rows]
    write_csv_atomic(ordered, out / f"manifest{suffix}.csv", MANIFEST_COLUMNS + extra_columns)
    write_csv_atomic([{"file": f, "reason": r} for f, r in errors.items()], out / f"errors{suffix}.csv",
                     ["file", "reason"])
    if not shard:  # the full manifest now holds what the shards found
        for stale in list(out.glob("manifest.shard-*.csv")) + list(out.glob("errors.shard-*.csv")):
            stale.unlink()
    summary = {"written": written, "already_done": resumed, "skipped": len(errors), "seconds": round(seconds, 2),
               "x_realtime": round(audio_seconds / seconds, 1) if seconds > 0 and audio_seconds else 0.0}
    print(f"{out}: {summary['written']} clips written, {summary['already_done']} already done, "
          f"{summary['skipped']} skipped (see {out / f'errors{suffix}.csv'}), {summary['seconds']} s"
          + (f", {summary['x_realtime']}x real time" if written else ""))
    return summary


if __name__ == "__main__":
    main()
