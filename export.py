"""Write a portable encoder file: the encoder's weights, the config that rebuilds it and its log-mel front end, and
its input normalisation, without the training state (layout: portable.py).

    python export.py --ckpt runs/demo_msn/ckpt_last.pt --out encoder.pt
    python export.py --ckpt byola:AudioNTT2020-BYOLA-64x96d512.pth --out byola.pt  # a published BYOL-A encoder
    python linear_eval.py --ckpt encoder.pt --task esc50                 # the probe reads it as a checkpoint
    hear-validator hear_ssl -m encoder.pt                                # and so does the HEAR module

The file loads with torch.load(weights_only=True) and with models.load_encoder_file; it is written atomically.
`byola:PATH` reads an official BYOL-A v1/v2 weight file (official.py); its `norm` entry records that BYOL-A
normalises with the downstream task's statistics (linear_eval.py computes them), or `--norm-stats MEAN STD`.
"""
from __future__ import annotations

import argparse
import os
import sys

import official
import portable


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--ckpt", required=True,
                        help=f"training checkpoint (runs/<config>/ckpt_last.pt) or {official.PREFIX}<weight file>")
    parser.add_argument("--out", required=True, help="encoder file to write")
    parser.add_argument("--norm-stats", type=float, nargs=2, metavar=("MEAN", "STD"),
                        help=f"{official.PREFIX} only: log-mel mean and std to store (default: downstream statistics)")
    args = parser.parse_args(argv)
    bundle = portable.export(args.ckpt, args.out, tuple(args.norm_stats) if args.norm_stats else None)
    norm, arch = bundle["norm"], bundle["config"]["model"]["arch"]
    n_params = sum(v.numel() for v in bundle["encoder"].values())
    print(f"{args.out}: {bundle['kind']} {arch}, {n_params:,} encoder values, input "
          f"{'wave' if bundle['logmel'] is None else 'log-mel'}, norm {norm['source']} (mean {norm['mean']:.4f}, "
          f"std {norm['std']:.4f}), {os.path.getsize(args.out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OSError) as err:
        sys.exit(f"export.py: error: {err}")
