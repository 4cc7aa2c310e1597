"""audio_ssl_repro.py, the one-file encoder module that `pip install .` installs (issue 20): it imports nothing from
the repository, its embeddings equal the training code's (models.py, which builds on its classes) on every method's
checkpoint and every architecture, it works as an installed wheel and as a copied file with the repository off the
path, and its load_model options behave as documented in docs/hear.md."""
from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import audio_ssl_repro
import hear_ssl
import models
import portable
from audio import LogMel, LogMelConfig
from tests.test_hear import runs  # noqa: F401  (the fixture: one tiny checkpoint per method / encoder family)

ROOT = Path(__file__).resolve().parents[1]
METHOD_RUNS = ("msn", "byola", "clar1d", "clar2d")  # vit_audio, audiontt2022, resnet18_1d, resnet18_2d
TOL = 1e-5


def clip(seed: int, seconds: float = 2.3, n: int = 2) -> torch.Tensor:
    return torch.rand(n, int(seconds * 16000), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def training_side_input(bundle: dict, wave: torch.Tensor) -> torch.Tensor:
    """The encoder input computed with the repository's audio.LogMel and the file's stored normalisation."""
    if bundle["logmel"] is None:
        return wave
    mean, std = bundle["norm"]["mean"], bundle["norm"]["std"]
    return ((LogMel(LogMelConfig(**bundle["logmel"]))(wave) - mean) / std)[:, None]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


def test_the_file_imports_only_the_standard_library_torch_torchaudio_and_numpy():
    tree = ast.parse((ROOT / "audio_ssl_repro.py").read_text())
    nodes = list(ast.walk(tree))
    names = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert names - set(sys.stdlib_module_names) == {"torch", "torchaudio", "numpy"}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]  # no relative import


def test_every_architecture_of_the_training_code_is_in_the_file():
    """The file dispatches on model.arch; the training code's build_encoder must know no architecture it lacks."""
    for arch in ("vit_audio", "vit_b_32", "resnet18_2d", "resnet18_1d", "audiontt2022"):
        assert arch in audio_ssl_repro.ARCHS
    with pytest.raises(ValueError, match="unknown encoder architecture 'm2d_vit'; this file knows vit_audio"):
        audio_ssl_repro.build_encoder({"arch": "m2d_vit"})
    with pytest.raises(ValueError, match="model config of audiontt2020 lacks n_mels, base"):  # no defaults here
        audio_ssl_repro.build_encoder({"arch": "audiontt2020", "dim": 64})


@pytest.mark.parametrize("name", METHOD_RUNS)
def test_embeddings_equal_the_training_code_on_each_methods_checkpoint(runs, name, tmp_path):  # noqa: F811
    out = tmp_path / f"{name}.pt"
    bundle = portable.export(str(runs[name]), str(out))
    reference = models.load_encoder_file(runs[name])[0]   # the training code's network and weights
    encoder, loaded = audio_ssl_repro.load(out)           # the one file's
    assert type(encoder).__module__ == "audio_ssl_repro" and loaded["config"] == bundle["config"]
    wave = clip(0)
    x = training_side_input(bundle, wave)
    assert max_diff(encoder.embed(x), reference.embed(x, "chunk", "cls")) <= TOL
    if hasattr(reference, "frames"):
        assert max_diff(encoder.frames(x), reference.frames(x)) <= TOL
    model = audio_ssl_repro.load_model(str(out))
    assert max_diff(model.frontend(wave), x) <= TOL   # the file's front end = the repository's log-mel + norm
    assert max_diff(audio_ssl_repro.get_scene_embeddings(wave, model), reference.embed(x, "chunk", "cls")) <= TOL


