"""official.py: published BYOL-A encoders (v1 AudioNTT2020, v2 AudioNTT2022) read, exported and evaluated.

No NTT weights are shipped. Parity: `official_layout(...)` below makes a state dict in the published layout from a
fixed seed; the ORIGINAL byol_a/models.py (v1) and v2/byol_a2/models.py (nttcslab/byol-a @ 3e65c92) were run once,
offline, on that state dict and on `fixed_input()`, and only the resulting numbers are kept here (PARITY). The test
rebuilds the same weights, imports them through official.py and must match to 1e-5.
"""
from __future__ import annotations

import pytest
import torch

import evaluation
import models
import official
import portable
from tests.conftest import run_script

V1_CONV = [0, 4, 8]
V2_CONV = [0, 4]


def layout(version: int, d: int, n_mels: int = 64, base: int = 64, hidden: int = 2048) -> list[tuple[str, tuple]]:
    """(key, shape) of a published BYOL-A encoder state dict, in the files' order."""
    keys = []
    for i, block in enumerate(V1_CONV if version == 1 else V2_CONV):
        keys += [(f"features.{block}.weight", (base, 1 if i == 0 else base, 3, 3)), (f"features.{block}.bias", (base,))]
        keys += [(f"features.{block + 1}.{name}", (base,))
                 for name in ("weight", "bias", "running_mean", "running_var")]
        keys += [(f"features.{block + 1}.num_batches_tracked", ())]
    if version == 1:
        conv_dim = base * (n_mels // 8)
        keys += [("fc.0.weight", (d, conv_dim)), ("fc.0.bias", (d,)), ("fc.3.weight", (d, d)), ("fc.3.bias", (d,))]
    else:
        conv_dim = base * (n_mels // 4)
        keys += [("fc.0.weight", (hidden, conv_dim)), ("fc.0.bias", (hidden,)),
                 ("fc.3.weight", (d - conv_dim, hidden)), ("fc.3.bias", (d - conv_dim,))]
    return keys


def official_layout(version: int, d: int, seed: int = 17, **kw) -> dict[str, torch.Tensor]:
    """A state dict in the published layout with fixed pseudo-random values: weights N(0, 1/fan_in), biases
    N(0, 0.1^2), BN weight 1 + N(0, 0.1^2), running_mean N(0, 0.3^2), running_var 0.5 + U[0, 1), counters 0."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout(version, d, **kw):
        name = key.rsplit(".", 1)[1]
        if name == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.long)
        elif name == "running_var":
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif name == "running_mean":
            state[key] = 0.3 * torch.randn(shape, generator=g)
        elif len(shape) > 1:
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif name == "weight":  # BN scale
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def fixed_input(seed: int = 3) -> torch.Tensor:
    """Two normalised log-mels [2, 1, 64, 96] (BYOL-A's training shape)."""
    return torch.randn(2, 1, 64, 96, generator=torch.Generator().manual_seed(seed))


# The original forward (eval mode) on official_layout(...) and fixed_input(): out [2, d] summarised as
# (out.sum(1), out.abs().mean(), out[0, :6], out[1, -4:]); computed once offline with nttcslab/byol-a's own code.
PARITY = {
    "v1-d512": (
        [461.5593567, 450.2447205],
        0.8904337,
        [4.6412973, 2.9490879, 0.6580868, 1.8310955, 0.0, 0.2088611],
        [0.0, 0.0, 0.0671075, 0.0],
    ),
    "v1-d1024": (
        [926.666626, 905.1896973],
        0.894461,
        [0.4220527, 0.0, 1.2065732, 2.8632569, 1.7279513, 0.0],
        [4.2330937, 0.597427, 0.0, 2.6571102],
    ),
    "v1-d2048": (
        [1852.6890869, 1812.4486084],
        0.894809,
        [0.0, 0.3241864, 1.6822846, 0.0, 0.0, 3.8649173],
        [2.3564017, 0.0937999, 0.0, 0.0],
    ),
    "v2-d2048": (
        [3848.5290527, 3818.2058105],
        1.8717613,
        [3.9574895, 1.8158509, 2.1388052, 1.1535016, 0.8952143, 4.3027205],
        [0.2233417, 1.4820029, 0.0104867, 0.0],
    ),
}


def summary(out: torch.Tensor) -> list:
    return [out.sum(1).tolist(), out.abs().mean().item(), out[0, :6].tolist(), out[1, -4:].tolist()]


def write(tmp_path, state, name="AudioNTT2020-BYOLA-64x96d512.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("key,version,d", [("v1-d512", 1, 512), ("v1-d1024", 1, 1024), ("v1-d2048", 1, 2048),
                                           ("v2-d2048", 2, 2048)])
def test_imported_encoder_matches_the_original_forward(tmp_path, key, version, d):
    path = write(tmp_path, official_layout(version, d))
    weights, model = official.read_byola(path)
    assert (model["version"], model["dim"], model["n_mels"], model["prefix"]) == (version, d, 64, "")
    bundle = official.byola_bundle(path)
    encoder = models.build_encoder(bundle["config"])
    encoder.load_state_dict(bundle["encoder"])
    assert type(encoder) is (models.AudioNTT2020 if version == 1 else models.AudioNTT2022)
    out = encoder.eval().embed(fixed_input())
    assert out.shape == (2, d) and encoder.embed_dim == d
    sums, abs_mean, head, tail = PARITY[key]
    got = summary(out)
    torch.testing.assert_close(torch.tensor(got[0]), torch.tensor(sums), rtol=1e-5, atol=1e-5)
    assert got[1] == pytest.approx(abs_mean, rel=1e-5, abs=1e-5)
    torch.testing.assert_close(torch.tensor(got[2]), torch.tensor(head), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(got[3]), torch.tensor(tail), rtol=1e-5, atol=1e-5)


def test_training_checkpoint_prefixes_and_wrappers_give_the_online_encoder(tmp_path):
    online, target = official_layout(1, 512), official_layout(1, 512, seed=99)
    projector = {"learner.online_encoder.projector.net.0.weight": torch.zeros(4, 512)}
    learner = {**{f"learner.net.{k}": v for k, v in online.items()},
               **{f"learner.online_encoder.net.{k}": v for k, v in online.items()},
               **{f"learner.target_encoder.net.{k}": v for k, v in target.items()}, **projector}
    expected = official.byola_bundle(write(tmp_path, online))["encoder"]
    for i, state in enumerate([{"state_dict": learner}, {"model": {f"model.{k}": v for k, v in online.items()}},
                               {k: v for k, v in online.items() if "num_batches_tracked" not in k}]):
        bundle = official.byola_bundle(write(tmp_path, state, f"ckpt{i}.pth"))
        for k, v in expected.items():
            assert torch.equal(bundle["encoder"][k], v), (i, k)
    _, model = official.read_byola(write(tmp_path, {"state_dict": learner}, "learner.pth"))
    assert model["prefix"] == "learner.net."


def test_a_file_that_is_not_byola_is_a_one_line_error_listing_what_it_holds(tmp_path):
    vit = {"blocks.0.attn.qkv.weight": torch.zeros(3, 3), "cls_token": torch.zeros(1, 1, 8)}
    with pytest.raises(ValueError) as err:
        official.read_byola(write(tmp_path, vit, "vit.pth"))
    message = str(err.value)
    assert "vit.pth" in message and "blocks.0.attn.qkv.weight (3, 3)" in message and "\n" not in message
    bad_fc = {**official_layout(1, 512)}
    bad_fc["fc.3.weight"] = torch.zeros(7, 512)
    with pytest.raises(ValueError, match="neither v1"):
        official.read_byola(write(tmp_path, bad_fc, "odd.pth"))


def test_export_writes_an_encoder_file_every_consumer_reads(tiny_cache, tmp_path):
    import hear_ssl
    import trainer

    src = write(tmp_path, official_layout(1, 512))
    out = tmp_path / "enc.pt"
    bundle = portable.export(f"byola:{src}", str(out))
    saved = torch.load(out, weights_only=True)  # plain tensors and values only
    assert saved["norm"]["source"] == "downstream" and "downstream" in saved["norm"]["note"]
    assert saved["kind"] == "byola" and saved["config"]["model"]["arch"] == "audiontt2020"
    encoder, loaded = portable.load(out)
    direct = models.build_encoder(bundle["config"]).eval()
    direct.load_state_dict(official_layout(1, 512))
    assert loaded["source"]["sha256"] == portable.file_sha256(src)
    torch.testing.assert_close(encoder.embed(fixed_input()), direct.embed(fixed_input()), rtol=0, atol=0)
    assert hear_ssl.get_scene_embeddings(torch.rand(2, 16000) - 0.5, hear_ssl.load_model(str(out))).shape == (2, 512)
    given = portable.export(f"byola:{src}", str(tmp_path / "given.pt"), norm_stats=(-5.5, 5.0))
    assert (given["norm"]["source"], given["norm"]["mean"], given["norm"]["std"]) == ("given", -5.5, 5.0)
    # linear_eval: the exported file and byola:PATH directly give the same embeddings and the same score
    rows = [evaluation.run(ckpt, str(tiny_cache), evaluation.config([f"eval.embed_dir={tmp_path / emb}",
                                                                      "probe.epochs=3"]),
                           results=str(tmp_path / "r.csv"))
            for ckpt, emb in ((str(out), "a"), (f"byola:{src}", "b"))]
    assert rows[0]["fold_acc"] == rows[1]["fold_acc"]
    assert rows[0]["model"] == rows[1]["model"] == "byola-official-v1-d512"
    # the kNN monitor scores it like a training encoder
    monitor = trainer.Monitor({"cache": str(tiny_cache), "k": 5, "temperature": 0.07, "batch_size": 8},
                              encoder.input_kind, torch.device("cpu"))
    assert 0.0 <= monitor(encoder) <= 1.0


def test_demo_small_track_evaluates_a_given_weight_file_with_the_same_probe():
    plain, given = (run_script("demo.py", "--track", "small", "--dry-run", *published)
                    for published in ((), ("--published", "byola:w/AudioNTT2020-BYOLA-64x96d512.pth")))
    assert plain.returncode == given.returncode == 0, plain.stderr + given.stderr
    plain, given = plain.stdout.splitlines(), given.stdout.splitlines()
    probe_lr = {line.split()[-1] for line in plain if line.startswith("python linear_eval.py")}
    assert len(probe_lr) == 1  # every recipe, twin and published file: the same probe
    extra = [line for line in given if line not in plain]
    assert extra == ["python linear_eval.py --ckpt byola:w/AudioNTT2020-BYOLA-64x96d512.pth --task "
                     f"cache/small_default --results results/small.csv {probe_lr.pop()}"]
