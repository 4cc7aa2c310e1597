"""Write a portable encoder file: the encoder's weights, the config that rebuilds it and its log-mel front end, and
its input normalisation, without the training state (layout: portable.py).

    python export.py --ckpt runs/<config>/ckpt_last.pt --out encoder.pt
    python linear_eval.py --ckpt encoder.pt --task esc50                 # the probe reads it as a checkpoint
    hear-validator hear_ssl -m encoder.pt                                # and so does the HEAR module

The file loads with torch.load(weights_only=True) and with models.load_encoder_file; it is written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys

import portable
from utils import load_checkpoint


def export(ckpt: str, out: str) -> dict:
    """Read the training checkpoint `ckpt`, write its encoder file to `out`; returns the file's dict."""
    bundle = portable.from_checkpoint(load_checkpoint(ckpt), ckpt)
    portable.save(bundle, out)
    return bundle


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--ckpt", required=True, help="training checkpoint (runs/<config>/ckpt_last.pt)")
    parser.add_argument("--out", required=True, help="encoder file to write")
    args = parser.parse_args(argv)
    bundle = export(args.ckpt, args.out)
    norm, arch = bundle["norm"], bundle["config"]["model"]["arch"]
    n_params = sum(v.numel() for v in bundle["encoder"].values())
    print(f"{args.out}: {bundle['kind']} {arch}, {n_params:,} encoder values, input "
          f"{'wave' if bundle['logmel'] is None else 'log-mel'}, norm {norm['source']} (mean {norm['mean']:.4f}, "
          f"std {norm['std']:.4f}), {os.path.getsize(args.out) / 2**20:.1f} MiB")
    return bundle


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OSError) as err:
        sys.exit(f"export.py: error: {err}")