def randomised(encoder: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights AND batch-norm statistics, so that a key or buffer mix-up changes the output."""
    torch.manual_seed(seed)
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return encoder.eval()


@pytest.mark.parametrize("arch,model_cfg", [
    ("vit_b_32", {"image_size": 64, "crop_frames": 32}),
    ("vit_audio", {"n_mels": 64, "crop_frames": 32, "patch": [64, 2], "width": 32, "depth": 2, "heads": 2,
                   "mlp_ratio": 4.0, "pos_embed": "learned", "readout": "token"}),
    ("audiontt2020", {"n_mels": 64, "dim": 64, "base": 8, "dropout": 0.3}),
])
def test_random_encoders_of_the_other_architectures_embed_as_the_training_code(arch, model_cfg, tmp_path):
    cfg = {"model": {"arch": arch, **model_cfg}}
    try:
        reference = randomised(models.build_encoder(cfg), 0)
    except ValueError as err:  # the training code may not build every architecture of the file (merge order)
        pytest.skip(f"models.build_encoder: {err}")
    norm = {"source": "precomputed", "mean": -6.5, "std": 4.25}
    bundle = {"format": audio_ssl_repro.FORMAT, "kind": "test", "config": cfg, "encoder": reference.state_dict(),
              "logmel": LogMelConfig().to_dict(), "norm": norm, "source": {}}
    portable.save(bundle, tmp_path / "enc.pt")
    encoder, _ = audio_ssl_repro.load(tmp_path / "enc.pt")
    x = training_side_input(bundle, clip(1, 1.5))
    assert max_diff(encoder.embed(x), reference.embed(x)) <= TOL
    if arch.startswith("vit"):
        for long in ("resize", "pad"):
            assert max_diff(encoder.embed(x, long, "mean"), reference.embed(x, long, "mean")) <= TOL


SUBPROCESS = """
import json, sys
import numpy as np, torch
import audio_ssl_repro
try:
    import models  # the repository's training code must not be importable here
    sys.exit("the repository is on the path: " + models.__file__)
except ImportError:
    pass
out = {"file": audio_ssl_repro.__file__}
audio = torch.from_numpy(np.load("audio.npy"))
for name in sys.argv[1:]:
    model = audio_ssl_repro.load_model(name + ".pt", **json.loads('{"tag": "x"}'))
    emb, ts = audio_ssl_repro.get_timestamp_embeddings(audio, model)
    np.save(name + ".scene.npy", audio_ssl_repro.get_scene_embeddings(audio, model).numpy())
    np.save(name + ".frames.npy", emb.numpy())
    np.save(name + ".ts.npy", ts.numpy())
print(json.dumps(out))
"""


def run_outside(python: str, folder: Path, names: list[str]) -> dict:
    """Run SUBPROCESS in `folder` with no PYTHONPATH; returns its printed dict."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([python, "-c", SUBPROCESS, *names], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-1000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_outputs(folder: Path, runs, names: list[str]) -> None:  # noqa: F811
    """The subprocess's embeddings equal the repository's hear_ssl on the training checkpoint."""
    audio = torch.from_numpy(np.load(folder / "audio.npy"))
    for name in names:
        model = hear_ssl.load_model(str(runs[name]))
        emb, ts = hear_ssl.get_timestamp_embeddings(audio, model)
        assert max_diff(torch.from_numpy(np.load(folder / f"{name}.scene.npy")),
                        hear_ssl.get_scene_embeddings(audio, model)) <= TOL
        assert max_diff(torch.from_numpy(np.load(folder / f"{name}.frames.npy")), emb) <= TOL
        assert torch.equal(torch.from_numpy(np.load(folder / f"{name}.ts.npy")), ts)


def prepare(folder: Path, runs) -> list[str]:  # noqa: F811
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "audio.npy", clip(2, 1.3).numpy())
    for name in METHOD_RUNS:
        portable.export(str(runs[name]), str(folder / f"{name}.pt"))
    return list(METHOD_RUNS)


def test_a_copied_file_works_with_the_repository_off_the_path(runs, tmp_path):  # noqa: F811
    folder = tmp_path / "elsewhere"
    names = prepare(folder, runs)
    (folder / "audio_ssl_repro.py").write_bytes((ROOT / "audio_ssl_repro.py").read_bytes())
    env_python = make_venv(tmp_path / "venv")
    assert run_outside(env_python, folder, names)["file"] == str(folder / "audio_ssl_repro.py")
    check_outputs(folder, runs, names)


