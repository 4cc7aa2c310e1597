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


def test_disk_table_loader_rates_and_ratios(tmp_path, capsys):
    """bench.py scale's disk table on a tiny pack: every read path of the loader runs (no timing asserted), and the
    printed ratios are the best loader over the bounds computed from the row."""
    root = bench.write_big_pack(tmp_path / "p", clips=200, dtype="float16")
    files = sorted((root / "packed").glob("*.bin"))
    assert sum(f.stat().st_size for f in files) == 200 * bench.CLIP_FRAMES * bench.N_MELS * 2
    for name, order, read, batch_reads in bench.LOADERS:
        measured = bench.loader_rate(root, order, read, batch_reads, workers=0, seconds=0.05, batch=16)
        assert measured["crops/s"] > 0 and set(measured) == {"crops/s", "cores", "worker RSS MB",
                                                             "worker private MB"}, name
    row = {"dtype": "float16", "clips": 1000, "disk: sequential GB/s": 1.0, "disk: random crop reads/s, 1 in flight":
           10000.0, "disk: random crop reads/s, 8 in flight": 40000.0, "bound: clips/s read in order": 7000.0,
           "loader random/pread items": 5000.0, "loader random/pread batches": 14000.0,
           "worker RSS MB (random/pread batches)": 300.0, "worker private MB (random/pread batches)": 10.0,
           "startup s": 0.01, "index B/clip": 28.0}
    bench.print_disk_table([row], workers=2, depth=8)
    out = capsys.readouterr().out
    assert "best loader random/pread batches: 14,000 crops/s = 10.8x the 1,300/s" in out
    assert "better bound 10,000/s -> 140%" in out and "better bound 40,000/s -> 35%" in out
    assert "56 MB at 2 M" in out and "RSS 300 MB at 1,000 clips -> 356 MB at 2 M" in out
    assert "0.01 s at 1,000 clips -> 20.0 s at 2 M" in out
