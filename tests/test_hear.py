"""HEAR both ways (issue 11): hear_ssl.py on every encoder family (the validator's contract, values by hand),
export.py's portable encoder files, and linear_eval.py --ckpt hear:MODULE with a real PyPI HEAR module."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import data
import evaluation
import hear_ssl
import models
import portable
import pretrain_byola
import pretrain_clar
import pretrain_msn
import tables
from audio import LOG_SILENCE, LogMel, LogMelConfig
from tests.conftest import ROOT, model_cfg, run_script, write_tiny_cache
from tests.test_pretrain_byola import tiny as byola_tiny
from tests.test_pretrain_clar import tiny_args as clar_tiny
from tests.test_pretrain_msn import tiny as msn_tiny

LENGTHS = (0.2, 1.07, 1.98, 2.74, 4.0)  # hear-validator uses the last four


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny training checkpoint per encoder family on the tiny cache (a few seconds each)."""
    tmp = tmp_path_factory.mktemp("hear")
    cache = write_tiny_cache(tmp / "cache")
    ckpts = {"cache": cache}
    pretrain_msn.main(msn_tiny(cache, tmp / "msn", "train.epochs=1"))
    pretrain_byola.main(byola_tiny(cache, tmp / "byola", "train.epochs=1"))
    for arch in ("1d", "2d"):
        pretrain_clar.main(clar_tiny(cache, tmp / f"clar{arch}", f"encoder={arch}", "train.epochs=1",
                                     "train.final_probe=false", "train.channels_last=false"))
    for name in ("msn", "byola", "clar1d", "clar2d"):
        ckpts[name] = tmp / name / "ckpt_last.pt"
    return ckpts


def hand_frontend(ckpt: dict, wave: torch.Tensor) -> torch.Tensor:
    """The training normalisation read straight from the checkpoint: (LogMel(wave) - mean) / std, [B, 1, 64, T]."""
    if ckpt["config"]["aug"]["norm"] == "running":
        state = ckpt["per_process"][0]["state"]["views"]["norm"]
        mean, std = state["mu"], math.sqrt(state["var"])
    else:
        mean, std = ckpt["meta"]["norm_stats"]
    return ((LogMel()(wave) - mean) / std)[:, None]


