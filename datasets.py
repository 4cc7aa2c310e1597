"""The data set registry: one entry per data set = its adapter, the evaluation tasks it provides, its cache.

    from datasets import REGISTRY, find_task
    found = REGISTRY["gtzan"].adapter(Path("~/data/gtzan"), split_dir=Path("GTZAN_split"))
    found.clips      # [Clip(source, key, label, split, fold, extras)], one per audio file
    found.skipped    # [Skipped(path, reason, kind)]: every other file, with why it is not a clip
    dataset, task = find_task("esc10")   # ("esc50", TaskSpec(where={"esc10": True}, unit_seconds=5.0, ...))

preprocess.py turns the clips into a cache, linear_eval.py takes its tasks (row filter, unit length, label
column; EVAR code) and default cache folders from here, results/make_tables.py the tasks' titles. A new data
set is one `adapt_<name>` function plus one REGISTRY entry.

Audio is every file libsndfile reads, whatever its extension (`scan`): known extensions are taken as audio,
any other file is probed with soundfile.info. Files libsndfile cannot decode (.m4a, .webm, ... from a YouTube
downloader) are reported with the ffmpeg command that converts them; AppleDouble `._*` and hidden files are
skipped with a reason; nothing is dropped silently.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

# extensions of the formats soundfile's libsndfile 1.2 reads (soundfile.available_formats(), + Ogg Opus, MP3)
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .bwf .rf64 .w64 .wavex .aif .aiff .aifc .au .snd .flac .ogg .oga .opus .mp3 .caf .voc .nist .sph"
    " .ircam .sf .paf .svx .8svx .iff .xi .htk .sds .avr .sd2 .mat .mat4 .mat5 .pvf .wve .mpc".split())
# containers/codecs libsndfile does not decode, typical of YouTube downloaders and phones
CONVERT_EXTENSIONS = frozenset(".m4a .mp4 .m4b .aac .webm .weba .mkv .mka .wma .ape .wv .amr .3gp .ac3 .alac".split())
NSYNTH_FAMILIES = frozenset("bass brass flute guitar keyboard mallet organ reed string synth_lead vocal".split())
NSYNTH_SOURCES = frozenset(("acoustic", "electronic", "synthetic"))
SC10_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GTZAN_SPLIT_FRACTIONS = (0.5, 0.2, 0.3)  # train/valid/test when no fault-filtered lists are given
GTZAN_KAGGLE_BROKEN = {"jazz/jazz.00054": "known broken in Kaggle's GTZAN copy (genres_original/jazz/jazz.00054.wav "
                                          "is not a readable WAV); the original genres.tar.gz has it as .au"}
AUDIOSET_CSVS = {"eval_segments.csv": "eval", "balanced_train_segments.csv": "balanced_train",
                 "unbalanced_train_segments.csv": "unbalanced_train"}


@dataclass
class Clip:
    """One source file and its metadata, as an adapter finds it."""

    source: Path
    key: str  # unique, stable name inside the data set (becomes the id): relative path without extension
    label: str = ""
    split: str = ""
    fold: int | None = None
    extras: dict = field(default_factory=dict)


@dataclass
class Skipped:
    """A file (or folder) that is not a clip, and why; kind: error | hidden | not_audio | excluded."""

    path: Path
    reason: str
    kind: str


@dataclass
class Found:
    """What an adapter found under its root: the clips and every skipped file."""

    clips: list[Clip]
    skipped: list[Skipped] = field(default_factory=list)


class DatasetLayoutError(Exception):
    """The root folder does not look like the data set it was said to be."""


# ----------------------------------------------------------------------------- files


def convert_hint(path: Path) -> str:
    """How to turn a file libsndfile cannot decode into one it can."""
    return f"convert it first, e.g. ffmpeg -i '{path.name}' -ac 1 -ar 16000 '{path.with_suffix('.flac').name}'"


def unreadable_reason(path: Path, detail: str) -> str:
    """The errors.csv reason for a file that could not be decoded (with a conversion hint where it helps)."""
    if path.suffix.lower() in CONVERT_EXTENSIONS:
        return f"unreadable ({path.suffix.lower()} is not a format libsndfile decodes); {convert_hint(path)}"
    return f"unreadable ({detail})"


def is_audio(path: Path) -> bool:
    """True for a known audio extension, else whether soundfile can read the file's header."""
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return True
    try:
        sf.info(str(path))
        return True
    except Exception:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        return False


