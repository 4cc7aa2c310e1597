"""The built-in data set: synthetic sound events in the exact ESC-50 on-disk layout.

    from synthdata import generate_synthetic
    root = generate_synthetic("data/synthetic", size="small", seed=0)
    # root/audio/{fold}-{clip_id}-{take}-{target}.wav   16-bit PCM, 16 kHz mono
    # root/meta/esc50.csv  filename,fold,target,category,esc10,src_file,take

    python synthetic.py --root data/synthetic --size small          # generate (the CLI over this module)
    python synthetic.py --root data/synthetic --size small --check  # + linear-probe hardness check

It lets the demo and the tests run the whole chain (preprocess.py --dataset synthetic, then the
ESC-50 adapter) without downloads. Class identity lies in spectro-temporal STRUCTURE more than in
the average spectrum. Every clip draws its own nuisances: pitch, f0 = class register x 2^U(-0.6, 0.6)
(registers 200-600 Hz, so the ranges of all classes overlap); carrier timbre (a harmonic tone with
3-12 partials of random spectral tilt, or where the structure allows a noise band 1/3-1 octave wide
centred on 3 f0); loudness (+-10 dB); event length (40-100 % of the clip) and onset; and coloured
background noise (1/f^a, a in [0, 2]) at an SNR of 0-20 dB. The classes, as (register) structure:

    0 harmonic_stack  (200 Hz) a steady harmonic tone.
    1 up_chirp        (300 Hz) a harmonic tone whose pitch rises exponentially by 1-2.5 octaves.
    2 down_chirp      (300 Hz) the same, falling.
    3 vibrato         (200 Hz) a harmonic tone with sinusoidal FM at 4-8 Hz, +-2 to +-6 % of f0.
    4 tremolo         (450 Hz) a tone (80 %) or noise band (20 %) with deep AM at 2-5 Hz.
    5 flutter         (300 Hz) a noise band (80 %) or tone (20 %) with deep AM at 11-20 Hz.
    6 noise_band      (300 Hz) steady band-limited noise.
    7 slow_pulses     (600 Hz) bursts (2 ms attack, 20-60 ms decay) of noise (80 %) or tone, 1.5-3 per s.
    8 fast_pulses     (600 Hz) the same at 6-10 per s.
    9 pluck           (450 Hz) one sharp onset of a tone (80 %) or noise, exponential decay, tau 0.1-0.4 s.

Pairs that differ only in structure (0/3, 1/2, 4/9, 5/6, 7/8) share a register, so the average
spectrum at best narrows a clip down to its pair. Classes 0, 1, 4, 6 and 8 form the `esc10` subset
(a 5-class task, like ESC-10). Folds 1-5 hold the same number of clips of every class. Each clip
has its own generator, np.random.default_rng([seed, class, index]), so a seed gives byte-identical
files.

Hardness (`python synthetic.py --check`): logistic regression on the clip-mean log-mel (audio.LogMel,
64 dims) against the same probe on time-aware statistics (see `probe_features`), fold-5 test and
5-fold cross-validation. Measured with seed 0 (mean log-mel / time-aware): small 37.5 / 87.5 % on
fold 5 and 44.0 / 80.5 % 5-fold; default 40.0 / 90.0 % on fold 5 and 44.8 / 90.5 % 5-fold.
"""
from __future__ import annotations

import hashlib
import json
import os
import wave as wavfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from files import atomic_write, atomic_write_text, remove_stale_temps

SAMPLE_RATE = 16000
VERSION = 2  # bump when the generator changes: a cached set with another version is regenerated
SIZES = {  # classes, clips per class, seconds per clip
    "small": (10, 20, 2.0),
    "default": (10, 40, 5.0),
}
CATEGORIES = ["harmonic_stack", "up_chirp", "down_chirp", "vibrato", "tremolo", "flutter", "noise_band",
              "slow_pulses", "fast_pulses", "pluck"]
