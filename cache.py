"""The feature cache, written: a data set on disk (datasets.REGISTRY's adapters) -> manifest.csv beside the feature
files, the contract between preprocessing and everything else (data.py reads it). preprocess.py is the command
line; its docstring describes the files, resume, shards and the lock.

    summary = cache.build_cache(cache.CacheOptions("esc50", Path("cache/esc50"), root=Path("~/data/ESC-50-master")))
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm import tqdm

import data
from audio import SAMPLE_RATE, AudioError, LogMel, LogMelConfig, load_audio, truncation_warning
from data import MANIFEST_COLUMNS, PACKED_DIR, PackWriter, load_array, read_pack_index, write_pack_index
from datasets import REGISTRY, Clip, DatasetLayoutError
from files import (
    FolderLock,
    LockHeld,
    atomic_write,
    atomic_write_text,
    file_sha256,
    lock_holder,
    remove_stale_temps,
    temp_path,
)


class CacheError(Exception):
    """A problem that stops a preprocessing run (a bad flag, a missing file, a full disk, a cache built with other
    parameters, another writer): one line that names the file or flag and says what to do. Clips finished before
    it stay written, so the same command resumes; preprocess.py prints the line and exits with status 1."""


DATASETS = tuple(REGISTRY)
KEY_COLUMN = "source_key"  # manifest column: what the clip's features were computed from (cache_key)
KINDS = ("error", "warning", "not_audio", "hidden", "excluded")  # errors.csv 'kind'; only 'error' skips a clip
PACK_INDEX_SECONDS = 120.0  # --pack: save the pack index this often during a run (a kill loses at most this)


@dataclass
class CacheOptions:
    """What a run builds (preprocess.py's flags, same names and defaults)."""

    dataset: str
    out: Path
    root: Path | None = None              # None: synthetic only, data/synthetic-<size>
    waveform: bool = False                # also cache 16 kHz waveforms
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    shard: str | None = None              # "K/N"; None: from the launcher's environment (launcher_shard)
    force: bool = False
    pack: bool = False
    dtype: str = "float32"                # log-mel storage: float32 | float16
    split_dir: Path | None = None         # GTZAN's filtered lists
    labels: Path | None = None            # audioset labels
    size: str = "small"                   # synthetic: small | default
    seed: int = 0
    split: tuple[int, int, int] | None = None   # TRAIN,VALID,TEST percentages for a data set with no split
    min_seconds: float = 0.1
    mel_scale: str = "slaney"


def clip_id(key: str) -> str:
    """A file-system-safe id: the key with '/' -> '__' and other odd characters -> '_' (+ a hash if changed)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__"))
    if slug != key.replace("/", "__"):
        slug += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return slug


def source_name(path: Path, root: Path) -> str:
    """The manifest's `source`: the path relative to the data set root (absolute when outside it)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def assign_ids(clips: list[Clip], root: Path, previous: dict[str, str]) -> list[str]:
    """One unique, stable id per clip; never fails.

    1. A source that an earlier manifest of this cache lists (`previous`: source -> id) keeps its id.
    2. Otherwise clip_id(key) (key = relative path without extension), or, when two files differ only in
       their extension (clip.flac, clip.ogg), clip_id(key + extension) for each.
    3. An id that is still taken (by an earlier manifest or another clip) gets '-' + sha1(source)[:8].
    """
    sources = [source_name(c.source, root) for c in clips]
    base = [clip_id(c.key) for c in clips]
    count = Counter(base)
    wanted = [b if count[b] == 1 else clip_id(c.key + c.source.suffix.lower()) for c, b in zip(clips, base)]
    ids = [previous.get(s) for s in sources]
    used, taken = set(filter(None, ids)), set(previous.values())
    count = Counter(w for w, i in zip(wanted, ids) if i is None)
    for n, (cid, source) in enumerate(zip(wanted, sources)):
        if ids[n] is not None:
            continue
        if cid in taken or cid in used or count[cid] > 1:
            cid = f"{cid}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"
        while cid in used:  # a hash collision: practically never
            cid += "_"
        ids[n] = cid
        used.add(cid)
    return ids


# ----------------------------------------------------------------------------- what a cached clip is keyed on


def feature_key(params: dict, seed: int | None = None) -> str:
    """A digest of what determines a clip's features besides its source file: the feature parameters, and the
    generator's seed for a generated (synthetic) set."""
    keyed = {k: params[k] for k in ("sample_rate", "logmel", "log_offset", "dtype")}
    if seed is not None:
        keyed["generator_seed"] = int(seed)
    return hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def source_stamp(path: Path) -> str:
    """'size:mtime_ns' of a source file (a stat, no read)."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_key(features: str, stamp: str, digest: str = "") -> str:
    """A clip's source_key: 'features:size:mtime_ns:sha256[:16]' (the digest empty where it was not computed)."""
    return f"{features}:{stamp}:{digest}"


def fresh_key(key: str, source: Path, features: str, feature_file: Path) -> str | None:
    """The clip's source_key, updated, when its cached features still belong to its source; None when stale.

    Same features digest and same size + mtime: fresh. Another mtime with the same size: the bytes are
    hashed and compared (a copy or a `touch` keeps the clip). A row without a key (caches before keys):
    fresh when its feature file is newer than the source (as make). Not detected: a rewrite of the same size
    within the file system's mtime resolution (as make and rsync)."""
    try:
        stamp, built = source_stamp(source), feature_file.stat().st_mtime_ns
    except OSError:
        return None
    if not key:
        return cache_key(features, stamp) if built >= os.stat(source).st_mtime_ns else None
    parts = key.split(":")
    if len(parts) != 4 or parts[0] != features:
        return None
    if f"{parts[1]}:{parts[2]}" == stamp:
        return key
    if parts[3] and parts[1] == stamp.split(":")[0] and file_sha256(source)[:16] == parts[3]:
        return cache_key(features, stamp, parts[3])
    return None

# ----------------------------------------------------------------------------- per-clip work

_WORKER: dict = {}


def _init_worker(params: dict, out: str, pack_tag: str | None) -> None:
    torch.set_num_threads(1)
    _WORKER["params"] = params
    _WORKER["logmel"] = LogMel(LogMelConfig(**params["logmel"]))
    _WORKER["pack"] = PackWriter(Path(out) / PACKED_DIR, pack_tag, params["dtype"]) if pack_tag else None


def _save_npy(array: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda f: np.save(f, array), sync=False)  # a failed write (full disk) leaves no temp


def process_clip(job: tuple[Clip, str, str]) -> tuple[str, dict | str]:
    """Load, resample, compute the log-mel, save it (and pack it); returns ('ok', info), ('error', reason) or
    ('fatal', message) when the cache cannot be written (full disk): the run stops, finished clips are kept."""
    clip, out, cid = job
    params, out = _WORKER["params"], Path(out)
    try:
        stamp, digest = source_stamp(clip.source), file_sha256(clip.source)[:16]  # before the read: a later
        wave = load_audio(clip.source, params["sample_rate"], params["min_seconds"])  # edit shows as stale
    except AudioError as err:
        return "error", err.reason
    except OSError as err:
        return "error", f"unreadable ({err.strerror or err})"
    logmel = _WORKER["logmel"](torch.from_numpy(wave)).numpy().astype(params["dtype"])
    try:
        _save_npy(logmel, out / "logmel" / f"{cid}.npy")
        if params["waveform"]:
            _save_npy(wave, out / "wave" / f"{cid}.npy")
        pack = _WORKER["pack"].append(logmel) if _WORKER["pack"] else None
    except OSError as err:  # files.atomic_write's error names the file; others have a filename
        return "fatal", f"{err.filename}: {err.strerror}" if err.filename else str(err)
    return "ok", {"duration": len(wave) / params["sample_rate"], "pack": pack,
                  "warning": truncation_warning(clip.source), "key": cache_key(params["features"], stamp, digest)}


def manifest_row(clip: Clip, cid: str, root: Path, duration: float, waveform: bool, key: str) -> dict:
    return {"id": cid, "logmel": f"logmel/{cid}.npy", "wave": f"wave/{cid}.npy" if waveform else "",
            "label": clip.label, "split": clip.split, "fold": "" if clip.fold is None else clip.fold,
            "duration": round(duration, 4), "source": source_name(clip.source, root), KEY_COLUMN: key,
            **clip.extras}

# ----------------------------------------------------------------------------- run bookkeeping


def run_params(options: CacheOptions) -> dict:
    logmel = LogMelConfig(mel_scale=options.mel_scale)
    params = {"dataset": options.dataset, "sample_rate": SAMPLE_RATE, "logmel": logmel.to_dict(),
              "log_offset": "ln(mel + 1.1920929e-07)", "waveform": bool(options.waveform), "dtype": options.dtype,
              "min_seconds": options.min_seconds, "size": options.size if options.dataset == "synthetic" else None,
              "split_dir": str(options.split_dir) if options.split_dir else None}
    params["features"] = feature_key(params, options.seed if options.dataset == "synthetic" else None)  # per clip
    return params


def versions() -> dict:
    import torchaudio
    return {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
            "torchaudio": torchaudio.__version__, "soundfile": sf.__version__, "pandas": pd.__version__}


def check_params(out: Path, params: dict, force: bool) -> None:
    """Refuse to mix features made with different parameters in one cache (unless --force)."""
    path = out / "preprocess.json"
    if not path.exists() or force:
        return
    try:
        old = {"dtype": "float32", **json.loads(path.read_text())["params"]}  # caches before --dtype: float32
    except (ValueError, KeyError, TypeError):
        raise CacheError(f"{path}: unreadable (not the JSON preprocess.py writes); use another --out, or "
                         "--force to rebuild the cache") from None
    diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v and k != "features"}
    if diff:
        lines = "\n".join(f"  {k}: cache has {a!r}, this run asks for {b!r}" for k, (a, b) in diff.items())
        raise CacheError(f"{path}: this cache was built with other parameters:\n{lines}\n"
                         "Use another --out, or --force to rebuild every clip with the new parameters.")