@pytest.mark.parametrize("name", ["msn", "byola", "clar1d", "clar2d"])
def test_hear_module_meets_the_validator_contract_at_every_length(runs, name):
    model = hear_ssl.load_model(str(runs[name]))
    encoder = models.load_encoder_file(runs[name])[0]
    assert type(model.sample_rate) is int and model.sample_rate == 16000
    assert type(model.scene_embedding_size) is int and model.scene_embedding_size == encoder.embed_dim
    assert type(model.timestamp_embedding_size) is int and model.timestamp_embedding_size == encoder.embed_dim
    hop, first = (40.0, 15.0) if name == "byola" else (50.0, 0.0)
    torch.manual_seed(0)
    for seconds in LENGTHS:
        n = int(seconds * 16000)
        audio = torch.rand(2, n) * 2 - 1
        scene = hear_ssl.get_scene_embeddings(audio, model)
        assert scene.dtype == torch.float32 and scene.shape == (2, encoder.embed_dim)
        emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
        count = int((n / 16 - first) // hop) + 1  # every centre first + k * hop ms up to the end, by hand
        assert emb.dtype == torch.float32 and emb.shape == (2, count, encoder.embed_dim) and ts.shape == (2, count)
        assert torch.equal(ts[0], ts[1]) and ts[0, 0].item() == first
        assert torch.allclose(ts.diff(dim=1), torch.full((2, count - 1), hop))  # regular hop <= 50 ms
        assert 1000 * seconds - hop < ts.max().item() <= 1000 * seconds  # covers the end, never past it
        assert torch.isfinite(emb).all() and torch.isfinite(scene).all()


def test_msn_vit_embeddings_equal_the_hand_computed_windows_and_clip(runs):
    ckpt = torch.load(runs["msn"], weights_only=False)
    encoder = models.load_encoder_file(runs["msn"])[0]
    model = hear_ssl.load_model(str(runs["msn"]))
    torch.manual_seed(1)
    audio = torch.rand(2, int(1.98 * 16000)) * 2 - 1
    x = hand_frontend(ckpt, audio)  # [2, 1, 64, 199]
    width = ckpt["config"]["model"]["crop_frames"]  # 32
    torch.testing.assert_close(hear_ssl.get_scene_embeddings(audio, model), encoder.embed(x, "chunk", "cls"))
    emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
    silence = (LOG_SILENCE - ckpt["per_process"][0]["state"]["views"]["norm"]["mu"]) / math.sqrt(
        ckpt["per_process"][0]["state"]["views"]["norm"]["var"])
    for k in (0, 10, len(ts[0]) - 1):  # timestamp 50 k ms = log-mel frame 5 k, window [5k - 16, 5k + 16)
        start = 5 * k - width // 2
        window = F.pad(x, (width, width), value=silence)[..., start + width:start + 2 * width]
        torch.testing.assert_close(emb[:, k], encoder.embed(window, "chunk", "cls"), atol=1e-5, rtol=1e-5)


def test_audiontt_frames_and_clar_windows_equal_hand_computations(runs):
    ckpt = torch.load(runs["byola"], weights_only=False)
    encoder = models.load_encoder_file(runs["byola"])[0]
    model = hear_ssl.load_model(str(runs["byola"]))
    torch.manual_seed(2)
    audio = torch.rand(2, 16000) * 2 - 1  # 101 log-mel frames -> 25 AudioNTT frames, centres 15..975 ms
    x = hand_frontend(ckpt, audio)
    frames = encoder.frames(x)
    torch.testing.assert_close(hear_ssl.get_scene_embeddings(audio, model),
                               frames.max(dim=1).values + frames.mean(dim=1))
    emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
    assert ts[0].tolist() == [15.0 + 40 * k for k in range(25)]
    torch.testing.assert_close(emb, frames[:, :25])  # 4 * 25 = 100 frames: no padding needed at 1 s

    clar = models.load_encoder_file(runs["clar2d"])[0]
    model = hear_ssl.load_model(str(runs["clar2d"]))
    emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
    clip = clar.clip_samples  # 0.25 s = 4000 samples, window [800 k - 2000, 800 k + 2000)
    assert ts.shape == (2, 21) and clip == 4000
    torch.testing.assert_close(emb[:, 10], clar(audio[:, 8000 - 2000:8000 + 2000]), atol=1e-5, rtol=1e-5)
    padded = torch.cat([torch.zeros(2, 2000), audio[:, :2000]], dim=1)
    torch.testing.assert_close(emb[:, 0], clar(padded), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hear_ssl.get_scene_embeddings(audio, model), clar.embed(audio, "chunk"))


def test_export_is_portable_and_embeds_exactly_as_the_checkpoint(runs, tmp_path):
    cache = runs["cache"]
    df = data.read_manifest(cache)
    for name in ("msn", "byola", "clar1d"):
        out = tmp_path / f"{name}.pt"
        if name == "msn":  # the command line once (it says what it wrote), the module for the others
            done = run_script("export.py", "--ckpt", runs[name], "--out", out)
            assert done.returncode == 0 and f"{out}: msn vit_audio" in done.stdout, done.stderr
        else:
            portable.export(str(runs[name]), str(out))
        assert not list(tmp_path.glob(".*.tmp*"))
        bundle = torch.load(out, weights_only=True)  # plain types only: no training state, no pickled classes
        ckpt = torch.load(runs[name], weights_only=False)
        assert bundle["format"] == portable.FORMAT and bundle["kind"] == ckpt["kind"]
        assert set(bundle) == {"format", "kind", "config", "encoder", "logmel", "norm", "source"}
        assert bundle["source"]["sha256"] == portable.file_sha256(runs[name])
        for key, value in ckpt["encoder"].items():
            assert torch.equal(bundle["encoder"][key], value)
        a, b = hear_ssl.load_model(str(runs[name])), hear_ssl.load_model(str(out))
        audio = torch.rand(3, 30000) * 2 - 1
        assert torch.equal(hear_ssl.get_scene_embeddings(audio, a), hear_ssl.get_scene_embeddings(audio, b))
        for x, y in zip(hear_ssl.get_timestamp_embeddings(audio, a), hear_ssl.get_timestamp_embeddings(audio, b)):
            assert torch.equal(x, y)
    msn, byola, clar = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("msn", "byola", "clar1d"))
    state = torch.load(runs["msn"], weights_only=False)["per_process"][0]["state"]["views"]["norm"]
    assert msn["norm"] == {"source": "running", "mean": state["mu"], "std": math.sqrt(state["var"])}
    crop = byola["config"]["model"]["crop_frames"]  # BYOL-A v2's statistics over training-length crops, by hand
    mean, std = data.logmel_stats(cache, df, 10000, 0, frames=crop)
    assert byola["norm"] == {"source": "precomputed", "mean": mean, "std": std}
    assert msn["logmel"] == LogMelConfig().to_dict() and clar["logmel"] is None
    assert clar["norm"] == {"source": "none", "mean": 0.0, "std": 1.0}


