"""The built-in data set's command line: generate the synthetic sound-event set in the ESC-50 layout and, with
--check, run the hand-crafted linear probes on it. The generator and the checks live in synthdata.py.

    python synthetic.py --root data/synthetic --size small          # generate
    python synthetic.py --root data/synthetic --size small --check  # + linear-probe hardness check
    python synthetic.py --root data/synthetic-small --size small --check --probe-lr 1e-2 --results R.csv --task T
"""
from __future__ import annotations

import argparse
import sys

from synthdata import SIZES, clip_table, generate_synthetic, hardness_check, result_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/synthetic", help="output folder (ESC-50 layout)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="print the hand-crafted linear probes (EVAR probe)")
    parser.add_argument("--probe-lr", type=float, default=3e-4, help="probe lr (EVAR 3e-4; the demo uses 1e-2)")
    parser.add_argument("--results", default=None, help="--check: also append the rows to this results CSV")
    parser.add_argument("--task", default="synthetic", help="--check: task name of those rows (the cache name)")
    args = parser.parse_args()
    root = generate_synthetic(args.root, args.size, args.seed)
    print(f"{root}: {len(clip_table(args.size))} clips ({args.size}, seed {args.seed})")
    if args.check:
        from probe import append_result

        results = hardness_check(root, args.probe_lr)
        for name, result in results.items():
            print(f"EVAR linear probe on {name:<12} fold 5 {100 * result['fold5']:5.1f} %   5-fold "
                  f"{100 * result['cv']:5.1f} %   (lr {args.probe_lr:g})")
        for row in result_rows(results, args.task, args.probe_lr) if args.results else []:
            append_result(args.results, row)

if __name__ == "__main__":
    try:
        main()
    except OSError as err:  # a full disk or an unwritable --root: one line naming the file
        sys.exit(f"synthetic.py: error: {f'{err.filename}: {err.strerror}' if err.filename else err}")