def write_csv_atomic(rows: list[dict], path: Path, columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(text.getvalue(), path)


def read_rows(paths: list[Path]) -> dict[str, dict]:
    """Rows of earlier manifests (full or shard), by id."""
    rows = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            rows.update({r["id"]: r for r in csv.DictReader(f)})
    return rows


def read_errors(paths: list[Path]) -> dict[str, tuple[str, str]]:
    """file -> (reason, kind) of earlier errors files (kind 'error' where a file predates the column)."""
    errors = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            errors.update({r["file"]: (r["reason"], r.get("kind") or "error") for r in csv.DictReader(f)})
    return errors


def remove_stale_files(out: Path, pack_tag: str) -> None:
    """Temp files of interrupted writes (.<name>.tmp<pid>) in every folder the package writes, and pack shard
    files of this run's tag (all / sK-of-N) that no pack index lists (a killed --pack run)."""
    for folder in (out, out / "logmel", out / "wave", out / PACKED_DIR):
        remove_stale_temps(folder)
    listed = {e[0] for index in (out / PACKED_DIR).glob("index*.npz") for e in read_pack_index(index).values()}
    for part in (out / PACKED_DIR).glob(f"logmel-{pack_tag}-*.bin"):
        if part.name not in listed:
            part.unlink()


def prepare_out(out: Path) -> None:
    """Create the cache folders; a path that cannot hold them ends the run with one line naming it."""
    try:
        for folder in (out, out / "logmel", out / "wave"):
            folder.mkdir(parents=True, exist_ok=True)
            if not folder.is_dir():
                raise FileExistsError(17, "exists and is not a folder", str(folder))
        probe = temp_path(out / "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError as err:
        raise CacheError(f"{err.filename}: exists and is not a folder; choose another --out") from None
    except OSError as err:
        raise CacheError(f"{err.filename or out}: cannot write the cache there ({err.strerror or err})") from None


def launcher_shard(env: dict | None = None) -> str | None:
    """'K/N' from a SLURM job array (SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT) or torchrun (RANK, WORLD_SIZE > 1)."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        k = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))) \
            // int(env.get("SLURM_ARRAY_TASK_STEP", 1)) + 1
        return f"{k}/{env['SLURM_ARRAY_TASK_COUNT']}"
    if int(env.get("WORLD_SIZE", 1)) > 1 and "RANK" in env:
        return f"{int(env['RANK']) + 1}/{env['WORLD_SIZE']}"
    return None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N); None or N = 1 -> None (a full run, which merges earlier shards)."""
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise CacheError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return None if int(m[2]) == 1 else (int(m[1]), int(m[2]))

# ----------------------------------------------------------------------------- the run


def check_split_option(options: CacheOptions, clips: list[Clip]) -> None:
    """--split is for a data set with no split or fold of its own (--dataset folder)."""
    own = next((c for c in clips if c.split or c.fold is not None), None)
    if options.split and own is not None:
        raise CacheError(f"--split: --dataset {options.dataset} has splits or folds of its own (e.g. {own.source}); "
                         "--split is for one without (--dataset folder)")


def with_splits(rows: dict[str, dict], order: list[str], percent: tuple[int, int, int], seed: int) -> None:
    """--split: data.assign_splits over every clip of the manifest, in id order."""
    ids = sorted(cid for cid in order if cid in rows)
    for cid, split in zip(ids, data.assign_splits([str(rows[cid]["label"]) for cid in ids], percent, seed)):
        rows[cid]["split"] = split


def find_clips(options: CacheOptions) -> tuple[list[Clip], dict[str, tuple[str, str]]]:
    """The adapter's clips and its skipped files as errors.csv entries (file -> (reason, kind))."""
    try:
        found = REGISTRY[options.dataset].adapter(options.root, split_dir=options.split_dir, labels=options.labels,
                                               size=options.size, seed=options.seed)
    except (DatasetLayoutError, FileExistsError) as err:
        raise CacheError(f"{options.dataset}: {err}") from None
    return found.clips, {str(s.path): (s.reason, s.kind) for s in found.skipped}


def plan(jobs, out: Path, root: Path, options, done_rows: dict, known: dict, features: str
         ) -> tuple[dict, dict, list, int, list[str]]:
    """Split the jobs into resumed rows, known errors and clips to process; the ids among those to process
    whose cached features are stale (fresh_key: source edited or replaced, other features or generator seed)."""
    rows, errors, todo, resumed, stale = {}, {}, [], 0, []
    for clip, cid in jobs:
        source, logmel = str(clip.source), out / "logmel" / f"{cid}.npy"
        logmel_done = logmel.exists()
        wave_done = not options.waveform or (out / "wave" / f"{cid}.npy").exists()
        same = cid in done_rows and done_rows[cid]["source"] == source_name(clip.source, root)
        key = None
        if logmel_done and wave_done and (same or (not options.force and cid not in done_rows)):
            key = fresh_key(done_rows[cid].get(KEY_COLUMN) or "" if same else "", clip.source, features, logmel)
            if key is None:
                stale.append(cid)
            elif not same:  # finished before an interruption: hashed now, as if it had been written by this run
                key = cache_key(features, source_stamp(clip.source), file_sha256(clip.source)[:16])
        if key is not None and same:
            rows[cid], resumed = {**done_rows[cid], KEY_COLUMN: key}, resumed + 1
        elif key is not None:
            info = sf.info(source)  # finished before an interruption: header only, no decoding
            samples = math.ceil(info.frames * SAMPLE_RATE / info.samplerate)  # = torchaudio's resampled length
            rows[cid] = manifest_row(clip, cid, root, samples / SAMPLE_RATE, options.waveform, key)
            resumed += 1
        elif known.get(source, ("", ""))[1] == "error" and cid not in stale:
            errors[source] = known[source]
            continue
        elif not clip.source.exists():
            errors[source] = ("missing (listed in the metadata but not on disk)", "error")
            continue
        else:
            todo.append((clip, cid))
            continue
        if known.get(source, ("", ""))[1] == "warning":  # a resumed clip keeps its warning
            errors[source] = known[source]
    return rows, errors, todo, resumed, stale


def process_all(todo, out: Path, root: Path, options, params: dict, pack_tag: str | None, rows, errors,
                packed: dict, save_pack=None) -> tuple[int, float]:
    """Run process_clip over `todo` (in a pool of workers), filling rows, errors and pack entries; calls
    `save_pack()` every PACK_INDEX_SECONDS, so that a killed --pack run keeps what its workers packed."""
    audio_seconds, written, saved = 0.0, 0, time.time()
    workers = max(1, min(options.workers, len(todo)))
    job_args = [(clip, str(out), cid) for clip, cid in todo]
    init = (params, str(out), pack_tag)
    with tqdm(total=len(todo), desc=f"preprocess {options.dataset}", unit="clip", disable=not todo) as bar:
        pool = Pool(workers, initializer=_init_worker, initargs=init) if workers > 1 else None
        if pool is None:
            _init_worker(*init)
        results = zip(todo, pool.imap(process_clip, job_args, chunksize=16) if pool else map(process_clip, job_args))
        try:
            for (clip, cid), (status, value) in results:
                bar.update()
                if status == "fatal":
                    raise CacheError(f"{value}; the run stopped (finished clips are kept: free space, then run "
                                     "the same command again to resume)")
                if status == "error":
                    errors[str(clip.source)] = (value, "error")
                    tqdm.write(f"skipped {clip.source}: {value}")
                    continue
                rows[cid] = manifest_row(clip, cid, root, value["duration"], options.waveform, value["key"])
                audio_seconds, written = audio_seconds + value["duration"], written + 1
                if value["pack"]:
                    packed[cid] = value["pack"]
                    if save_pack and time.time() - saved >= PACK_INDEX_SECONDS:
                        save_pack()
                        saved = time.time()
                if value["warning"]:
                    errors[str(clip.source)] = (value["warning"], "warning")
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return written, audio_seconds


def pack_index_name(shard: tuple[int, int] | None) -> str:
    return f"index.shard-{shard[0]}-of-{shard[1]}.npz" if shard else "index.npz"


def earlier_pack_entries(out: Path) -> dict[str, tuple[str, int, int]]:
    """id -> (file, offset, frames) of every pack index in the cache (full, shards, or a killed run's)."""
    earlier = {}
    for index in sorted((out / PACKED_DIR).glob("index*.npz")):
        earlier.update(read_pack_index(index))
    return earlier


def pack_saver(out: Path, shard, ids: list[str], params: dict, packed: dict):
    """A function that saves the pack index as it stands: earlier entries + `packed` (filled as the run goes)."""
    earlier = earlier_pack_entries(out)

    def save() -> None:
        write_pack_index(out / PACKED_DIR, pack_index_name(shard), {**earlier, **packed}, ids,
                         params["logmel"]["n_mels"], params["dtype"])
    return save


def drop_from_packs(out: Path, ids: set[str]) -> None:
    """Remove `ids` from every pack index of the cache (their packed log-mels are stale); a later --pack run
    packs them again, and until then data.open_packed falls back to the per-clip files."""
    for path in sorted((out / PACKED_DIR).glob("index*.npz")):
        entries = read_pack_index(path)
        if ids & set(entries):
            with np.load(path) as index:
                n_mels, dtype = int(index["n_mels"]), str(index["dtype"])
            kept = {cid: e for cid, e in entries.items() if cid not in ids}
            write_pack_index(out / PACKED_DIR, path.name, kept, list(entries), n_mels, dtype)


def finish_pack(out: Path, ids: list[str], rows: dict, packed: dict, params: dict, shard, pack_tag: str) -> None:
    """Write this run's pack index: entries of earlier indexes and of this run's workers; a clip with none
    (done before without --pack, or by a killed run before its index was saved) is appended from its file."""
    folder = out / PACKED_DIR
    earlier = earlier_pack_entries(out)
    entries = {cid: packed.get(cid) or earlier.get(cid) for cid in ids if cid in rows}
    missing = [cid for cid, e in entries.items() if e is None]
    if missing:
        writer = PackWriter(folder, pack_tag, params["dtype"])
        for cid in tqdm(missing, desc="pack clips done earlier", unit="clip"):
            entries[cid] = writer.append(load_array(out, rows[cid]["logmel"]))
    write_pack_index(folder, pack_index_name(shard), entries, ids, params["logmel"]["n_mels"], params["dtype"])
    if not shard:
        for stale in folder.glob("index.shard-*.npz"):
            stale.unlink()
        listed = {e[0] for e in entries.values()}
        for part in folder.glob("logmel-*.bin"):
            if part.name not in listed:
                part.unlink()


def summary_line(out: Path, summary: dict, suffix: str) -> str:
    extra = ", ".join(f"{summary[k]} {label}" for k, label in [
        ("warnings", "loaded with a warning"), ("not_audio", "not audio"), ("hidden", "hidden"),
        ("excluded", "outside the data set's layout or lists")] if summary[k])
    recomputed = f" ({summary['recomputed']} of them recomputed: stale)" if summary["recomputed"] else ""
    return (f"{out}: {summary['written']} clips written{recomputed}, {summary['already_done']} already done, "
            f"{summary['skipped']} skipped" + (f", {extra}" if extra else "")
            + f" (see {out / f'errors{suffix}.csv'}), {summary['seconds']} s"
            + (f", {summary['x_realtime']}x real time" if summary["written"] else ""))


def lock_name(shard: tuple[int, int] | None) -> str:
    return f"preprocess.shard-{shard[0]}-of-{shard[1]}.lock" if shard else "preprocess.lock"


def lock_cache(out: Path, shard: tuple[int, int] | None) -> FolderLock:
    """Hold the cache's writer lock (files.FolderLock): one run per shard, and a full run (which merges and
    deletes the shards' files) only while no shard run is live. Another writer ends this run with one line
    naming the holder (host, pid); the lock of a run that died is taken over with a warning."""
    lock = FolderLock(out / lock_name(shard))
    try:
        warning = lock.acquire()
    except LockHeld as err:
        raise CacheError(f"{out}: another preprocess.py is writing this cache ({err}); wait for it to end, "
                         "or use another --out") from None
    others = [out / lock_name(None)] if shard else sorted(out.glob("preprocess.shard-*-of-*.lock"))
    for path in others:
        holder = lock_holder(path)
        if holder:
            lock.release()
            raise CacheError(f"{out}: another preprocess.py is writing this cache ({path}: held by {holder}); "
                             "wait for it to end, or use another --out")
    if not shard:  # no shard run is live: a killed one's lock file goes (as the shards' manifests will)
        for path in others:
            path.unlink(missing_ok=True)
    if warning:
        print(warning, file=sys.stderr)
    return lock


def build(options: CacheOptions, shard, root: Path, out: Path, params: dict) -> dict:
    """The run proper, under the cache's lock (main)."""
    check_params(out, params, options.force)
    clips, adapter_skips = find_clips(options)
    check_split_option(options, clips)
    earlier = sorted(out.glob("manifest*.csv"))
    done_rows = read_rows(earlier)
    ids = assign_ids(clips, root, {r["source"]: cid for cid, r in done_rows.items()})
    pack_tag = f"s{shard[0]}of{shard[1]}" if shard else "all"
    if options.force:
        shutil.rmtree(out / PACKED_DIR, ignore_errors=True)  # a rebuilt clip would not match the pack
        done_rows = {}
    if options.pack:
        (out / PACKED_DIR).mkdir(exist_ok=True)
    remove_stale_files(out, pack_tag)
    meta = {"params": params, "versions": versions(), "root": str(root.resolve()), "command": sys.argv}
    atomic_write_text(json.dumps(meta, indent=2), out / "preprocess.json")

    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    jobs = list(zip(clips, ids))
    if shard:
        jobs = jobs[shard[0] - 1::shard[1]]
    known = {} if options.force else read_errors(sorted(out.glob("errors*.csv")))
    rows, errors, todo, resumed, outdated = plan(jobs, out, root, options, done_rows, known, params["features"])
    if outdated:
        drop_from_packs(out, set(outdated))  # a pack must never serve the old features of a recomputed clip
        print(f"{len(outdated)} cached clips are stale (source edited or replaced, or another generator seed): "
              "recomputing them")
    start, packed, order = time.time(), {}, [cid for _, cid in jobs]
    save_pack = pack_saver(out, shard, order, params, packed) if options.pack else None
    written, audio_seconds = process_all(todo, out, root, options, params, pack_tag if options.pack else None, rows,
                                         errors, packed, save_pack)
    if options.pack and rows:
        finish_pack(out, order, rows, packed, params, shard, pack_tag)
    seconds = time.time() - start

    if options.split and not shard:
        with_splits(rows, order, options.split, options.seed)
    extra_columns = sorted({k for r in rows.values() for k in r} - set(MANIFEST_COLUMNS) - {KEY_COLUMN})
    write_csv_atomic([rows[cid] for cid in order if cid in rows], out / f"manifest{suffix}.csv",
                     MANIFEST_COLUMNS + [KEY_COLUMN] + extra_columns)
    errors = {**adapter_skips, **errors}
    write_csv_atomic([{"file": f, "reason": r, "kind": k} for f, (r, k) in errors.items()],
                     out / f"errors{suffix}.csv", ["file", "reason", "kind"])
    if not shard:  # the full manifest now holds what the shards found
        for stale in list(out.glob("manifest.shard-*.csv")) + list(out.glob("errors.shard-*.csv")):
            stale.unlink()
    kinds = Counter(k for _, k in errors.values())
    summary = {"written": written, "recomputed": len(outdated), "already_done": resumed, "skipped": kinds["error"],
               "warnings": kinds["warning"], "not_audio": kinds["not_audio"], "hidden": kinds["hidden"],
               "excluded": kinds["excluded"], "seconds": round(seconds, 2),
               "x_realtime": round(audio_seconds / seconds, 1) if seconds > 0 and audio_seconds else 0.0}
    print(summary_line(out, summary, suffix))
    return summary


def build_cache(options: CacheOptions) -> dict:
    """Build (or resume) the cache `options.out` under its lock; returns the run's summary counts."""
    shard = parse_shard(options.shard or launcher_shard())
    if options.root is None:
        if options.dataset != "synthetic":
            raise CacheError(f"--root is required for --dataset {options.dataset}")
        options.root = Path("data") / f"synthetic-{options.size}"
    root, out = Path(options.root), Path(options.out)
    if options.dataset != "synthetic" and not root.is_dir():
        raise CacheError(f"{root}: data set folder not found")
    params = run_params(options)
    prepare_out(out)
    with lock_cache(out, shard):
        return build(options, shard, root, out, params)
