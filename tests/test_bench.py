"""bench.py scale on a tiny N, run as the command it is: the caches it writes (--keep) and the table it prints
(numbers are printed, never asserted against targets here; the derived columns are checked against the measured
ones)."""
from __future__ import annotations

import math
import re

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


def test_disk_table_runs_every_loader_read_path_and_its_ratios_follow_from_the_row(tmp_path):
    """bench.py scale's disk table on a tiny pack (no timing asserted): every read path of the loader is measured,
    and the printed ratios are the best loader over the 1,300/s before and over the bounds of the same row."""
    done = run_script("bench.py", "scale", "--clips", "", "--disk-dtypes", "float16", "--pack-gb", "0.03",
                      "--seconds", "0.05", "--workers", "1", "--dir", tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    value = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1].replace(",", ""))
             for line in lines if line.startswith(("loader ", "disk: ", "index B/clip"))}
    loaders = {k[len("loader "):]: v for k, v in value.items() if k.startswith("loader ")}
    assert {"random/pread items", "block/mmap items", "random/pread batches", "random/direct batches",
            "block/pread batches"} <= set(loaders)
    assert all(v > 0 for v in loaders.values()) and value["index B/clip"] == 28.0
    name, best = max(loaders.items(), key=lambda item: item[1])
    summary = "\n".join(line for line in lines if line.startswith("float16: "))
    assert f"best loader {name}: {best:,.0f} crops/s = {best / 1300:.1f}x the 1,300/s" in summary
    direct, buffered = loaders["random/direct batches"], loaders["random/pread batches"]
    assert (f"O_DIRECT {direct:,.0f} vs buffered pread {buffered:,.0f} crops/s = {direct / buffered:.2f}x"
            in summary)
    seq = next(float(line.split()[-1].replace(",", "")) for line in lines
               if line.startswith("bound: clips/s read in order"))
    bounds = re.findall(r"random reads (\d+) in flight.*: better bound ([\d,]+)/s -> (\d+)%", summary)
    assert len(bounds) == 2 and bounds[0][0] == "1"  # the bound, then at the loader's depth
    for qd, bound, percent in bounds:
        expected = max(seq, value[f"disk: random crop reads/s, {qd} in flight"])
        assert abs(float(bound.replace(",", "")) - expected) <= 1 and abs(int(percent) - 100 * best / expected) <= 1