def classify(path: Path) -> Skipped | None:
    """None for an audio file, else why it is skipped."""
    name = path.name
    if name.startswith("._"):
        return Skipped(path, "AppleDouble metadata file (macOS ._*), not audio", "hidden")
    if name.startswith("."):
        return Skipped(path, "hidden file", "hidden")
    if is_audio(path):
        return None
    if path.suffix.lower() in CONVERT_EXTENSIONS:
        return Skipped(path, unreadable_reason(path, ""), "error")
    return Skipped(path, "not audio (no format libsndfile reads)", "not_audio")


def scan(folder: Path, depth: int | None = None) -> tuple[list[Path], list[Skipped]]:
    """Audio files under `folder` (sorted), exactly `depth` levels down (None: any depth), and the skipped rest:
    every other file of the tree, with its reason. Hidden folders are not searched (each is reported once)."""
    audio, skipped = [], []
    for here, dirs, files in os.walk(folder):
        level = len(Path(here).relative_to(folder).parts)
        for d in sorted(dirs):
            if d.startswith("."):
                skipped.append(Skipped(Path(here) / d, "hidden folder, not searched", "hidden"))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(here) / name
            why = classify(path)
            if why is None and depth is not None and level + 1 != depth:
                why = Skipped(path, f"outside the layout (audio is {depth} level(s) below {folder})", "excluded")
            (audio.append(path) if why is None else skipped.append(why))
    return sorted(audio), skipped


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{path}: not found ({what})")
    return path


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]

# ----------------------------------------------------------------------------- strict metadata
# A metadata row that does not parse is reported as '<file>:<line>' (errors.csv, kind error) and skipped, never
# guessed at; a label id that the data set's class table does not know is an error naming it. CSV lines are
# parsed one at a time, so an unclosed quote cannot swallow the rows after it into a field.


def bad_row(path: Path, where: int | str, reason: str) -> Skipped:
    """A metadata row that is skipped: errors.csv names it '<file>:<line>' (or '<file>:<entry>')."""
    return Skipped(Path(f"{path}:{where}"), f"bad metadata row, skipped: {reason}", "error")


def csv_fields(line: str) -> list[str]:
    """The fields of one CSV line; ValueError for an unclosed or stray quote."""
    try:
        rows = list(csv.reader([line], strict=True, skipinitialspace=True))
    except csv.Error as err:
        raise ValueError(f"malformed CSV ({err}): {line[:120]!r}") from None
    return [field.strip() for field in rows[0]] if rows else []


