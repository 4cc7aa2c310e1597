"""bench.py scale on a tiny N, run as the command it is: the caches it writes (--keep) and the table it prints
(numbers are printed, never asserted against targets here; the derived columns are checked against the measured
ones)."""
from __future__ import annotations

import math

import numpy as np

import data
from tests.conftest import run_script

COSTS = ("pack (s)", "manifest read (s)", "loader start-up (s)", "index memory (MB)", "index peak (MB)",
         "manifest frame (MB)", "sampler epoch (s)", "epoch of 96-frame crops (s)", "crops/s",
         "embedding cache write (s)")


def test_scale_caches_and_growth_table(tmp_path):
    done = run_script("bench.py", "scale", "--clips", "150,300", "--dir", tmp_path, "--frames", "101", "--dim", "8",
                      "--workers", "0", "--disk-dtypes", "", "--keep")
    assert done.returncode == 0, done.stderr
    for clips in (150, 300):
        root = tmp_path / f"scale_{clips}"
        df = data.read_manifest(root)
        index = np.load(root / "packed" / "index.npz")
        assert len(df) == clips and index["ids"].tolist() == df.id.tolist()
        assert index["lengths"].tolist() == [101] * clips and str(index["dtype"]) == "float16"
        crops = data.LogMelCrops(root, df, frames=None)
        np.testing.assert_array_equal(crops[0][0][0].numpy(), crops[64][0][0].numpy())  # the pool of 64 clips
        assert np.load(root / "embeddings" / "task-model-key.npy").shape == (clips, 8)
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("N=")] == ["N=150", "N=300"]
    header = next(line for line in lines if line.startswith("cost"))
    assert header.split()[1:] == ["N=150", "N=300", "growth", "at", "2", "M"]
    rows = {name: line[len(name):].split() for line in lines for name in COSTS if line.startswith(f"{name}  ")}
    assert set(rows) == set(COSTS)
    for name, cells in rows.items():
        small, large, growth, at_2m = (float(c.replace(",", "")) for c in cells)
        rate = name == "crops/s"  # as measured; the others per clip (us or bytes)
        if min(small, large) >= 10:  # log-log slope of the total over N = 150, 300 (1 = linear)
            assert abs(growth - (math.log2(large / small) + (0 if rate else 1))) < 0.02, name
        assert abs(at_2m - (large if rate else large * 2)) <= 0.06, name  # 2 M x us = s, 2 M x bytes = MB