ESC10_CLASSES = {0, 1, 4, 6, 8}
# each class's pitch register (Hz): pairs that differ only in structure share one, so the average
# spectrum can at best find the pair; the draws around it (PITCH_OCTAVES) overlap between pairs
REGISTERS = [200.0, 300.0, 300.0, 200.0, 450.0, 300.0, 300.0, 600.0, 600.0, 450.0]
CSV_COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
MARKER = "synthetic.json"  # root/meta/synthetic.json, written last: the set is complete
PARTIAL = "synthetic.partial.json"  # present while a (re)generation runs: the folder is ours, restartable
# nuisance ranges, drawn uniformly per clip
LOUDNESS_DB = (-10.0, 10.0)  # event RMS around 0.05 (-26 dBFS)
SNR_DB = (0.0, 20.0)  # event power over background power, both averaged over the clip
NOISE_EXPONENT = (0.0, 2.0)  # background power spectrum 1/f^a: white to brown
EVENT_SHARE = (0.4, 1.0)  # event length as a share of the clip
PITCH_OCTAVES = 0.6  # f0 (or noise-band centre / 3) = class register * 2^U(-0.6, 0.6)

# ----------------------------------------------------------------------------- carriers


def harmonic_tone(rng: np.random.Generator, f0: np.ndarray) -> np.ndarray:
    """Sum of partials k * f0(t), k = 1..K (K 3-12), amplitude k^-tilt, partials above 7.5 kHz muted."""
    n_partials = int(rng.integers(3, 13))
    tilt = rng.uniform(0.3, 2.0)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = np.zeros_like(f0)
    for k in range(1, n_partials + 1):
        audible = (k * f0 < 7500).astype(np.float64)
        tone += audible * k ** -tilt * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return tone