def read_csv_strict(path: Path, columns: tuple[str, ...], what: str) -> tuple[list[tuple[int, dict]], list[Skipped]]:
    """(line number, row) of each good line of a CSV with a header row holding `columns`, and the bad lines
    (a quote error or another number of fields than the header) as bad_row. DatasetLayoutError when the file
    is not UTF-8 text or its header lacks one of `columns`."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        header = csv_fields(lines[0]) if lines else []
    except (UnicodeDecodeError, ValueError) as err:
        raise DatasetLayoutError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetLayoutError(f"{path}: missing column(s) {missing} (expected {what})")
    rows, bad = [], []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            fields = csv_fields(line)
        except ValueError as err:
            bad.append(bad_row(path, n, str(err)))
            continue
        if len(fields) != len(header):
            bad.append(bad_row(path, n, f"{len(fields)} fields, the header has {len(header)}: {line[:120]!r}"))
            continue
        rows.append((n, dict(zip(header, fields))))
    return rows, bad


def strip_audio_extension(name: str) -> str:
    """'blues/blues.00000.wav' -> 'blues/blues.00000' (lists name .wav files; they match by stem)."""
    stem, dot, ext = name.rpartition(".")
    return stem if dot and "." + ext.lower() in AUDIO_EXTENSIONS | CONVERT_EXTENSIONS else name


def _listed_files(folder: Path, names: list[str], listing: str) -> tuple[dict[str, Path], list[Skipped]]:
    """Map each listed file name to the file on disk, matching by stem when the extension differs; files of
    the folder that no listing names are reported ('not listed in ...')."""
    audio, skipped = scan(folder, depth=1) if folder.is_dir() else ([], [])
    by_stem: dict[str, list[Path]] = {}
    for path in audio:
        by_stem.setdefault(path.stem, []).append(path)
    found, used, present = {}, set(), set(audio)
    for name in names:
        exact = folder / name
        candidates = [exact] if exact in present else by_stem.get(strip_audio_extension(name), [])
        found[name] = candidates[0] if candidates else exact  # a missing file is reported by preprocess
        used.update(candidates[:1])
    skipped += [Skipped(p, f"not listed in {listing}", "excluded") for p in audio if p not in used]
    return found, skipped


# ----------------------------------------------------------------------------- adapters


def esc50_row_problem(row: dict, category_of: dict[str, tuple[str, int]]) -> str | None:
    """Why a row of esc50.csv is unusable (None when it is fine); `category_of` (target -> (category, line))
    collects the first category seen per target: a target with two categories is a broken row."""
    if not row["filename"] or not row["category"]:
        return "empty filename or category"
    if not (row["fold"].isdigit() and row["target"].isdigit()):
        return f"fold and target must be integers, got fold={row['fold']!r} target={row['target']!r}"
    if row["esc10"].lower() not in ("true", "false"):
        return f"esc10 must be True or False, got {row['esc10']!r}"
    category, line = category_of.get(row["target"], (row["category"], 0))
    if category != row["category"]:
        return f"target {row['target']} is {category!r} on line {line}, here {row['category']!r}"
    return None


def adapt_esc50(root: Path, **_) -> Found:
    """ESC-50 (Piczak 2015): audio/*.wav and meta/esc50.csv; label = category, folds 1-5, esc10 flag. A row
    that does not parse (quotes, field count, non-integer fold/target, a target with two categories) is
    reported with its line and skipped."""
    path = _require(root / "meta" / "esc50.csv", "ESC-50 metadata")
    rows, bad = read_csv_strict(path, ("filename", "fold", "target", "category", "esc10"), "ESC-50's meta/esc50.csv")
    good, category_of = [], {}
    for n, row in rows:
        problem = esc50_row_problem(row, category_of)
        if problem:
            bad.append(bad_row(path, n, problem))
        else:
            category_of.setdefault(row["target"], (row["category"], n))
            good.append(row)
    files, skipped = _listed_files(root / "audio", [r["filename"] for r in good], "meta/esc50.csv")
    clips = [Clip(files[r["filename"]], strip_audio_extension(r["filename"]), r["category"], "", int(r["fold"]),
                  {"esc10": r["esc10"].lower() == "true", "target": int(r["target"])}) for r in good]
    return Found(clips, bad + skipped)


def _gtzan_splits(keys: list[str], split_dir: Path | None, seed: int) -> dict[str, str]:
    """key -> split: the fault-filtered lists (matched by stem), else a seeded stratified 50/20/30 split."""
    split_of: dict[str, str] = {}
    if split_dir is not None:
        for split in ("train", "valid", "test"):
            for name in _read_list(_require(Path(split_dir) / f"{split}_filtered.txt", "GTZAN split list")):
                split_of[strip_audio_extension(name)] = split
        return split_of
    rng = np.random.default_rng(seed)
    for genre in sorted({k.split("/")[0] for k in keys}):
        names = sorted({k for k in keys if k.startswith(genre + "/")})
        names = [names[i] for i in rng.permutation(len(names))]
        n_train = round(GTZAN_SPLIT_FRACTIONS[0] * len(names))
        n_valid = round(GTZAN_SPLIT_FRACTIONS[1] * len(names))
        for i, key in enumerate(names):
            split_of[key] = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
    return split_of


def adapt_gtzan(root: Path, split_dir: Path | None = None, seed: int = 0, **_) -> Found:
    """GTZAN as distributed: genres/<genre>/<genre>.000NN.au (22,050 Hz), or Kaggle's genres_original/*.wav.

    Splits from the fault-filtered lists (train/valid/test_filtered.txt, Kereliuk et al. 2015, as EVAR; they
    name .wav files and match by stem) when `split_dir` is given: files in no list are left out (reported).
    Otherwise a seeded stratified split: per genre, sorted stems shuffled with numpy default_rng(seed), first
    50 % train, next 20 % valid, last 30 % test. Kaggle's broken jazz.00054.wav is skipped with a reason.
    """
    base = next((root / d for d in ("genres", "genres_original", "Data/genres_original") if (root / d).is_dir()),
                root)
    files, skipped = scan(base, depth=2)
    if not files:
        raise DatasetLayoutError(f"{root}: no genres/<genre>/<genre>.000NN.au (or .wav) found (GTZAN layout)")
    kaggle = base.name == "genres_original"
    keyed = []
    for path in files:
        key = f"{path.parent.name}/{path.stem}"
        if kaggle and key in GTZAN_KAGGLE_BROKEN:
            skipped.append(Skipped(path, GTZAN_KAGGLE_BROKEN[key], "error"))
        else:
            keyed.append((key, path))
    split_of = _gtzan_splits([k for k, _ in keyed], split_dir, seed)
    skipped += [Skipped(p, "in no fault-filtered split list (left out, as EVAR)", "excluded")
                for k, p in keyed if k not in split_of]
    return Found([Clip(p, k, k.split("/")[0], split_of[k]) for k, p in keyed if k in split_of], skipped)


def adapt_nsynth(root: Path, **_) -> Found:
    """NSynth (Engel et al. 2017): nsynth-{train,valid,test}/audio/<note>.wav + examples.json;
    label = instrument_family_str, extras pitch and instrument_source_str."""
    clips, skipped = [], []
    for split in ("train", "valid", "test"):
        folder = root / f"nsynth-{split}"
        if not folder.is_dir():
            continue
        examples, bad = _read_examples(_require(folder / "examples.json", "NSynth metadata"))
        skipped += bad
        notes = sorted(examples)
        files, extra = _listed_files(folder / "audio", [f"{n}.wav" for n in notes], f"{folder.name}/examples.json")
        skipped += extra
        for note in notes:
            ex = examples[note]
            clips.append(Clip(files[f"{note}.wav"], f"{split}/{note}", ex["instrument_family_str"], split, None,
                              {"pitch": int(ex["pitch"]), "instrument_source_str": ex["instrument_source_str"]}))
    if not any((root / f"nsynth-{split}").is_dir() for split in ("train", "valid", "test")):
        raise DatasetLayoutError(f"{root}: no nsynth-{{train,valid,test}}/ folder found (NSynth layout)")
    return Found(clips, skipped)


def nsynth_entry_problem(note: str, ex) -> str | None:
    """Why an examples.json entry is unusable (None when it is fine); an unknown family or source is one."""
    if not isinstance(ex, dict):
        return f"note {note!r}: not an object"
    missing = [k for k in ("instrument_family_str", "instrument_source_str", "pitch") if k not in ex]
    if missing:
        return f"note {note!r}: missing {missing}"
    if ex["instrument_family_str"] not in NSYNTH_FAMILIES:
        return f"note {note!r}: unknown instrument_family_str {ex['instrument_family_str']!r}"
    if ex["instrument_source_str"] not in NSYNTH_SOURCES:
        return f"note {note!r}: unknown instrument_source_str {ex['instrument_source_str']!r}"
    if isinstance(ex["pitch"], bool) or not isinstance(ex["pitch"], int) or not 0 <= ex["pitch"] <= 127:
        return f"note {note!r}: pitch must be a MIDI number 0-127, got {ex['pitch']!r}"
    return None


def _read_examples(path: Path) -> tuple[dict[str, dict], list[Skipped]]:
    """NSynth's examples.json: note -> {instrument_family_str, instrument_source_str, pitch, ...} of the good
    entries, and the bad ones (bad_row '<file>:<note>'). A file that is not a JSON object is an error."""
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(f"{path}: not NSynth's examples.json ({type(err).__name__}: {err})") from None
    if not isinstance(examples, dict):
        raise DatasetLayoutError(f"{path}: not NSynth's examples.json (a {type(examples).__name__}, not an object)")
    good, bad = {}, []
    for note, ex in examples.items():
        problem = nsynth_entry_problem(note, ex)
        if problem:
            bad.append(bad_row(path, note, problem))
        else:
            good[note] = ex
    return good, bad


def adapt_speechcommands(root: Path, **_) -> Found:
    """Speech Commands v0.02 (Warden 2018): <word>/*.wav, validation_list.txt, testing_list.txt (matched by
    stem); _background_noise_ excluded; column sc10 marks the ten digit words."""
    files, skipped = scan(root, depth=2)
    on_disk = {f"{p.parent.name}/{p.stem}" for p in files}
    valid, bad_valid = _read_sc_list(_require(root / "validation_list.txt", "validation list"), on_disk, set())
    test, bad_test = _read_sc_list(_require(root / "testing_list.txt", "testing list"), on_disk, valid)
    skipped += bad_valid + bad_test
    clips = []
    for path in files:
        word, key = path.parent.name, f"{path.parent.name}/{path.stem}"
        if word.startswith("_"):
            skipped.append(Skipped(path, f"{word} is not a word (excluded, as EVAR)", "excluded"))
            continue
        split = "valid" if key in valid else "test" if key in test else "train"
        clips.append(Clip(path, key, word, split, None, {"sc10": word in SC10_WORDS}))
    return Found(clips, skipped)


def _read_sc_list(path: Path, on_disk: set[str], taken: set[str]) -> tuple[set[str], list[Skipped]]:
    """Keys (word/stem) of a Speech Commands split list, and its bad lines: not '<word>/<file>.wav', a file that
    is not on disk, or one the other list already holds."""
    keys, bad = set(), []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if not re.fullmatch(r"[^/\s]+/[^/\s]+\.wav", name):
            bad.append(bad_row(path, n, f"expected <word>/<file>.wav, got {name[:120]!r}"))
        elif strip_audio_extension(name) not in on_disk:
            bad.append(bad_row(path, n, f"{name} is not on disk"))
        elif strip_audio_extension(name) in taken:
            bad.append(bad_row(path, n, f"{name} is in validation_list.txt too (it stays in valid)"))
        else:
            keys.add(strip_audio_extension(name))
    return keys, bad


class Segment(NamedTuple):
    """One row of an AudioSet segment CSV (line: its line number in the file)."""

    ytid: str
    start: float
    end: float
    mids: list[str]
    line: int


def segment_problem(fields: list[str]) -> str | None:
    """Why the fields of a segment CSV line are not YTID, start_seconds, end_seconds, "mid1,mid2" (None: fine)."""
    if len(fields) != 4:
        return f'{len(fields)} fields, expected 4 (YTID, start_seconds, end_seconds, "mid1,mid2")'
    if not YTID.fullmatch(fields[0]):
        return f"YTID {fields[0]!r} is not 11 characters of [A-Za-z0-9_-]"
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        return f"start/end seconds {fields[1]!r}, {fields[2]!r} are not numbers"
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end):
        return f"start/end seconds {fields[1]}, {fields[2]}: expected 0 <= start <= end"
    mids = fields[3].split(",")
    wrong = [m for m in mids if not MID.fullmatch(m)]
    return f"label ids {wrong} are not /m/..., /t/... or /g/... ids" if wrong else None


def read_segment_csv(path: Path) -> tuple[list[Segment], list[Skipped]]:
    """AudioSet segment CSV: '#' comment lines, then YTID, start_seconds, end_seconds, "mid1,mid2". Each line
    is parsed on its own; a bad one (a quote error, a short row, a malformed id or time) is a bad_row."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                fields = csv_fields(line.rstrip("\r\n"))
            except ValueError as err:
                bad.append(bad_row(path, n, str(err)))
                continue
            problem = segment_problem(fields)
            if problem:
                bad.append(bad_row(path, n, f"{problem}: {line.strip()[:120]!r}"))
            else:
                rows.append(Segment(fields[0], float(fields[1]), float(fields[2]), fields[3].split(","), n))
    return rows, bad


def read_class_table(path: Path) -> tuple[dict[str, str], list[Skipped]]:
    """class_labels_indices.csv: mid -> display name, and its bad rows."""
    rows, bad = read_csv_strict(path, ("mid", "display_name"), "AudioSet's index,mid,display_name")
    names = {}
    for n, row in rows:
        if MID.fullmatch(row["mid"]) and row["display_name"]:
            names[row["mid"]] = row["display_name"]
        else:
            bad.append(bad_row(path, n, f"mid {row['mid']!r} / display_name {row['display_name']!r}"))
    return names, bad


def check_label_ids(segments: list[tuple[Path, Segment]], names: dict[str, str], table: Path | None) -> None:
    """DatasetLayoutError naming the first label id that the class table does not know (and how many)."""
    if table is None:
        return
    unknown = [(path, seg.line, mid) for path, seg in segments for mid in seg.mids if mid not in names]
    if unknown:
        path, line, mid = unknown[0]
        ids = sorted({m for _, _, m in unknown})
        raise DatasetLayoutError(f"{path}: line {line}: label id {mid!r} is not in {table} ({len(ids)} unknown "
                                 f"id(s) on {len(unknown)} row label(s): {ids[:5]}); use the class table of the "
                                 "same AudioSet release")


def _audioset_tables(folders: list[Path], extra: Path | None = None
                     ) -> tuple[dict[str, list[tuple]], dict[str, str], list[Skipped]]:
    """ytid -> [(start, split, mids)] from every segment CSV found (and `extra`, one more segment CSV: split
    from its name, else train), mid -> display name, and the bad rows of all of them. Every label id must be
    in class_labels_indices.csv when there is one."""
    index: dict[str, list[tuple]] = {}
    names: dict[str, str] = {}
    table, bad, segments = None, [], []
    found = [(folder / name, split) for folder in folders for name, split in AUDIOSET_CSVS.items()
             if (folder / name).is_file()]
    if extra is not None:
        found.append((extra, AUDIOSET_CSVS.get(extra.name, "train")))
    for path, split in found:
        rows, wrong = read_segment_csv(path)
        bad += wrong
        for seg in rows:
            index.setdefault(seg.ytid, []).append((seg.start, split, seg.mids))
            segments.append((path, seg))
    for folder in folders:
        if (folder / "class_labels_indices.csv").is_file() and table is None:
            table = folder / "class_labels_indices.csv"
            names, wrong = read_class_table(table)
            bad += wrong
    check_label_ids(segments, names, table)
    return index, names, bad


YTID = re.compile(r"[A-Za-z0-9_-]{11}")
MID = re.compile(r"/[a-z]/[0-9A-Za-z_]+")  # AudioSet ontology ids: /m/09x0r, /t/dd00088, /g/122z_qxw
_AUDIOSET_NAME = re.compile(r"(?P<id>[A-Za-z0-9_-]{11})(?:_(?P<start>\d+(?:\.\d+)?)(?:_(?P<end>\d+(?:\.\d+)?))?)?")


def match_segment(stem: str, index: dict[str, list[tuple]]) -> tuple[str, tuple] | None:
    """(ytid, (start, split, mids)) for a downloader's file name: [Y]<YTID>[_<start>[_<end>]] (seconds or ms)."""
    for candidate in ([stem[1:]] if stem.startswith("Y") else []) + [stem]:
        m = _AUDIOSET_NAME.fullmatch(candidate)
        if not m or m["id"] not in index:
            continue
        segments = index[m["id"]]
        if m["start"] is None:
            return m["id"], segments[0]
        start = float(m["start"])
        for segment in segments:
            if abs(segment[0] - start) < 1e-3 or abs(segment[0] - start / 1000) < 1e-3:
                return m["id"], segment
    return None


def _file_labels(path: Path) -> tuple[dict[str, str], list[Skipped]]:
    """A `file,label` CSV (file relative to the root) -> {file: label}, and its bad rows."""
    rows, bad = read_csv_strict(path, ("file", "label"), "a file,label CSV")
    return {row["file"]: row["label"] for _, row in rows}, bad


def adapt_audioset(root: Path, labels: Path | None = None, **_) -> Found:
    """AudioSet as distributed: any folder tree of clips, named as downloaders write them ([Y]<YTID>[_start
    [_end]].<ext>), and the segment CSVs (eval/balanced_train/unbalanced_train_segments.csv) plus
    class_labels_indices.csv found in `labels` (a folder) or in `root`. The split is the CSV listing the clip
    (eval, balanced_train, unbalanced_train), the label its mids joined by ';', label_names their display
    names; clips in no CSV get split 'unlabelled'. `labels` may also be one `file,label` CSV or one segment CSV.
    """
    files, skipped = scan(root)
    if not files:
        raise DatasetLayoutError(f"{root}: no audio files found")
    folders, by_file = [root], {}
    if labels is not None and Path(labels).is_dir():
        folders = [Path(labels), root]
    elif labels is not None:
        head = _require(Path(labels), "--labels").read_text(encoding="utf-8").lstrip()[:5]
        if head.startswith("file"):
            by_file, bad = _file_labels(Path(labels))
            skipped += bad
    extra = Path(labels) if labels is not None and Path(labels).is_file() and not by_file else None
    index, names, bad = _audioset_tables(folders, extra)
    skipped += bad
    clips = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        key = path.relative_to(root).with_suffix("").as_posix()
        if by_file:
            label = by_file.get(rel, "")
            clips.append(Clip(path, key, label, "train" if label else "unlabelled"))
            continue
        match = match_segment(path.stem, index)
        if match is None:
            clips.append(Clip(path, key, "", "unlabelled", None, {"ytid": "", "label_names": ""}))
            continue
        ytid, (start, split, mids) = match
        clips.append(Clip(path, key, ";".join(mids), split, None,
                          {"ytid": ytid, "label_names": ";".join(names.get(m, m) for m in mids)}))
    return Found(clips, skipped)


def adapt_folder(root: Path, **_) -> Found:
    """Your own folder of audio, at any depth: label = the first folder under `root` (<class>/.../<file>); files
    directly in `root` are unlabelled (label ""). No split or fold: preprocess.py --split assigns them."""
    files, skipped = scan(root)
    if not files:
        raise DatasetLayoutError(f"{root}: no audio found")
    clips = []
    for p in files:
        rel = p.relative_to(root)
        clips.append(Clip(p, rel.with_suffix("").as_posix(), rel.parts[0] if len(rel.parts) > 1 else ""))
    return Found(clips, skipped)


def adapt_synthetic(root: Path, size: str = "small", seed: int = 0, **_) -> Found:
    """The built-in data set (synthetic.py), generated in the ESC-50 layout and read by that adapter."""
    from synthetic import generate_synthetic
    return adapt_esc50(generate_synthetic(root, size=size, seed=seed))


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class TaskSpec:
    """An evaluation task (nttcslab/eval-audio-repr): rows where column == value for each item of `where`, clips cut to
    `unit_seconds`, classes from `label`; `title` is its column name in results/README.md."""

    where: dict | None
    unit_seconds: float
    label: str = "label"
    title: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: its adapter (root -> Found), the tasks it provides, its default cache folder."""

    adapter: Callable[..., Found]
    tasks: dict[str, TaskSpec]
    cache: str


REGISTRY: dict[str, DatasetSpec] = {
    "esc50": DatasetSpec(adapt_esc50, {"esc50": TaskSpec(None, 5.0, title="ESC-50"),
                                       "esc10": TaskSpec({"esc10": True}, 5.0, title="ESC-10")}, "cache/esc50"),
    "gtzan": DatasetSpec(adapt_gtzan, {"gtzan": TaskSpec(None, 30.0, title="GTZAN")}, "cache/gtzan"),
    "nsynth": DatasetSpec(adapt_nsynth, {"nsynth": TaskSpec(None, 4.0, title="NSynth"),
                                         "nsynth_pitch": TaskSpec(None, 4.0, "pitch", "NSynth pitch")}, "cache/nsynth"),
    "speechcommands": DatasetSpec(adapt_speechcommands, {"sc35": TaskSpec(None, 1.0, title="SPCV2 (sc35)"),
                                                         "sc10": TaskSpec({"sc10": True}, 1.0, title="SC-10")},
                                  "cache/speechcommands"),
    "audioset": DatasetSpec(adapt_audioset, {}, "cache/audioset"),
    "folder": DatasetSpec(adapt_folder, {}, "cache/folder"),
    "synthetic": DatasetSpec(adapt_synthetic, {}, "cache/synth_small"),
}


def all_tasks() -> dict[str, tuple[str, TaskSpec]]:
    """task name -> (data set name, TaskSpec), in registry order."""
    return {task: (name, spec) for name, entry in REGISTRY.items() for task, spec in entry.tasks.items()}


def find_task(task: str) -> tuple[str, TaskSpec] | None:
    """(data set name, TaskSpec) of a registered task, or None."""
    return all_tasks().get(task)
