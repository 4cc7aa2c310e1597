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


def steps(size: str) -> list[list[str]]:
    cache = f"cache/synth_{size}"
    return [
        ["preprocess.py", "--dataset", "synthetic", "--size", size, "--waveform", "--out", cache],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=("small", "default"))
    args = parser.parse_args()
    start = time.time()
    for step in steps(args.size):
        command = [sys.executable, *step]
        print(f"\n$ python {shlex.join(step)}", flush=True)
        t0 = time.time()
        if subprocess.run(command).returncode != 0:
            raise SystemExit(f"demo step failed: python {shlex.join(step)}")
        print(f"[{time.time() - t0:.0f} s]", flush=True)
    print(f"\ndemo finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
