"""Linear evaluation of a frozen encoder, following EVAR (nttcslab/eval-audio-repr) exactly.

    python linear_eval.py --ckpt runs/msn/ckpt_last.pt --task esc50
    python linear_eval.py --ckpt random:config/msn.yaml --task gtzan          # the random-init baseline
    python linear_eval.py --ckpt encoder.pt --task esc50                      # an export.py encoder file
    python linear_eval.py --ckpt hear:hearbaseline --task esc50               # any HEAR module (HEAR API)
    python linear_eval.py --ckpt byola:AudioNTT2020-BYOLA-64x96d512.pth --task nsynth  # published BYOL-A (official.py)
    python linear_eval.py --ckpt CKPT --task nsynth --label-fraction 0.01 --seeds 0,1,2
    python linear_eval.py --ckpt CKPT --task cache/synth_small --folds 5 eval.long=chunk probe.lr=3e-5

TASK is a task of datasets.REGISTRY (esc50, esc10, gtzan, nsynth, nsynth_pitch, sc35, sc10) or a cache folder
written by preprocess.py; a named task refuses a cache that preprocess.json says holds another data set. The
checkpoint (or export.py file) carries its resolved config, so `models.build_encoder` rebuilds its encoder and
front end (log-mel or waveform input) with no other flag. `hear:MODULE[:WEIGHTS]` embeds the cached 16 kHz
waveforms, resampled to the module's sample_rate, with the module's get_scene_embeddings (HEAR API). Steps:

1. Clips at the task's unit length (ESC 5 s, GTZAN 30 s, NSynth 4 s, Speech Commands 1 s; a cache folder:
   the manifest's median duration): shorter clips are right-padded with silence, longer ones cropped at a
   random (fixed per clip) start for train/valid and from the start for test (EVAR data.py). Log-mel inputs
   are normalised with a scalar mean/std from the task's TRAIN split (EVAR ar_base.precompute; for
   cross-validation tasks, the training folds of the first held-out fold, as EVAR computes it once).
2. Embeddings `encoder.embed(x, long, pool)` for every clip, once, cached on disk under eval.embed_dir and
   keyed by the checkpoint's sha256, the task, the clip list and every input setting.
3. Per held-out fold (ESC-50: 5-fold CV; others: the official train/valid/test split) and seed: the
   EVAR probe (`fit_linear_probe`): StandardScaler, one nn.Linear, Adam (lr 3e-4, wd 1e-8), batch
   min(200, N), <= 200 epochs, early stopping on validation accuracy (patience 20, later ties win, best
   weights restored). Tasks with no validation split hold out a random 10 % of the training fold,
   redrawn until every class is in it (EVAR / general-learning train_test_sure_split).
4. Low-shot (`--label-fraction F` or `--shots N`): the same stratified subset rule (data.stratified_subset,
   seeded) is applied to the training and to the validation labels; the StandardScaler still sees the
   whole (unlabelled) training fold.
5. One row per evaluation appended to results/results.csv (RESULT_FIELDS): accuracy per fold and seed,
   mean and the t-distribution 95 % CI over folds x seeds, with provenance.

Options other than the flags are `key=value` overrides of evaluation.DEFAULTS (unknown keys are errors).
The steps above are evaluation.py's (`evaluation.run`); this script parses the command line.
"""
from __future__ import annotations

import argparse
import sys

import evaluation
from config import ConfigError, dump_config


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--ckpt", help="(required) checkpoint or export.py file, random:<config.yaml>, "
                        "hear:MODULE[:WEIGHTS] or byola:<official BYOL-A .pth>")
    parser.add_argument("--task", help=f"(required) {', '.join(evaluation.TASKS)} or a cache folder")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config (DEFAULTS + the overrides and flags) as YAML and exit")
    shots = parser.add_mutually_exclusive_group()
    shots.add_argument("--label-fraction", type=float, help="stratified fraction of the training labels")
    shots.add_argument("--shots", type=int, help="labelled training clips per class")
    parser.add_argument("--seeds", default="0", help="comma-separated probe / subset seeds")
    parser.add_argument("--folds", default="", help="held-out folds to evaluate (cross-validation tasks)")
    parser.add_argument("--cache", help="cache folder of the task's data set (overrides data.<set>)")
    parser.add_argument("--results", default="results/results.csv", help="CSV the result row is appended to")
    parser.add_argument("--name", help="model name in the results (default: the config name)")
    parser.add_argument("--long", choices=("pad", "resize", "chunk"),
                        help="ViT inputs longer than the training crop (= eval.long; pad is the seed's)")
    parser.add_argument("--pool", choices=("cls", "mean"), help="ViT embedding pooling (= eval.pool)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of DEFAULTS (e.g. eval.long=pad)")
    args = parser.parse_intermixed_args(argv)  # options may sit between key=value overrides
    missing = [flag for flag in ("--ckpt", "--task") if getattr(args, flag[2:]) is None]
    if missing and not args.print_config:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        parser.error("--label-fraction must be in (0, 1]")
    if args.shots is not None and args.shots < 1:
        parser.error("--shots must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run one evaluation (evaluation.run) and append its row."""
    args = parse_args(argv)
    flags = [f"eval.{k}={getattr(args, k)}" for k in ("long", "pool") if getattr(args, k) is not None]
    cfg = evaluation.config(args.overrides + flags)
    if args.print_config:
        print(dump_config(cfg), end="")
        return
    evaluation.run(args.ckpt, args.task, cfg, seeds=[int(s) for s in args.seeds.split(",") if s.strip()],
                   folds=[int(f) for f in args.folds.split(",") if f.strip()] or None,
                   label_fraction=args.label_fraction, shots=args.shots, cache=args.cache, results=args.results,
                   name=args.name)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, ValueError, OSError) as err:  # OSError: FileNotFoundError, a full disk (one line)
        sys.exit(f"linear_eval.py: error: {err}")
