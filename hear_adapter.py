"""The HEAR adapter: any HEAR 2021 API module (Turian et al. 2022) as an encoder of this package, so that
linear_eval.py probes it like a checkpoint.

    python linear_eval.py --ckpt hear:hearbaseline --task esc50            # MODULE
    python linear_eval.py --ckpt hear:my_module:weights.pt --task esc50    # MODULE:WEIGHTS
    encoder, info = hear_adapter.load_hear("hear:hearbaseline")           # HearEncoder, provenance

The other direction (this package's encoders as a HEAR module) is hear_ssl.py.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
from pathlib import Path

import torch
import torch.nn as nn

from audio import SAMPLE_RATE, resample
from files import file_sha256


class HearEncoder(nn.Module):
    """A HEAR module's model as an encoder of this package (input_kind "wave", 16 kHz [B, L]): embed() resamples
    to the model's sample_rate (audio.resample) and returns the module's get_scene_embeddings (HEAR API)."""

    input_kind = "wave"

    def __init__(self, module, model: nn.Module):
        super().__init__()
        self.module, self.model = module, model
        self.embed_dim = int(model.scene_embedding_size)
        self.sample_rate = int(model.sample_rate)
        self.input_rate = SAMPLE_RATE  # of the cached waves; main() sets the task cache's (preprocess.json)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, long: str = "chunk", pool: str = "cls") -> torch.Tensor:
        """wave [B, L] at 16 kHz -> [B, scene_embedding_size] float32; `long` and `pool` do not apply."""
        wave = resample(x.cpu(), self.input_rate, self.sample_rate).to(x.device)
        return torch.as_tensor(self.module.get_scene_embeddings(wave, self.model)).float()


def load_hear(spec: str) -> tuple[nn.Module, dict]:
    """`hear:MODULE[:WEIGHTS]` -> (HearEncoder, info). MODULE is imported and MODULE.load_model([WEIGHTS]) called
    with torch's global RNG restored afterwards (hearbaseline's load_model seeds it). The row's model is
    `hear:MODULE[:weights file name]`, its config `DISTRIBUTION VERSION`, its sha256 one over the module's source
    file, version and weights file."""
    name, _, weights = spec.split(":", 1)[1].partition(":")
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ValueError(f"{spec}: cannot import HEAR module {name!r} ({type(err).__name__}: {err})") from None
    if not hasattr(module, "load_model") or not hasattr(module, "get_scene_embeddings"):
        raise ValueError(f"{spec}: {name} is not a HEAR module (needs load_model and get_scene_embeddings)")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: weights file of {spec} not found")
    try:
        with torch.random.fork_rng(devices=[]):
            model = module.load_model(weights) if weights else module.load_model()
    except Exception as err:  # e.g. a module that downloads its weights, offline
        reason = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{spec}: {name}.load_model failed ({type(err).__name__}: {reason})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec}: load_model returned {type(model).__name__}; only PyTorch HEAR modules are supported")
    top = name.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top, [])
    version = f"{dists[0]} {importlib.metadata.version(dists[0])}" if dists else name
    items = [name, version, file_sha256(inspect.getsourcefile(module)), file_sha256(weights) if weights else ""]
    sha = "hear-" + hashlib.sha256("|".join(items).encode()).hexdigest()
    label = f"hear:{name}" + (f":{Path(weights).name}" if weights else "")
    return HearEncoder(module, model).eval(), {"model": label, "ckpt_sha256": sha, "config": version}
