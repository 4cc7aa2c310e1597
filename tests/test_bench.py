"""bench.py scale on a tiny N: the cache it writes and the costs it reports (numbers are printed, never asserted
against targets here)."""
from __future__ import annotations

import numpy as np

import bench
import data


def test_scale_cache_and_costs(tmp_path, capsys):
    seconds = bench.make_scale_cache(tmp_path / "c", clips=150, frames=101, dtype="float16")
    df = data.read_manifest(tmp_path / "c")
    index = np.load(tmp_path / "c" / "packed" / "index.npz")
    assert seconds > 0 and len(df) == 150 and index["ids"].tolist() == df.id.tolist()
    assert index["lengths"].tolist() == [101] * 150 and str(index["dtype"]) == "float16"
    crops = data.LogMelCrops(tmp_path / "c", df, frames=None)
    np.testing.assert_array_equal(crops[0][0][0].numpy(), crops[64][0][0].numpy())  # the pool of 64 clips
    costs = bench.scale_costs(tmp_path / "d", clips=200, frames=101, dtype="float16", dim=8)
    assert set(costs) == {"pack (s)", "manifest read (s)", "loader start-up (s)", "index memory (MB)",
                          "index peak (MB)", "manifest frame (MB)", "sampler epoch (s)",
                          "epoch of 96-frame crops (s)", "crops/s", "embedding cache write (s)"}
    assert costs["crops/s"] > 0 and 0 < costs["index memory (MB)"] <= costs["index peak (MB)"]
    assert np.load(tmp_path / "d" / "embeddings" / "task-model-key.npy").shape == (200, 8)
    bench.print_scale_table({200: costs, 400: {k: 2 * v for k, v in costs.items()}})
    table = capsys.readouterr().out
    assert "N=200" in table and "N=400" in table and "at 2 M" in table
    pack_row = next(line for line in table.splitlines() if line.startswith("pack (s)"))
    assert pack_row.split()[4] == "1.00"  # doubling N doubles the cost: growth exponent 1
