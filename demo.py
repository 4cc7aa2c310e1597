"""The whole chain on the built-in synthetic data set, as `make demo` runs it (a few CPU minutes).

    python demo.py [--size small|default]

Each step is an ordinary command of this package, printed before it runs, so the demo doubles as a
worked example of the README.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = "results/demo.csv"
# The demo's probe sees ~150 training clips, i.e. one Adam step per epoch at EVAR's batch min(200, N): at
# EVAR's lr 3e-4 it has not converged after 200 epochs, so the demo raises the probe's lr (and says so).
PROBE_LR = "1e-2"
PROBE = [f"probe.lr={PROBE_LR}"]
# (name, script, config, overrides): every method trained by the same core on the same cache, with the kNN
# monitor (about ten points per run) on that cache's folds
METHODS = [
    ("demo_msn", "pretrain_msn.py", "config/demo_msn.yaml", ["train.epochs=300", "train.monitor.every=30"]),
    ("demo_clar", "pretrain_clar.py", "config/demo_clar.yaml", ["train.epochs=30", "train.monitor.every=3"]),
    ("demo_byola", "pretrain_byola.py", "config/demo_byola.yaml", ["train.epochs=60", "train.monitor.every=6"]),
]
NOTE = """
Demo settings (not the paper protocols): built-in synthetic set (10 classes, 200 clips of 2 s, ESC-50
layout, 5-fold CV), tiny models trained for a few CPU minutes by the same training core (trainer.py):
config/demo_msn.yaml with train.epochs=300, config/demo_clar.yaml with train.epochs=30, config/demo_byola.yaml
with train.epochs=60. Linear probe: the EVAR probe with `probe.lr=1e-2` instead of EVAR's 3e-4 (one Adam step
per epoch on this small set). Every number above was measured by this `make demo` run: the `-random` rows are
the same encoders with random weights (the honest baseline), the `handcrafted:` rows the same probe on
hand-crafted features of the same clips (`synthetic.py --check`: mean log-mel per band, and time-aware
statistics); chance is 10 %. Learning curves: the kNN monitor (trainer.py `train.monitor`, DINO's weighted kNN,
k 20, T 0.07) on folds 1-4 against fold 5 of the same cache, from the random init (epoch 0) on.
"""


def steps(size: str) -> list[list[str]]:
    cache = f"cache/demo_{size}"  # its own cache: --waveform and --pack, whatever cache/synth_* holds
    evals, train = [], []
    for name, script, config, overrides in METHODS:
        method = name.split("_", 1)[1]
        train.append([script, "--config", config, *overrides, f"train.out_dir=runs/demo/{method}",
                      f"data.cache={cache}", f"train.monitor.cache={cache}"])
        for ckpt, label in ((f"runs/demo/{method}/ckpt_last.pt", name), (f"random:{config}", f"{name}-random")):
            evals.append(["linear_eval.py", "--ckpt", ckpt, "--task", cache, "--results", RESULTS, "--name", label,
                          *PROBE])
    return [
        ["preprocess.py", "--dataset", "synthetic", "--size", size, "--waveform", "--pack", "--out", cache],
        *train,
        *evals,
        ["synthetic.py", "--root", f"data/synthetic-{size}", "--size", size, "--check", "--probe-lr", PROBE_LR,
         "--results", RESULTS, "--task", Path(cache).name],
        ["results/make_tables.py", "--results", RESULTS, "--runs", "runs/demo", "--clar", "runs/none",
         "--out", "results/demo.md"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=("small", "default"))
    args = parser.parse_args()
    start = time.time()
    Path(RESULTS).unlink(missing_ok=True)  # every number in the demo table is measured in this run
    for step in steps(args.size):
        command = [sys.executable, *step]
        print(f"\n$ python {shlex.join(step)}", flush=True)
        t0 = time.time()
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"demo step failed: python {shlex.join(step)}")
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    with open("results/demo.md", "a") as f:
        f.write(NOTE)
    print("\n" + Path("results/demo.md").read_text())
    print(f"demo finished in {time.time() - start:.0f} s; table: results/demo.md")


if __name__ == "__main__":
    main()
