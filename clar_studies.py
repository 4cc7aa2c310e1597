"""The CLAR paper's three studies (Al-Tahan and Mohsenzadeh 2021, Sec. 6-8), one command each.

    python clar_studies.py augpairs --config config/clar.yaml [--augs fade,time_mask,...] [--encoders 1d,2d]
    python clar_studies.py representation --config config/clar.yaml [--caches cache/speechcommands,cache/esc50]
    python clar_studies.py labels --config config/clar.yaml [--modes ...] [--fractions 1.0,0.2,0.1,0.01]
    python clar_studies.py augpairs --config config/demo_clar.yaml --augs fade,time_mask train.epochs=1

augpairs        every ordered pair (first, second) of augmentations, self-supervised, each pair always applied
                (p = 1; the diagonal is one augmentation alone), for each encoder: a matrix with row means and
                the overall mean +- std (the paper: 1-D 68.6 +- 0.82, 2-D 67.0 +- 1.36 on SC-10).
representation  1-D (raw waveform) vs 2-D (time-frequency) encoders, each with its best augmentations, on each
                data set (cache): self-supervised pretraining, then linear evaluation.
labels          supervised vs self-supervised vs CLAR at each label fraction; also collects the online-head test
                accuracy per evaluation epoch (the paper's learning-speed curves).

Every run is `python pretrain_clar.py` with the given config and `key=value` overrides, in --runs/<study>/<name>;
a run whose results.json exists is reused (--force reruns it). The score is the run's frozen-encoder linear probe
(full labels) on the test split. Tables: results/clar_<study>.csv (one row per run, with its folder) and .md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import methods
from augment_wave import WAVE_AUGMENTATIONS
from data import read_manifest
from files import atomic_write_text

PRETRAIN = Path(__file__).resolve().parent / "pretrain_clar.py"
BEST_AUGS = {"1d": "fade,time_stretch,pitch_shift", "2d": "fade,time_mask"}  # paper Sec. 6


def run(args, name: str, overrides: list[str]) -> dict:
    """One pretraining run (or its saved results), returned with its folder."""
    out_dir = Path(args.runs) / args.study / name
    done = out_dir / "results.json"
    if done.is_file() and not args.force:
        print(f"[{args.study}] {name}: reusing {done}")
        return json.loads(done.read_text())
    print(f"[{args.study}] {name}", flush=True)
    interrupted = any((out_dir / ckpt).is_file() for ckpt in ("ckpt_last.pt", "ckpt_prev.pt"))
    again = "--overwrite" if args.force else "--resume" if interrupted else None
    command = [sys.executable, str(PRETRAIN), "--config", args.config, *args.overrides, *overrides,
               f"train.out_dir={out_dir}", *([again] if again else [])]  # an interrupted run continues
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"clar_studies.py: run {name} failed: {' '.join(command)}")
    return json.loads(done.read_text())


def markdown_table(frame: pd.DataFrame, digits: int = 1) -> str:
    """A DataFrame (index = first column) as a GitHub markdown table, numbers rounded to `digits`."""
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)
    header = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i)] + [cell(v) for v in row]) + " |" for i, row in zip(frame.index, frame.values)]
    return "\n".join(lines)


def aug_list(names: list[str]) -> str:
    return "[" + ", ".join(names) + "]"


def augpairs(args) -> pd.DataFrame:
    augs = args.augs.split(",") if args.augs else list(WAVE_AUGMENTATIONS)
    rows = []
    for encoder in args.encoders.split(","):
        for first in augs:
            for second in augs:
                names = [first] if first == second else [first, second]
                result = run(args, f"{encoder}_{first}_{second}", [
                    f"encoder={encoder}", "mode=selfsupervised", "aug.p=1.0", f"aug.names={aug_list(names)}"])
                rows.append({"encoder": encoder, "first": first, "second": second,
                             "accuracy": result["probe_test_acc"], "run": result["out_dir"]})
    return pd.DataFrame(rows)


def augpairs_markdown(table: pd.DataFrame) -> str:
    parts = []
    for encoder, group in table.groupby("encoder", sort=False):
        matrix = group.pivot(index="first", columns="second", values="accuracy") * 100
        order = list(dict.fromkeys(group["first"]))
        matrix = matrix.loc[order, order]
        matrix["mean"] = matrix.mean(axis=1)
        parts.append(f"### {encoder} encoder (rows: first augmentation, columns: second; linear probe %)\n\n"
                     + markdown_table(matrix) + "\n\n"
                     + f"mean +- std over all pairs: {np.mean(group.accuracy) * 100:.1f} +- "
                       f"{np.std(group.accuracy) * 100:.2f} (paper, SC-10: 1-D 68.6 +- 0.82, 2-D 67.0 +- 1.36)\n")
    return "\n".join(parts)


def data_overrides(cache: str, config_path: str) -> list[str]:
    """data.* overrides that fit `cache`: its folds (1-4 train, 5 test, as the paper's ESC-50) when it has no
    splits, else its train/test splits; the config's class subset (SC-10) only where the cache has all of it."""
    df = read_manifest(cache)
    keys = [f"data.cache={cache}"]
    if (df["split"] == "").all():
        keys += ["data.train_folds=[1, 2, 3, 4]", "data.test_folds=[5]", "data.train_split=null",
                 "data.test_split=null"]
    else:
        keys += ["data.train_folds=null", "data.test_folds=null", "data.train_split=train", "data.test_split=test"]
    classes = methods.get("clar").resolve(config_path)["data"]["classes"]
    if classes and not set(classes) <= set(df["label"]):
        keys.append("data.classes=null")
    return keys


def representation(args) -> pd.DataFrame:
    caches = args.caches.split(",") if args.caches else [None]
    rows = []
    for cache in caches:
        for encoder in args.encoders.split(","):
            augs = (args.augs_1d if encoder == "1d" else args.augs_2d).split(",")
            dataset = Path(cache).name if cache else "config"
            extra = data_overrides(cache, args.config) if cache else []
            result = run(args, f"{dataset}_{encoder}", [*extra, f"encoder={encoder}", f"mode={args.mode}",
                                                        f"aug.names={aug_list(augs)}"])
            rows.append({"dataset": dataset, "encoder": encoder, "augmentations": "+".join(augs),
                         "accuracy": result["probe_test_acc"], "run": result["out_dir"]})
    return pd.DataFrame(rows)


def labels(args) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, curves = [], []
    for mode in args.modes.split(","):
        for fraction in args.fractions.split(","):
            result = run(args, f"{mode}_{fraction}", [f"mode={mode}", f"label_fraction={fraction}"])
            rows.append({"mode": mode, "label_fraction": float(fraction), "accuracy": result["probe_test_acc"],
                         "online_accuracy": result["online_test_acc"], "run": result["out_dir"]})
            log = pd.read_csv(Path(result["out_dir"]) / "log.csv")
            log = log[log["test_acc"].notna()]
            curves += [{"mode": mode, "label_fraction": float(fraction), "epoch": int(r.epoch), "step": int(r.step),
                        "online_test_acc": r.test_acc} for r in log.itertuples()]
    return pd.DataFrame(rows), pd.DataFrame(curves)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=["augpairs", "representation", "labels"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--encoders", default="1d,2d", help="augpairs, representation")
    parser.add_argument("--augs", default=None, help="augpairs: comma-separated subset (default: all seven)")
    parser.add_argument("--caches", default=None, help="representation: comma-separated caches (default: config's)")
    parser.add_argument("--augs-1d", default=BEST_AUGS["1d"], help="representation: 1-D augmentations")
    parser.add_argument("--augs-2d", default=BEST_AUGS["2d"], help="representation: 2-D augmentations")
    parser.add_argument("--mode", default="selfsupervised", help="representation: training mode")
    parser.add_argument("--modes", default="supervised,selfsupervised,clar", help="labels")
    parser.add_argument("--fractions", default="1.0,0.2,0.1,0.01", help="labels")
    parser.add_argument("--runs", default="runs/clar_studies", help="folder of the runs")
    parser.add_argument("--out", default="results", help="folder of the tables")
    parser.add_argument("--force", action="store_true", help="rerun runs that already have results")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config every run starts from (--config + the overrides) and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_intermixed_args(argv)
    if args.print_config:  # the pretraining script's own --print-config, on what every run is given
        code = subprocess.run([sys.executable, str(PRETRAIN), "--config", args.config, *args.overrides,
                               "--print-config"]).returncode
        raise SystemExit(code)
    unknown = [a for a in (args.augs or "").split(",") if a and a not in WAVE_AUGMENTATIONS]
    if unknown:
        parser.error(f"unknown augmentation(s) {unknown}; choose from {', '.join(WAVE_AUGMENTATIONS)}")

    out = Path(args.out)
    written = {}
    if args.study == "augpairs":
        table = augpairs(args)
        markdown = augpairs_markdown(table)
    elif args.study == "representation":
        table = representation(args)
        pivot = table.pivot(index="encoder", columns="dataset", values="accuracy") * 100
        markdown = "Linear probe accuracy % (self-supervised pretraining)\n\n" + markdown_table(pivot) + "\n"
    else:
        table, curves = labels(args)
        pivot = table.pivot(index="mode", columns="label_fraction", values="accuracy") * 100
        markdown = ("Linear probe accuracy % by label fraction (paper, SC-10: going from 100 % to 1 % labels costs "
                    "the supervised model ~65 points, CLAR ~19)\n\n" + markdown_table(pivot) + "\n")
        written["curves"] = out / "clar_labels_curves.csv"
        atomic_write_text(curves.to_csv(index=False), written["curves"])
    written["csv"], written["md"] = out / f"clar_{args.study}.csv", out / f"clar_{args.study}.md"
    atomic_write_text(table.to_csv(index=False), written["csv"])
    atomic_write_text(f"# CLAR {args.study} ({args.config} {' '.join(args.overrides)})\n\n{markdown}", written["md"])
    print(f"wrote {', '.join(str(p) for p in written.values())}\n\n{markdown}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
