"""The HEAR module inside the repository: audio_ssl_repro's HEAR API, which also takes a training checkpoint.

    import hear_ssl
    model = hear_ssl.load_model("runs/demo_msn/ckpt_last.pt")  # or an export.py encoder file; options as below
    scene = hear_ssl.get_scene_embeddings(audio, model)        # audio [n, samples] 16 kHz in [-1, 1] -> [n, D]
    emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)  # [n, T, D] float32, [n, T] ms

Everything but the checkpoint conversion is audio_ssl_repro.py (the one-file encoder module that `pip install .`
installs; embeddings, timestamps and the load_model options are documented there). A training checkpoint is
converted in memory as export.py would write it (portable.from_checkpoint), so this module needs the repository on
the path; an installed or copied audio_ssl_repro reads export.py's files only.
"""
from __future__ import annotations

import os

import portable
from audio_ssl_repro import (  # noqa: F401  (the HEAR API and its helpers, re-exported)
    BATCH,
    MIN_SAMPLES,
    OPTIONS,
    WINDOW_HOP_MS,
    HearModel,
    centred_windows,
    check_audio,
    check_options,
    get_scene_embeddings,
    get_timestamp_embeddings,
    timestamps,
)


def load_model(model_file_path: str = "", **options) -> HearModel:
    """HEAR load_model: an export.py encoder file or a training checkpoint of this package -> HearModel."""
    check_options(options)
    if not model_file_path:
        raise ValueError("hear_ssl.load_model: pass the path of an encoder file (export.py) or a checkpoint")
    if not os.path.isfile(model_file_path):
        raise FileNotFoundError(f"{model_file_path}: encoder file not found")
    encoder, bundle = portable.load(model_file_path)
    return HearModel(encoder, bundle, **options)
