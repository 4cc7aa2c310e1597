"""The real HEAR validator (hearvalidator 2021.0.6) on one checkpoint of every encoder family, as `make hear-check`
runs it (after building .venv-hear; see the Makefile).

    python hear_check.py [--validator .venv-hear/bin/hear-validator] [--device cpu|cuda] [--steps 6] [--no-vit-b32]

Steps, each an ordinary command of this package, printed before it runs:
1. the built-in synthetic set and its cache (cache/synth_small, with --waveform; reused when present);
2. short runs (train.max_steps) of config/demo_msn.yaml (audio ViT), demo_clar.yaml (2-D and 1-D ResNet18),
   demo_byola.yaml (AudioNTT2022) and config/msn.yaml (ViT-B/32, one step of 2 clips) into runs/hear_check/;
3. export.py of each -> runs/hear_check/<name>.encoder.pt;
4. `hear-validator audio_ssl_repro -m FILE` on each encoder file: the module installed in the validator's venv
   (`pip install .`, done by `make hear-check`), run from a temporary folder with no PYTHONPATH, so nothing of
   the repository is importable; then `hear-validator hear_ssl -m CKPT` (the repository's module, PYTHONPATH set)
   on the MSN training checkpoint itself.
It ends with one line per model and exits 1 unless every one printed "Looks good!".
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = Path("runs/hear_check")
CACHE = "cache/synth_small"
RUNS = {  # name -> (script, config, overrides)
    "msn_audio_vit": ("pretrain_msn.py", "config/demo_msn.yaml", []),
    "clar_2d": ("pretrain_clar.py", "config/demo_clar.yaml", ["encoder=2d", "train.final_probe=false"]),
    "clar_1d": ("pretrain_clar.py", "config/demo_clar.yaml", ["encoder=1d", "train.final_probe=false"]),
    "byola": ("pretrain_byola.py", "config/demo_byola.yaml", []),
    "msn_vit_b32": ("pretrain_msn.py", "config/msn.yaml", ["optim.batch_size=2", "data.num_workers=0"]),
}


def run(step: list[str], env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run one command (from the repository root unless `cwd`), echoing it; its output is captured and returned."""
    print(f"$ {shlex.join(step)}" + (f"   (in {cwd})" if cwd != ROOT else ""), flush=True)
    return subprocess.run(step, cwd=cwd, env=env, capture_output=True, text=True)


def must(step: list[str]) -> None:
    done = run([sys.executable, *step])
    if done.returncode != 0:
        sys.exit(f"hear_check.py: error: step failed: {shlex.join(step)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def outside_env() -> dict:
    """The environment with nothing of the repository importable: no PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}


def validate(validator: str, module: str, model_file: Path, device: str | None,
             folder: Path) -> tuple[bool, float, str]:
    """hear-validator MODULE -m model_file, run in `folder` -> (printed "Looks good!" and exited 0, seconds, last
    output line). audio_ssl_repro is the installed module (no PYTHONPATH); hear_ssl needs the repository."""
    env = outside_env() | ({"PYTHONPATH": str(ROOT)} if module == "hear_ssl" else {})
    start = time.time()
    done = run([str(ROOT / validator), module, "-m", str((ROOT / model_file).resolve()),
                *(["--device", device] if device else [])], env, cwd=folder)
    seconds = time.time() - start
    lines = (done.stdout.strip().splitlines() or [""]) if done.returncode == 0 else \
        (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])
    ok = done.returncode == 0 and "Looks good!" in done.stdout
    print(done.stdout.strip() if ok else f"{done.stdout[-3000:]}{done.stderr[-3000:]}", flush=True)
    return ok, seconds, lines[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--validator", default=".venv-hear/bin/hear-validator")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the validator's (cuda when present)")
    parser.add_argument("--steps", type=int, default=6, help="training steps of each demo run")
    parser.add_argument("--no-vit-b32", action="store_true", help="leave out the ViT-B/32 run (1.4 GB checkpoint)")
    args = parser.parse_args(argv)
    if not (ROOT / args.validator).is_file():
        sys.exit(f"hear_check.py: error: {args.validator} not found; run `make hear-check`, which installs it")
    python = ROOT / Path(args.validator).parent / "python"
    with tempfile.TemporaryDirectory() as folder:
        found = run([str(python), "-c", "import audio_ssl_repro; print(audio_ssl_repro.__file__)"], outside_env(),
                    cwd=Path(folder))
    if found.returncode != 0 or "site-packages" not in found.stdout:
        sys.exit(f"hear_check.py: error: audio_ssl_repro is not installed in {python.parent.parent} "
                 f"(`make hear-check` installs it with pip install .)\n{found.stderr[-1000:]}")
    print(f"installed module: {found.stdout.strip()}")
    must(["preprocess.py", "--dataset", "synthetic", "--size", "small", "--waveform", "--out", CACHE])
    files = []
    for name, (script, config, extra) in RUNS.items():
        if name == "msn_vit_b32" and args.no_vit_b32:
            continue
        steps = 1 if name == "msn_vit_b32" else args.steps
        run_dir = OUT / name
        shutil.rmtree(ROOT / run_dir, ignore_errors=True)  # a fresh run each time (trainer refuses a used folder)
        must([script, "--config", config, f"data.cache={CACHE}", f"train.out_dir={run_dir}",
              f"train.max_steps={steps}", *extra])
        must(["export.py", "--ckpt", str(run_dir / "ckpt_last.pt"), "--out", str(OUT / f"{name}.encoder.pt")])
        files.append((name, "audio_ssl_repro", OUT / f"{name}.encoder.pt"))
    files.append(("msn_audio_vit (training checkpoint)", "hear_ssl", OUT / "msn_audio_vit" / "ckpt_last.pt"))
    with tempfile.TemporaryDirectory() as folder:
        results = [(name, module, path, *validate(args.validator, module, path, args.device, Path(folder)))
                   for name, module, path in files]
    print("\nhear-validator, hearvalidator 2021.0.6:")
    for name, module, path, ok, seconds, last in results:
        print(f"  {module:16s} {name:38s} {path}  {'PASS' if ok else 'FAIL'}  {seconds:5.1f} s  {last}")
    failed = [name for name, _, _, ok, _, _ in results if not ok]
    summary = f"{len(results) - len(failed)} / {len(results)} printed 'Looks good!'"
    print(summary + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
