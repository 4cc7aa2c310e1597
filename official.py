"""Published BYOL-A encoders (nttcslab/byol-a) read into this package's encoder-file layout (portable.py).

    python export.py --ckpt byola:AudioNTT2020-BYOLA-64x96d512.pth --out byola_v1_d512.pt
    python linear_eval.py --ckpt byola:AudioNTT2020-BYOLA-64x96d512.pth --task nsynth

Reads a state dict as published (v1 `pretrained_weights/AudioNTT2020-BYOLA-64x96d{512,1024,2048}.pth`, v2
`v2/AudioNTT2022-BYOLA-64x96d2048.pth`), optionally inside a {"state_dict": ...} or {"model": ...} wrapper and with
the key prefixes of the original training checkpoints ("model.", "learner.net.", "learner.online_encoder.net.",
...; the online encoder is taken, never the EMA target). The version and width come from the tensors:

    v1 AudioNTT2020  features.{0,4,8} (three conv blocks), fc.0 [d, 64 F/8], fc.3 [d, d]   -> models.AudioNTT2020
    v2 AudioNTT2022  features.{0,4} (two conv blocks), fc.0 [hidden, 64 F/4], fc.3 [d - 64 F/4, hidden]
                     -> models.AudioNTT2022 (CNN features and MLP output stacked per frame)

Input: the package's default log-mel (64 mels, 60-7800 Hz, n_fft 1024, hop 160, Slaney scale and area
normalisation = librosa / nnAudio, what both versions were pretrained with; byol-a's evaluate.py itself feeds
torchaudio's HTK mel: `preprocess.py --mel-scale htk` reproduces that). Normalisation: BYOL-A normalises every
downstream task with that task's own log-mel mean and std (evaluate.py calc_norm_stats), which linear_eval.py
computes from the task's training split; the file's `norm` says so ("source": "downstream") and holds identity
statistics unless given (export.py --norm-stats MEAN STD, e.g. for the HEAR module, which cannot see a task).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

PREFIX = "byola:"
NAME = "byola-official"
NORM_NOTE = ("BYOL-A normalises log-mels with the downstream task's own mean/std (evaluate.py calc_norm_stats); "
             "linear_eval.py computes them from the task's training split and ignores this entry")
_PART = re.compile(r"(?:^|\.)((?:features|fc)\.\d+\.\w+)$")  # "<prefix>.features.0.weight" -> "features.0.weight"


def unwrap(state: dict) -> dict:
    """The tensor dict inside {"state_dict": ...} / {"model": ...} wrappers (as byol-a's loaders accept)."""
    for key in ("state_dict", "model"):
        while isinstance(state.get(key), dict):
            state = state[key]
    return state


def split_prefixes(state: dict) -> dict[str, dict]:
    """{prefix: {"features.0.weight": tensor, ...}} for every key that ends in an encoder part."""
    groups: dict[str, dict] = {}
    for key, value in state.items():
        match = _PART.search(key) if torch.is_tensor(value) else None
        if match:
            groups.setdefault(key[:match.start(1)], {})[match.group(1)] = value
    return groups


def choose_prefix(groups: dict[str, dict]) -> str:
    """The online encoder's prefix: none ("" = the weights as published) if present, else the shortest prefix
    without "target" (byol-pytorch's EMA copy); ties go to the one seen first."""
    online = [p for p in groups if "target" not in p]
    if not online:
        raise ValueError("only target-encoder weights")
    return min(online, key=len)


def describe(state: dict, limit: int = 6) -> str:
    """What a state dict holds, in one line: its size and its first keys with shapes."""
    items = [f"{k} {tuple(v.shape)}" if torch.is_tensor(v) else f"{k} ({type(v).__name__})"
             for k, v in list(state.items())[:limit]]
    return f"{len(state)} entries: " + ", ".join(items) + (", ..." if len(state) > limit else "")


def detect(weights: dict) -> dict:
    """The model config of v1 / v2 encoder weights (keys without prefix) -> {"arch", "n_mels", "dim", ...}."""
    conv = [int(m.group(1)) for k in weights if (m := re.fullmatch(r"features\.(\d+)\.weight", k))
            and weights[k].dim() == 4]
    if "fc.0.weight" not in weights or "fc.3.weight" not in weights or not conv:
        raise ValueError("no AudioNTT conv blocks (features.N) and fc.0/fc.3 layers")
    base, blocks = weights["features.0.weight"].shape[0], len(conv)
    fc0, fc3 = weights["fc.0.weight"].shape, weights["fc.3.weight"].shape
    if blocks == 3 and fc0[0] == fc3[0] == fc3[1]:
        return {"arch": "audiontt2020", "version": 1, "n_mels": fc0[1] // base * 8, "dim": fc0[0], "base": base,
                "dropout": 0.3}
    if blocks == 2 and fc3[1] == fc0[0]:
        conv_dim = fc0[1]
        return {"arch": "audiontt2022", "version": 2, "n_mels": conv_dim // base * 4, "dim": conv_dim + fc3[0],
                "base": base, "mlp_hidden": fc0[0], "dropout": 0.3}  # dropout: inactive in eval; byol-a v2's
    raise ValueError(f"{blocks} conv blocks with fc.0 {tuple(fc0)} and fc.3 {tuple(fc3)} is neither v1 "
                     "(3 blocks, fc d -> d) nor v2 (2 blocks, fc hidden -> d - conv)")


def read_byola(path: str | os.PathLike) -> tuple[dict, dict]:
    """A BYOL-A weight file -> (encoder state_dict in this package's names, model config incl. "version").
    Anything else is a one-line ValueError naming the file and listing what it holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BYOL-A weight file not found")
    try:  # a third-party file: tensors and plain containers only, never arbitrary pickled objects
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not readable as a weights-only torch file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]}); save its state_dict alone") from None
    state = unwrap(raw) if isinstance(raw, dict) else {}
    groups = split_prefixes(state)
    try:
        if not groups:
            raise ValueError("no features.N / fc.N encoder keys")
        prefix = choose_prefix(groups)
        model = detect(groups[prefix])
    except ValueError as err:
        held = describe(state) if state else f"a {type(raw).__name__}"
        raise ValueError(f"{path}: not a BYOL-A v1 (AudioNTT2020) or v2 (AudioNTT2022) weight file ({err}); "
                         f"it holds {held}") from None
    return dict(groups[prefix]), {**model, "prefix": prefix}


def byola_bundle(path: str | os.PathLike, norm_stats: tuple[float, float] | None = None) -> dict:
    """A BYOL-A weight file -> the encoder-file dict of portable.py (kind "byola"), weights loaded and checked."""
    import models
    from audio import LogMelConfig
    from files import file_sha256

    weights, model = read_byola(path)
    version, prefix = model.pop("version"), model.pop("prefix")
    name = f"{NAME}-v{version}-d{model['dim']}"
    config = {"model": model, "_meta": {"config_name": name}}
    encoder = models.build_encoder(config)
    for key, value in encoder.state_dict().items():  # BN counters some files leave out
        if key.endswith("num_batches_tracked"):
            weights.setdefault(key, torch.zeros_like(value))
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{path}: BYOL-A v{version} weights do not load ({str(err).splitlines()[0]})") from None
    mean, std = norm_stats if norm_stats is not None else (0.0, 1.0)
    source = "given" if norm_stats is not None else "downstream"
    from portable import FORMAT
    return {"format": FORMAT, "kind": "byola", "config": config,
            "encoder": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
            "logmel": LogMelConfig().to_dict(),
            "norm": {"source": source, "mean": float(mean), "std": float(std), "note": NORM_NOTE},
            "source": {"ckpt": str(path), "sha256": file_sha256(path), "step": 0, "git": "",
                       "logmel_from": "BYOL-A pretraining front end (Slaney mel, 64 bins, 60-7800 Hz)",
                       "official": f"nttcslab/byol-a v{version}, d {model['dim']}, key prefix {prefix!r}",
                       "file": Path(path).name}}


bundle = byola_bundle  # the released-weights reader that export.py and linear_eval.py call (PREFIX:PATH)

# The results page's table of released encoders (results/make_tables.py): the reference.csv table that holds the
# byol-a README's published rows, the names linear_eval.py gives the measured rows, and the columns.
TABLE = "byola_official"
TITLE = "BYOL-A: the published encoder through this probe"
ROW_TITLES = {"byola-official-v1-d512": "BYOL-A d512 (official weights, this probe)"}
TASKS = ("nsynth", "sc35")
NOT_MEASURED = ("Not measured here (no weight file): `python linear_eval.py --ckpt "
                "byola:AudioNTT2020-BYOLA-64x96d512.pth --task nsynth` adds the row (docs/methods.md).")