def noise_band(rng: np.random.Generator, n: int, centre: float) -> np.ndarray:
    """White noise shaped by a Gaussian band on a log-frequency axis (1/3 to 1 octave wide)."""
    octaves = rng.uniform(1 / 3, 1.0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    distance = np.log2(np.maximum(freqs, 1.0) / centre) / (octaves / 2)
    return np.fft.irfft(spectrum * np.exp(-0.5 * distance ** 2), n)


def carrier(rng: np.random.Generator, n: int, register: float, noise_share: float) -> np.ndarray:
    """A steady harmonic tone, f0 = register * 2^U(-PITCH_OCTAVES, PITCH_OCTAVES), or with probability
    `noise_share` a noise band centred on 3 f0 (where a tone's partials put most of its energy)."""
    f0 = register * 2 ** rng.uniform(-PITCH_OCTAVES, PITCH_OCTAVES)
    if rng.random() < noise_share:
        return noise_band(rng, n, 3 * f0)
    return harmonic_tone(rng, np.full(n, f0))

# ----------------------------------------------------------------------------- events


def pulse_train(rng: np.random.Generator, t: np.ndarray, rate: float) -> np.ndarray:
    """Sum of bursts (2 ms attack, 20-60 ms decay) every 1/rate s with +-5 % timing jitter."""
    decay = rng.uniform(0.02, 0.06)
    env = np.zeros_like(t)
    start = rng.uniform(0, min(1 / rate, t[-1] / 2))  # the first pulse falls within even a short event
    for onset in np.arange(start, t[-1], 1 / rate):
        onset += rng.uniform(-0.05, 0.05) / rate
        since = t - onset
        env += np.where(since >= 0, np.exp(-np.maximum(since, 0) / decay), 0) * np.clip(since / 0.002, 0, 1)
    return env


def make_event(target: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """The structured sound of class `target`, n samples long, before windowing and loudness."""
    t = np.arange(n) / SAMPLE_RATE
    name, register = CATEGORIES[target], REGISTERS[target]
    if name == "harmonic_stack":
        return carrier(rng, n, register, noise_share=0.0)
    if name in ("up_chirp", "down_chirp"):
        octaves = rng.uniform(1.0, 2.5) * (1 if name == "up_chirp" else -1)
        f0 = register * 2 ** rng.uniform(-PITCH_OCTAVES, PITCH_OCTAVES)
        return harmonic_tone(rng, f0 * 2 ** (octaves * (t / t[-1] - 0.5)))
    if name == "vibrato":
        f0 = register * 2 ** rng.uniform(-PITCH_OCTAVES, PITCH_OCTAVES)
        rate, depth = rng.uniform(4, 8), rng.uniform(0.02, 0.06)
        return harmonic_tone(rng, f0 * (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))))
    if name in ("tremolo", "flutter"):
        rate = rng.uniform(2, 5) if name == "tremolo" else rng.uniform(11, 20)
        depth = rng.uniform(0.8, 1.0)
        am = 1 - depth * (0.5 + 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        return am * carrier(rng, n, register, noise_share=0.2 if name == "tremolo" else 0.8)
    if name == "noise_band":
        return carrier(rng, n, register, noise_share=1.0)
    if name in ("slow_pulses", "fast_pulses"):
        rate = rng.uniform(1.5, 3) if name == "slow_pulses" else rng.uniform(6, 10)
        return pulse_train(rng, t, rate) * carrier(rng, n, register, noise_share=0.8)
    if name == "pluck":
        tau = rng.uniform(0.1, 0.4)
        return np.exp(-t / tau) * np.clip(t / 0.002, 0, 1) * carrier(rng, n, register, noise_share=0.2)
    raise ValueError(f"unknown class {target}")


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with power spectrum 1/f^a, a uniform in [0, 2] (white to brown), unit RMS."""
    exponent = rng.uniform(*NOISE_EXPONENT)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    noise = np.fft.irfft(spectrum / np.maximum(freqs, 20.0) ** (exponent / 2), n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def make_clip(target: int, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One clip [seconds * 16 kHz] float64: an event (40-100 % of the clip, random onset) over noise."""
    n = int(round(seconds * SAMPLE_RATE))
    length = int(n * rng.uniform(*EVENT_SHARE))
    onset = int(rng.integers(0, n - length + 1))
    event = make_event(target, rng, length)
    fade = min(int(0.01 * SAMPLE_RATE), length // 4)  # 10 ms raised-cosine edges: no clicks at the cut
    window = np.ones(length)
    window[:fade] = window[-fade:][::-1] = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    event *= window
    if not np.any(event):
        raise ValueError(f"class {CATEGORIES[target]}: silent event of {length} samples (clip too short?)")
    event *= 0.05 * 10 ** (rng.uniform(*LOUDNESS_DB) / 20) / (np.sqrt(np.mean(event ** 2)) + 1e-12)
    clip = np.zeros(n)
    clip[onset:onset + length] = event
    event_power = np.mean(event ** 2) * length / n
    snr_db = rng.uniform(*SNR_DB)
    clip += coloured_noise(rng, n) * np.sqrt(event_power / 10 ** (snr_db / 10))
    peak = np.abs(clip).max()
    return clip * (0.95 / peak) if peak > 0.95 else clip

# ----------------------------------------------------------------------------- files


def clip_table(size: str) -> list[dict]:
    """ESC-50 metadata rows, sorted by filename: every class has the same number of clips in each fold."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    n_classes, per_class, _ = SIZES[size]
    if per_class % 5:
        raise ValueError(f"size {size!r}: clips per class ({per_class}) must divide into 5 folds")
    rows = []
    for target in range(n_classes):
        for index in range(per_class):
            fold = index % 5 + 1
            src = 100000 + 1000 * target + index  # like ESC-50's freesound ids; one take per source
            rows.append(dict(filename=f"{fold}-{src}-A-{target}.wav", fold=fold, target=target,
                             category=CATEGORIES[target], esc10=target in ESC10_CLASSES, src_file=src,
                             take="A", index=index))
    return sorted(rows, key=lambda r: r["filename"])


def write_wav(path: Path, clip: np.ndarray) -> None:
    """16-bit PCM mono WAV via a temp file + rename (stdlib `wave`: no timestamps, byte-reproducible)."""
    pcm = np.clip(np.round(clip * 32767), -32768, 32767).astype("<i2")

    def write(f) -> None:
        with wavfile.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
    atomic_write(path, write, sync=False)  # a failed write (full disk) leaves no temp and names the file


def _csv_text(rows: list[dict]) -> str:
    lines = [",".join(CSV_COLUMNS)]
    lines += [",".join(str(r[c]) for c in CSV_COLUMNS) for r in rows]
    return "\n".join(lines) + "\n"


def _is_complete(root: Path, marker: dict) -> bool:
    """The marker matches (size, seed, version, CSV hash) and every listed WAV exists with its size."""
    path = root / "meta" / MARKER
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if {k: found.get(k) for k in marker} != marker:
        return False
    csv_path = root / "meta" / "esc50.csv"
    if not csv_path.is_file() or hashlib.sha256(csv_path.read_bytes()).hexdigest() != found["csv_sha256"]:
        return False
    expected = 44 + 2 * found["samples"]
    return all((root / "audio" / name).is_file() and (root / "audio" / name).stat().st_size == expected
               for name in found["files"])


def generate_synthetic(root: str | os.PathLike, size: str = "small", seed: int = 0) -> Path:
    """Write the synthetic set in the ESC-50 layout under `root` (see the module docstring); return root.

    Deterministic: the same size and seed give byte-identical files. Returns at once when
    root/meta/synthetic.json says a complete set of this size, seed and version is there. Every file
    is written atomically and the marker last, so an interrupted run never looks complete; meta/
    synthetic.partial.json marks a (re)generation in progress, so an interrupted one is redone by the next
    call. Refuses a `root` that holds a real ESC-50 (an esc50.csv without either marker).
    """
    root = Path(root)
    rows = clip_table(size)
    _, _, seconds = SIZES[size]
    samples = int(round(seconds * SAMPLE_RATE))
    csv_text = _csv_text(rows)
    marker = dict(generator="synthetic", version=VERSION, size=size, seed=int(seed), samples=samples,
                  sample_rate=SAMPLE_RATE, csv_sha256=hashlib.sha256(csv_text.encode()).hexdigest())
    if _is_complete(root, marker):
        return root
    marker_path, csv_path = root / "meta" / MARKER, root / "meta" / "esc50.csv"
    partial_path = root / "meta" / PARTIAL
    if csv_path.exists() and not marker_path.exists() and not partial_path.exists():
        raise FileExistsError(f"{csv_path}: exists and is not a synthetic set; choose another root")
    old_files = sorted(set(_listed_files(marker_path)) | set(_listed_files(partial_path)))
    for folder in (root / "audio", root / "meta"):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
    # written before the complete marker goes: an interrupted regeneration stays recognisable and restartable
    atomic_write_text(json.dumps({"generator": "synthetic", "files": old_files}) + "\n", partial_path)
    marker_path.unlink(missing_ok=True)  # from here on the set is incomplete until the new marker is written
    for row in tqdm(rows, desc=f"synthetic {size}", unit="clip", disable=None):
        rng = np.random.default_rng([int(seed), row["target"], row["index"]])
        write_wav(root / "audio" / row["filename"], make_clip(row["target"], rng, seconds))
    new_files = [r["filename"] for r in rows]
    for name in set(old_files) - set(new_files):  # clips of a previous synthetic set in this root
        (root / "audio" / name).unlink(missing_ok=True)
    atomic_write_text(csv_text, csv_path)
    atomic_write_text(json.dumps({**marker, "files": new_files}, indent=1) + "\n", marker_path)
    partial_path.unlink()
    return root


def _listed_files(marker: Path) -> list[str]:
    """The clip names a (complete or partial) marker lists; [] when it is absent or unreadable."""
    try:
        return list(json.loads(marker.read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return []

# ----------------------------------------------------------------------------- hardness check


def _autocorrelation(x: np.ndarray, lags: int) -> np.ndarray:
    """Normalised autocorrelation of x [..., T] over time at lags 1..lags."""
    x = x - x.mean(-1, keepdims=True)
    n = x.shape[-1]
    power = np.abs(np.fft.rfft(x, 2 * n, axis=-1)) ** 2
    ac = np.fft.irfft(power, axis=-1)[..., :n]
    return ac[..., 1:lags + 1] / (ac[..., :1] + 1e-12)


def time_aware_features(logmel: np.ndarray, lags: int = 60) -> np.ndarray:
    """[B, F, T] log-mel -> [B, 4F - 1 + 2 lags] time-aware statistics (see probe_features)."""
    d_time = np.diff(logmel, axis=2)
    d_freq = np.diff(logmel, axis=1)[:, :, :-1]
    loudness = np.log(np.exp(logmel).sum(1))  # [B, T]
    return np.concatenate([logmel.mean(2), logmel.std(2), d_time.std(2), (d_time[:, :-1] * d_freq).mean(2),
                           _autocorrelation(loudness, lags), _autocorrelation(logmel, lags).mean(1)], axis=1)


def probe_features(root: str | os.PathLike, batch: int = 50) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per clip: {'mean_logmel': [N, 64], 'time_aware': [N, 375]} features, targets [N], folds [N].

    time_aware = mean and std over time of the log-mel, std over time of its time delta, the mean over
    time of (time delta x frequency delta), whose sign follows the direction of a sweep, and the
    autocorrelation over 10-600 ms lags of the loudness and (averaged over mel bins) of each bin: a
    modulation spectrum.
    """
    import pandas as pd
    import torch

    from audio import LogMel, load_audio

    meta = pd.read_csv(Path(root) / "meta" / "esc50.csv")
    front_end = LogMel()
    mean_logmel, time_aware = [], []
    names = meta["filename"].tolist()
    for start in range(0, len(names), batch):
        waves = np.stack([load_audio(Path(root) / "audio" / name) for name in names[start:start + batch]])
        with torch.no_grad():
            logmel = front_end(torch.from_numpy(waves)).numpy().astype(np.float64)  # [B, 64, T]
        mean_logmel.append(logmel.mean(2))
        time_aware.append(time_aware_features(logmel))
    features = {"mean_logmel": np.concatenate(mean_logmel), "time_aware": np.concatenate(time_aware)}
    return features, meta["target"].to_numpy(), meta["fold"].to_numpy()


def hardness_check(root: str | os.PathLike, lr: float = 3e-4, seed: int = 0) -> dict:
    """5-fold cross-validated accuracy of the EVAR linear probe (probe.py, as linear_eval.py runs it on this set:
    a validation tenth carved out of the training folds) on each feature of probe_features:
    {name: {'folds': [acc of fold 1..5], 'cv': mean, 'fold5': acc on fold 5}}."""
    from probe import split_accuracy

    features, targets, folds = probe_features(root)
    results = {}
    for name, x in features.items():
        per_fold = [split_accuracy(x[folds != k], targets[folds != k], x[folds == k], targets[folds == k],
                                   int(targets.max()) + 1, seed=seed, lr=lr) for k in range(1, 6)]
        results[name] = dict(folds=per_fold, cv=float(np.mean(per_fold)), fold5=per_fold[4])
    return results


def result_rows(results: dict, task: str, lr: float) -> list[dict]:
    """probe.RESULT_FIELDS rows of the hand-crafted probes, model 'handcrafted:<feature>', so that the results
    tables show them next to the encoders (results/make_tables.py)."""
    import datetime

    from probe import RESULT_FIELDS, mean_ci95
    from runlog import git_commit

    rows = []
    for name, result in results.items():
        mean, ci = mean_ci95([100 * a for a in result["folds"]])
        row = dict.fromkeys(RESULT_FIELDS, "")
        row.update(date=datetime.datetime.now().isoformat(timespec="seconds"), task=task, model=f"handcrafted:{name}",
                   config="synthetic.py --check", seeds="0", folds="1 2 3 4 5",
                   fold_acc=" ".join(f"{100 * a:.2f}" for a in result["folds"]), mean=f"{mean:.2f}",
                   ci95=f"{ci:.2f}", n="5", lr=f"{lr:g}", commit=git_commit())
        rows.append(row)
    return rows