def test_linear_eval_reads_the_export_and_gets_the_checkpoints_embeddings(runs, tmp_path):
    out = tmp_path / "msn.pt"
    portable.export(str(runs["msn"]), str(out))
    rows = [evaluation.run(str(path), str(runs["cache"]), evaluation.config([f"eval.embed_dir={tmp_path / emb}",
                                                                               "probe.epochs=3"]),
                           results=str(tmp_path / "r.csv"))
            for path, emb in ((runs["msn"], "a"), (out, "b"))]
    a, b = (np.load(next((tmp_path / emb).glob("*.npy"))) for emb in ("a", "b"))
    assert a.shape == (24, 16) and np.array_equal(a, b)
    assert rows[0]["fold_acc"] == rows[1]["fold_acc"] and rows[0]["model"] == rows[1]["model"] == "demo_msn"
    assert rows[1]["ckpt_sha256"] == portable.file_sha256(out)


def test_precomputed_msn_stores_its_stats_and_the_front_end_follows_the_cache(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    params = {"logmel": {**LogMelConfig().to_dict(), "mel_scale": "htk"}}
    (cache / "preprocess.json").write_text(json.dumps({"params": params}))
    pretrain_msn.main(msn_tiny(cache, tmp_path / "run", "train.max_steps=1", "aug.norm=precomputed"))
    encoder, bundle = portable.load(tmp_path / "run" / "ckpt_last.pt")
    mean, std = data.logmel_stats(cache, data.read_manifest(cache))
    assert bundle["norm"] == {"source": "precomputed", "mean": mean, "std": std}
    assert bundle["logmel"]["mel_scale"] == "htk" and bundle["source"]["logmel_from"] == str(cache / "preprocess.json")
    model = hear_ssl.HearModel(encoder, bundle)
    wave = torch.rand(1, 8000) * 2 - 1
    htk = LogMel(LogMelConfig(mel_scale="htk"))(wave)
    torch.testing.assert_close(model.frontend(wave), ((htk - mean) / std)[:, None])


def test_export_and_hear_errors_name_the_file(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        portable.export(str(tmp_path / "nothing.pt"), str(tmp_path / "out.pt"))
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        hear_ssl.load_model(str(tmp_path / "nothing.pt"))
    old = torch.load(runs["byola"], weights_only=False)
    old["meta"] = {}  # a checkpoint from before the stats were stored
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt: aug.norm=precomputed but meta has no norm_stats"):
        portable.export(str(tmp_path / "old.pt"), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(ValueError, match=r"must be \[n_sounds, n_samples\]"):
        hear_ssl.get_scene_embeddings(torch.zeros(16000), hear_ssl.load_model(str(runs["clar1d"])))


def test_random_vit_b_32_windows_are_224_images():
    """ViT-B/32 (MSN's seed encoder): each 50 ms window is one crop_frames chunk resized to image_size."""
    cfg = {"model": model_cfg({"arch": "vit_b_32", "image_size": 64, "crop_frames": 32})}
    torch.manual_seed(3)
    encoder = models.build_encoder(cfg).eval()
    bundle = {"config": cfg, "logmel": LogMelConfig().to_dict(), "norm": {"source": "none", "mean": 0.0, "std": 1.0}}
    model = hear_ssl.HearModel(encoder, bundle)
    audio = torch.rand(1, 5000) * 2 - 1  # 32 log-mel frames: timestamps 0..300 ms
    emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
    assert emb.shape == (1, 7, 768) and ts[0].tolist() == [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
    x = LogMel()(audio)[:, None]
    window = F.pad(x, (16, 16), value=LOG_SILENCE)[..., 5 * 3:5 * 3 + 32]  # 150 ms = frame 15: frames [-1, 31)
    torch.testing.assert_close(emb[:, 3], encoder.embed(window), atol=1e-4, rtol=1e-4)


# ============================================================================ linear_eval.py --ckpt hear:MODULE


@pytest.mark.filterwarnings("ignore:Pass sr=44100:FutureWarning")  # hearbaseline.naive calls librosa 0.9 so
def test_linear_eval_probes_a_pypi_hear_module_and_tables_show_it(tmp_path):
    naive = pytest.importorskip("hearbaseline.naive", reason="make setup installs hearbaseline (requirements-hear.txt)")
    import torchaudio

    cache = write_tiny_cache(tmp_path / "cache")
    rng = torch.get_rng_state()
    encoder, info = evaluation.load_encoder("hear:hearbaseline")
    assert torch.equal(torch.get_rng_state(), rng)  # its load_model seeds torch; the probe's seeds stay ours
    assert info["model"] == "hear:hearbaseline" and info["config"] == "hearbaseline 2021.1.1"
    assert encoder.embed_dim == 4096 and encoder.sample_rate == 44100
    row = evaluation.run("hear:hearbaseline", str(cache), evaluation.config([f"eval.embed_dir={tmp_path / 'emb'}",
                                                                             "probe.epochs=20"]),
                         results=str(tmp_path / "r.csv"))
    X = np.load(next((tmp_path / "emb").glob("*hear_hearbaseline*.npy")))
    # by hand: every cached 1 s wave resampled 16 -> 44.1 kHz, through hearbaseline.naive's own functions
    df = data.read_manifest(cache)
    waves = torch.stack([torch.from_numpy(np.load(cache / p)) for p in df["wave"]])
    model = naive.load_model()
    expected = naive.get_scene_embeddings(torchaudio.transforms.Resample(16000, 44100)(waves), model)
    assert X.shape == (24, 4096) and np.allclose(X, expected.numpy(), rtol=1e-5, atol=1e-4)
    assert row["model"] == "hear:hearbaseline" and row["ckpt_sha256"].startswith("hear-")
    assert row["folds"] == "test" and 0 <= float(row["mean"]) <= 100
    saved = pd.read_csv(tmp_path / "r.csv")
    assert saved["model"].tolist() == ["hear:hearbaseline"]
    page = tables.write_page(tmp_path / "r.csv", ROOT / "results" / "reference.csv", studies=tmp_path,
                             runs=tmp_path / "none", out=tmp_path / "t.md")
    line = next(s for s in page.read_text().splitlines() if s.startswith("| hear:hearbaseline |"))
    assert line.split(" | ")[1:3] == ["-", "-"] and row["mean"] in line  # long / pool do not apply


def test_hear_spec_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="cannot import HEAR module 'no_such_hear_module'"):
        evaluation.load_encoder("hear:no_such_hear_module")
    with pytest.raises(ValueError, match="hear:json: json is not a HEAR module"):
        evaluation.load_encoder("hear:json")
    with pytest.raises(FileNotFoundError, match="missing.pt: weights file of hear:hear_ssl"):
        evaluation.load_encoder(f"hear:hear_ssl:{tmp_path / 'missing.pt'}")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"hear_ssl.load_model failed \(ValueError: .*junk.pt: not a readable"):
        evaluation.load_encoder(f"hear:hear_ssl:{tmp_path / 'junk.pt'}")


def test_our_hear_module_through_the_hear_path_equals_its_scene_embeddings(runs, tmp_path):
    """hear:hear_ssl:ENCODER runs the same probe path as a PyPI module; its embeddings are hear_ssl's."""
    encoder, info = evaluation.load_encoder(f"hear:hear_ssl:{runs['clar1d']}")
    assert info["model"] == "hear:hear_ssl:ckpt_last.pt" and encoder.sample_rate == 16000
    wave = torch.rand(2, 16000) * 2 - 1
    model = hear_ssl.load_model(str(runs["clar1d"]))
    torch.testing.assert_close(encoder.embed(wave), hear_ssl.get_scene_embeddings(wave, model))


@pytest.mark.parametrize("name", ["msn", "byola", "clar1d", "clar2d"])
def test_hear_short_audio_is_padded_to_one_frame_and_non_finite_audio_is_refused(runs, name):
    """Issue 16: 0 or 10 samples give embeddings and timestamps of the documented shapes (one timestamp, at the
    encoder's first position), equal to those of the same sound zero-padded to one frame; NaN or inf audio is a
    ValueError that names the problem and the sound, never NaN embeddings."""
    model = hear_ssl.load_model(str(runs[name]))
    first = 15.0 if name == "byola" else 0.0
    torch.manual_seed(0)
    for n in (0, 10):
        audio = torch.rand(2, n) * 2 - 1
        scene = hear_ssl.get_scene_embeddings(audio, model)
        emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
        size = model.scene_embedding_size
        assert scene.shape == (2, size) and emb.shape == (2, 1, size) and ts.shape == (2, 1)
        assert torch.isfinite(scene).all() and torch.isfinite(emb).all() and ts.tolist() == [[first], [first]]
        one_frame = F.pad(audio, (0, hear_ssl.MIN_SAMPLES - n))
        torch.testing.assert_close(scene, hear_ssl.get_scene_embeddings(one_frame, model))
        torch.testing.assert_close(emb, hear_ssl.get_timestamp_embeddings(one_frame, model)[0][:, :1])
    for bad in (float("nan"), float("inf"), -float("inf")):
        audio = torch.zeros(3, 16000)
        audio[1, 100] = bad
        for get in (hear_ssl.get_scene_embeddings, hear_ssl.get_timestamp_embeddings):
            with pytest.raises(ValueError, match=r"audio has NaN or inf samples in 1 of 3 sounds \(index 1\)"):
                get(audio, model)