def make_venv(path: Path) -> str:
    """A bare venv (no pip) that sees this interpreter's packages (torch...) through a .pth file, not the repo."""
    venv.create(path, with_pip=False)
    python = str(path / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    Path(purelib, "_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_pip_wheel_holds_one_module_and_installs_into_a_venv_that_imports_it(runs, tmp_path):  # noqa: F811
    """`pip wheel .` (the build backend comes from the package index) -> a wheel with audio_ssl_repro.py alone and
    torch, torchaudio, numpy as its only requirements; pip-installed into a venv, it imports and embeds from a
    folder where the repository is not on the path."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("audio_ssl_repro-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if not n.startswith("audio_ssl_repro-")] == ["audio_ssl_repro.py"]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    requires = sorted(line.split(": ")[1].split(">")[0].split("=")[0].strip() for line in meta.splitlines()
                      if line.startswith("Requires-Dist:"))
    assert requires == ["numpy", "torch", "torchaudio"]
    python = make_venv(tmp_path / "venv")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q",
                           str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "elsewhere"
    names = prepare(folder, runs)
    found = run_outside(python, folder, names)["file"]
    assert found.startswith(str(tmp_path / "venv")) and "site-packages" in found
    check_outputs(folder, runs, names)


# ============================================================================ load_model options (docs/hear.md)


def test_an_unknown_option_is_one_line(runs, tmp_path):  # noqa: F811
    portable.export(str(runs["msn"]), str(tmp_path / "msn.pt"))
    with pytest.raises(ValueError) as err:
        audio_ssl_repro.load_model(str(tmp_path / "msn.pt"), layer=3, pooling="mean")
    assert str(err.value) == ("load_model: unknown option(s) layer, pooling; known: pool, long, hop_ms, tag")
    with pytest.raises(ValueError, match="not an encoder file of audio-ssl-repro/encoder-v1.*export.py"):
        audio_ssl_repro.load_model(str(runs["msn"]))  # a training checkpoint: export it first
    with pytest.raises(FileNotFoundError, match="nothing.pt: encoder file not found"):
        audio_ssl_repro.load_model(str(tmp_path / "nothing.pt"))


def test_options_change_what_they_say_and_tag_changes_nothing(runs, tmp_path):  # noqa: F811
    for name in ("msn", "byola", "clar1d"):
        portable.export(str(runs[name]), str(tmp_path / f"{name}.pt"))
    wave = clip(3, 1.1)
    path = str(tmp_path / "msn.pt")
    base = audio_ssl_repro.load_model(path)
    tagged = audio_ssl_repro.load_model(path, **json.loads('{"tag": "run-2"}'))  # as heareval passes them
    scene = audio_ssl_repro.get_scene_embeddings
    assert torch.equal(scene(wave, base), scene(wave, tagged))
    x = base.frontend(wave)
    mean = audio_ssl_repro.load_model(path, pool="mean", long="resize")
    assert max_diff(scene(wave, mean), base.encoder.embed(x, "resize", "mean")) <= TOL
    emb, ts = audio_ssl_repro.get_timestamp_embeddings(wave, audio_ssl_repro.load_model(path, hop_ms=10))
    count = 1100 // 10 + 1  # 0, 10, ... 1100 ms
    assert ts[0].tolist() == [10.0 * k for k in range(count)] and emb.shape == (2, count, base.scene_embedding_size)
    default_emb, default_ts = audio_ssl_repro.get_timestamp_embeddings(wave, base)
    assert torch.equal(ts[:, ::5], default_ts) and max_diff(emb[:, ::5], default_emb) <= TOL  # every 5th: 50 ms
    with pytest.raises(ValueError, match=r"hop_ms=15: a multiple of 10 ms in \(0, 50\]"):
        audio_ssl_repro.load_model(path, hop_ms=15)
    with pytest.raises(ValueError, match="hop_ms: AudioNTT2022 has its own frames, 40 ms apart"):
        audio_ssl_repro.load_model(str(tmp_path / "byola.pt"), hop_ms=20)
    with pytest.raises(ValueError, match="pool='mean': 'cls' \\(default\\), or 'mean' for a ViT encoder"):
        audio_ssl_repro.load_model(str(tmp_path / "clar1d.pt"), pool="mean")
    clar = audio_ssl_repro.load_model(str(tmp_path / "clar1d.pt"), hop_ms=25)
    assert math.isclose(audio_ssl_repro.get_timestamp_embeddings(wave, clar)[1][0, 1].item(), 25.0)
