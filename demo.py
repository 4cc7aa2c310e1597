"""The whole chain on the built-in synthetic data set: `make demo` (a few CPU minutes) and the small-compute track.

    python demo.py                    # make demo: tiny recipes, 200 clips x 2 s -> results/demo.md
    python demo.py --track small      # config/small_*.yaml, about 10 CPU minutes each, 400 x 5 s -> results/small.md

Each step is an ordinary command of this package, printed before it runs, so the demo doubles as a worked
example of the README. Every method is trained by the same core on the same cache, with the kNN monitor on
that cache's folds, then evaluated with the same probe as its random-init twin and as the hand-crafted features
of `synthetic.py --check`; the run ends with one comparison table.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import methods

# The probe sees ~150-300 training clips, i.e. one or two Adam steps per epoch at EVAR's batch min(200, N): at
# EVAR's lr 3e-4 it has not converged after 200 epochs, so both tracks raise the probe's lr (and say so).
PROBE_LR = "1e-2"
# track: the synthetic set's size and which recipes of each registry entry (methods.Method.demo / .small) it trains
TRACKS = {"demo": "small", "small": "default"}


def recipes(track: str) -> list[tuple[str, str, str, list[str]]]:
    """(label, script, config, overrides) of every recipe of the track, in registry order."""
    return [(r.label, m.script, r.config, list(r.overrides))
            for m in methods.METHODS.values() for r in getattr(m, track)]


NOTE = """
Settings (not the paper protocols): built-in synthetic set ({clips}, ESC-50 layout, 5-fold CV), recipes
{recipes}, all trained by the same core (trainer.py) for a few CPU minutes each. Linear probe: the EVAR probe
with `probe.lr=1e-2` instead of EVAR's 3e-4 (one or two Adam steps per epoch on this small set). Every number
above was measured by this run: the `-random` rows are the same encoders with random weights (the honest
baseline), the `handcrafted:` rows the same probe on hand-crafted features of the same clips
(`synthetic.py --check`: mean log-mel per band, and time-aware statistics); chance is 10 %. Learning curves:
the kNN monitor (trainer.py `train.monitor`, DINO's weighted kNN, k 20, T 0.07) on folds 1-4 against fold 5 of
the same cache, from the random init (epoch 0) on.
"""


def steps(track: str, published: list[str] = ()) -> list[list[str]]:
    size = TRACKS[track]
    cache, results = f"cache/{track}_{size}", f"results/{track}.csv"
    evals, train, twins = [], [], set()
    for ckpt in published:  # released weights (linear_eval --ckpt, e.g. byola:PATH), evaluated with the same probe
        evals.append(["linear_eval.py", "--ckpt", ckpt, "--task", cache, "--results", results, f"probe.lr={PROBE_LR}"])
    for name, script, config, overrides in recipes(track):
        run = f"runs/{track}/{name.split('_', 1)[1]}"
        train.append([script, "--config", config, *overrides, f"train.out_dir={run}", f"data.cache={cache}",
                      f"train.monitor.cache={cache}", "--overwrite"])  # every number is measured in this run
        evaluated = [(f"{run}/ckpt_last.pt", name)]
        if config not in twins:
            evaluated.append((f"random:{config}", f"{name}-random"))
        twins.add(config)  # one random twin per config (two recipes of one config share their encoder's twin)
        for ckpt, label in evaluated:
            evals.append(["linear_eval.py", "--ckpt", ckpt, "--task", cache, "--results", results, "--name", label,
                          f"probe.lr={PROBE_LR}"])
    return [
        ["preprocess.py", "--dataset", "synthetic", "--size", size, "--waveform", "--pack", "--out", cache],
        *train,
        *evals,
        ["synthetic.py", "--root", f"data/synthetic-{size}", "--size", size, "--check", "--probe-lr", PROBE_LR,
         "--results", results, "--task", Path(cache).name],
        ["results/make_tables.py", "--results", results, "--runs", f"runs/{track}", "--studies", "runs/none",
         "--out", f"results/{track}.md"],
    ]


def summary(results_csv: str, track: str) -> str:
    """One table: each recipe's probe accuracy against its random twin and the two hand-crafted probes, with the
    track's goals (printed, not asserted): >= 10 points above the twin and the mean-log-mel probe."""
    df = pd.read_csv(results_csv, dtype=str, keep_default_na=False).drop_duplicates("model", keep="last")
    acc = {r.model: float(r.mean) for r in df.itertuples()}
    ci = {r.model: r.ci95 for r in df.itertuples()}
    mean_logmel, time_aware = acc.get("handcrafted:mean_logmel"), acc.get("handcrafted:time_aware")
    lines = ["| recipe | probe % | random twin % | vs twin | vs mean log-mel | vs time-aware |",
             "|---|---|---|---|---|---|"]
    for name, *_ in recipes(track):
        twin = acc.get(f"{name}-random", acc.get(f"{name.split('-')[0]}-random"))
        mine = acc.get(name)
        if mine is None:
            continue
        diff = lambda ref, mine=mine: f"{mine - ref:+.1f}" if ref is not None else "-"
        lines.append(f"| {name} | {mine:.1f} ± {ci[name] or '-'} | {twin if twin is not None else '-'} "
                     f"| {diff(twin)} | {diff(mean_logmel)} | {diff(time_aware)} |")
    lines.append(f"\nhand-crafted probes: mean log-mel {mean_logmel} %, time-aware {time_aware} % (chance 10 %)")
    named = {name for name, *_ in recipes(track)}
    for name in acc:  # --published: weights trained elsewhere (not here), no twin row of their own
        if name not in named and not name.endswith("-random") and not name.startswith("handcrafted:"):
            lines.append(f"\n{name}: released weights (`--published`), not trained here, through the same probe: "
                         f"{acc[name]:.1f} ± {ci[name] or '-'} %")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--track", default="demo", choices=sorted(TRACKS))
    parser.add_argument("--published", action="append", default=[], metavar="CKPT",
                        help="released weights to probe beside the recipes, as linear_eval.py --ckpt takes them "
                             "(a prefix:PATH form or an encoder file; see linear_eval.py --help); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="print the commands the track runs and exit")
    args = parser.parse_args()
    if args.dry_run:
        print("\n".join(f"python {shlex.join(step)}" for step in steps(args.track, args.published)))
        return
    start = time.time()
    results, page = f"results/{args.track}.csv", Path(f"results/{args.track}.md")
    Path(results).unlink(missing_ok=True)  # every number in the table is measured in this run
    for step in steps(args.track, args.published):
        command = [sys.executable, *step]
        print(f"\n$ python {shlex.join(step)}", flush=True)
        t0 = time.time()
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"{args.track} step failed: python {shlex.join(step)}")
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    size = TRACKS[args.track]
    table = summary(results, args.track)
    note = NOTE.format(clips="200 clips of 2 s" if size == "small" else "400 clips of 5 s",
                       recipes=", ".join(f"{c} {' '.join(o)}".strip() for _, _, c, o in recipes(args.track)))
    with open(page, "a") as f:
        f.write(f"\n## Comparison\n\n{table}\n{note}")
    print("\n" + page.read_text())
    print(f"{args.track} finished in {time.time() - start:.0f} s; table: {page}")


if __name__ == "__main__":
    main()
