"""data.py: manifest reading, split/fold selection, crops and padding (EVAR code), label-fraction subsets."""
import numpy as np
import pytest
import torch

import data
from audio import LOG_SILENCE


def test_manifest_select_and_labels(tiny_cache):
    df = data.read_manifest(tiny_cache)
    assert len(df) == 24 and str(df.fold.dtype) == "Int64"
    assert len(data.select(df, folds=[1, 2, 3, 4])) + len(data.select(df, folds=[5])) == 24
    assert set(data.select(df, split=["train", "valid"]).split) == {"train", "valid"}
    assert set(data.select(df, where={"label": "class2"}).label) == {"class2"}
    labels = data.LabelMap.from_labels(df.label)
    assert labels.names == ["class0", "class1", "class2", "class3"]
    np.testing.assert_array_equal(labels.encode(["class3", "class0", "nope"]), [3, 0, -1])


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run preprocess.py"):
        data.read_manifest(tmp_path)


def test_crop_frames_pads_right_and_crops_from_start_for_eval():
    logmel = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    np.testing.assert_array_equal(data.crop_frames(logmel, 4, random_crop=False), logmel[:, :4])
    padded = data.crop_frames(logmel, 13, random_crop=False)
    np.testing.assert_array_equal(padded[:, :10], logmel)
    assert (padded[:, 10:] == LOG_SILENCE).all()  # silence, not 0 (which is loud in the log domain)
    starts = {int(data.crop_frames(logmel, 4, True, np.random.default_rng(s))[0, 0]) for s in range(50)}
    assert starts == set(range(7))  # every start 0..T-frames is reachable


def test_logmel_and_wave_datasets(tiny_cache):
    df = data.read_manifest(tiny_cache)
    labels = data.LabelMap.from_labels(df.label)
    ds = data.LogMelCrops(tiny_cache, df, labels, frames=96, random_crop=False)
    x, y = ds[7]
    ref = np.load(tiny_cache / df.logmel[7])
    assert x.shape == (1, 64, 96) and x.dtype == torch.float32 and y == labels.encode([df.label[7]])[0]
    np.testing.assert_array_equal(x[0].numpy(), ref[:, :96])
    assert data.LogMelCrops(tiny_cache, df, labels, frames=None)[0][0].shape == (1, 64, 120)
    torch.manual_seed(0)
    a = data.LogMelCrops(tiny_cache, df, labels, frames=50, random_crop=True)[3][0]
    torch.manual_seed(0)
    assert torch.equal(a, data.LogMelCrops(tiny_cache, df, labels, frames=50, random_crop=True)[3][0])
    w, _ = data.WaveClips(tiny_cache, df, labels, samples=20000)[0]
    assert w.shape == (20000,) and (w[16000:] == 0).all()  # waveforms are zero-padded
    np.testing.assert_array_equal(w[:16000].numpy(), np.load(tiny_cache / df.wave[0]))


def test_wave_dataset_needs_waveform_cache(tiny_cache):
    df = data.read_manifest(tiny_cache)
    df["wave"] = ""
    with pytest.raises(ValueError, match="--waveform"):
        data.WaveClips(tiny_cache, df)


def test_stratified_subset_fraction_and_shots():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    sub = data.stratified_subset(labels, fraction=0.1, seed=3)
    assert np.bincount(labels[sub]).tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(sub, data.stratified_subset(labels, fraction=0.1, seed=3))
    assert not np.array_equal(sub, data.stratified_subset(labels, fraction=0.1, seed=4))
    assert set(sub) <= set(data.stratified_subset(labels, fraction=0.5, seed=3))  # nested for one seed
    shots = data.stratified_subset(labels, per_class=5, seed=0)
    assert np.bincount(labels[shots]).tolist() == [5, 5, 5, 5]
    assert np.bincount(labels[data.stratified_subset(labels, fraction=0.001)]).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        data.stratified_subset(labels)


def test_logmel_stats_match_numpy(tiny_cache):
    df = data.read_manifest(tiny_cache)
    everything = np.stack([np.load(tiny_cache / p) for p in df.logmel]).astype(np.float64)
    mean, std = data.logmel_stats(tiny_cache, df)
    assert mean == pytest.approx(everything.mean()) and std == pytest.approx(everything.std())


def test_logmel_stats_over_training_crops_as_byola_calc_norm_stats(tiny_cache):
    """BYOL-A v2 calc_norm_stats: mean/std over one random crop of the training length per chosen clip."""
    df = data.read_manifest(tiny_cache)
    rng = np.random.default_rng(3)
    crops = []
    for r in rng.permutation(len(df))[:10]:
        x = np.load(tiny_cache / df.logmel.iloc[r])
        start = int(rng.integers(0, x.shape[-1] - 20 + 1))
        crops.append(x[:, start:start + 20])
    crops = np.stack(crops).astype(np.float64)
    mean, std = data.logmel_stats(tiny_cache, df, max_clips=10, seed=3, frames=20)
    assert mean == pytest.approx(crops.mean()) and std == pytest.approx(crops.std())
    assert (mean, std) != pytest.approx(data.logmel_stats(tiny_cache, df, max_clips=10, seed=3))  # not whole clips


def test_packed_cache_gives_the_same_items(tiny_cache):
    df = data.read_manifest(tiny_cache)
    labels = data.LabelMap.from_labels(df.label)
    data.pack_logmels(tiny_cache)
    subset = df.iloc[[5, 2, 17]].reset_index(drop=True)  # any subset and order of the packed clips
    for frames, random_crop in [(50, True), (96, False), (200, False), (None, False)]:
        packed = data.LogMelCrops(tiny_cache, subset, labels, frames=frames, random_crop=random_crop)
        files = data.LogMelCrops(tiny_cache, subset, labels, frames=frames, random_crop=random_crop,
                                 use_packed=False)
        assert packed.packed is not None and files.packed is None
        for i in range(len(subset)):
            torch.manual_seed(i)
            a = packed[i]
            torch.manual_seed(i)
            b = files[i]
            assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not list((tiny_cache / "packed").glob(".*tmp*"))
    extra = df.copy()
    extra.loc[0, "id"] = "not_packed"
    assert data.LogMelCrops(tiny_cache, extra, labels).packed is None  # falls back to per-clip files


def test_missing_cached_array_names_the_file_and_the_fix(tiny_cache):
    df = data.read_manifest(tiny_cache)
    (tiny_cache / df.logmel[3]).unlink()
    with pytest.raises(FileNotFoundError, match=r"c0_03.npy: listed in .*manifest.csv but missing; re-run preprocess"):
        data.LogMelCrops(tiny_cache, df, use_packed=False)[3]


def test_pack_shards_and_the_single_file_layout_of_earlier_versions(tiny_cache, monkeypatch):
    df = data.read_manifest(tiny_cache)
    monkeypatch.setattr(data, "SHARD_BYTES", 5 * 120 * 64 * 4)  # five 120-frame clips per shard file
    folder = data.pack_logmels(tiny_cache)
    index = np.load(folder / "index.npz")
    assert len(index["files"]) == 5 and index["shard"].tolist() == [i // 5 for i in range(24)]
    assert index["offsets"].tolist()[:6] == [0, 120, 240, 360, 480, 0] and str(index["dtype"]) == "float32"
    crops = data.LogMelCrops(tiny_cache, df, frames=None)
    np.testing.assert_array_equal(crops[23][0][0].numpy(), np.load(tiny_cache / df.logmel[23]))
    data.pack_logmels(tiny_cache, dtype="float16")  # a repack replaces the old shards
    assert len(list(folder.glob("*.bin"))) == 3 and str(np.load(folder / "index.npz")["dtype"]) == "float16"
    # earlier versions: one packed/logmel.npy [sum T, F] and an index of ids, offsets, lengths
    for path in folder.iterdir():
        path.unlink()
    np.save(folder / "logmel.npy", np.concatenate([np.load(tiny_cache / p).T for p in df.logmel]))
    np.savez(folder / "index.npz", ids=df.id.to_numpy(dtype=str), offsets=np.arange(24) * 120,
             lengths=np.full(24, 120))
    old = data.LogMelCrops(tiny_cache, df.iloc[::-1], frames=None)
    assert old.packed is not None
    np.testing.assert_array_equal(old[0][0][0].numpy(), np.load(tiny_cache / df.logmel[23]))


def test_ratio_batches_keep_the_labelled_share_in_every_batch():
    labelled = np.zeros(100, dtype=bool)
    labelled[::10] = True  # 10 % labelled
    batches = data.RatioBatches(labelled, batch_size=20, seed=0)
    epoch0 = batches.epoch(0)
    assert len(epoch0) == len(batches) == 5
    assert all(len(b) == 20 and labelled[b].sum() == 2 for b in epoch0)
    assert len({i for b in epoch0 for i in b if not labelled[i]}) == 90  # each unlabelled clip once
    assert batches.epoch(0) == epoch0 and batches.epoch(1) != epoch0  # seeded per epoch
    # two processes take positions r::2 of each global batch (trainer.epoch_loader): one labelled clip each
    assert all(labelled[b[0::2]].sum() == labelled[b[1::2]].sum() == 1 for b in epoch0)
    with pytest.raises(ValueError, match="larger than"):
        data.RatioBatches(labelled, 200)


def test_epoch_batches_are_a_seeded_permutation_without_the_last_partial_batch():
    batches = data.EpochBatches(10, 3, seed=4)
    epoch0 = batches.epoch(0)
    assert len(batches) == 3 and [len(b) for b in epoch0] == [3, 3, 3]
    flat = sum(epoch0, [])
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert batches.epoch(0) == epoch0 and batches.epoch(1) != epoch0
    assert data.EpochBatches(10, 3, seed=5).epoch(0) != epoch0


# ----------------------------------------------------------------------------- block order and the compact index

def packed_cache(cache, monkeypatch, clips_per_shard: int = 7):
    """The tiny cache packed into shards of `clips_per_shard` 120-frame clips (24 clips -> 4 shards)."""
    monkeypatch.setattr(data, "SHARD_BYTES", clips_per_shard * 120 * 64 * 4)
    data.pack_logmels(cache)
    return data.read_manifest(cache)


def test_pack_blocks_are_runs_of_consecutive_clips_of_one_shard(tiny_cache, monkeypatch):
    df = packed_cache(tiny_cache, monkeypatch)
    subset = df.iloc[::-1].reset_index(drop=True)  # dataset order differs from pack order
    packed = data.LogMelCrops(tiny_cache, subset).packed
    blocks = packed.blocks(3)
    # shards of 7, 7, 7, 3 clips -> blocks of 3, 3, 1 per full shard, then 3
    assert [len(b) for b in blocks] == [3, 3, 1] * 3 + [3]
    assert sorted(np.concatenate(blocks).tolist()) == list(range(24))
    for block in blocks:
        assert len(set(packed.file[block].tolist())) == 1  # one shard
        ends = packed.offsets[block] + packed.lengths[block]
        np.testing.assert_array_equal(packed.offsets[block][1:], ends[:-1])  # consecutive on disk, in order
    # the compact index: 16 bytes a clip (shard, offset, frames), far under the 64-byte budget
    assert packed.nbytes == 16 * 24


def test_block_batches_are_a_pure_function_of_seed_and_epoch_and_visit_every_clip_once():
    blocks = [np.arange(k, min(k + 5, 42)) for k in range(0, 42, 5)]  # 9 blocks, the last of 2 clips
    batches = data.BlockBatches(blocks, batch_size=6, seed=3, open_blocks=2)
    epoch0 = batches.epoch(0)
    assert len(batches) == len(epoch0) == 7 and all(len(b) == 6 for b in epoch0)
    assert sorted(sum(epoch0, [])) == list(range(42))  # 42 = 7 x 6: every clip exactly once
    assert data.BlockBatches(blocks, 6, seed=3, open_blocks=2).epoch(0) == epoch0  # rebuilt: the same order
    assert batches.epoch(1) != epoch0 and data.BlockBatches(blocks, 6, seed=4, open_blocks=2).epoch(0) != epoch0
    # each window of open_blocks x 5 = 10 consecutive positions holds the clips of exactly 2 blocks
    flat = np.array(sum(epoch0, []))
    block_of = np.concatenate([np.full(len(b), i) for i, b in enumerate(blocks)])
    windows = [set(block_of[flat[k:k + 10]].tolist()) for k in range(0, 40, 10)]
    assert all(len(w) == 2 for w in windows) and len(set().union(*windows)) == 8
    # inside a window the clips are shuffled, not read block after block
    assert any(np.any(np.diff(flat[k:k + 10]) < 0) for k in range(0, 40, 10))


def test_pread_crops_equal_memory_map_crops_and_per_clip_files(tiny_cache, monkeypatch):
    df = packed_cache(tiny_cache, monkeypatch)
    subset = df.iloc[[3, 20, 11, 7]].reset_index(drop=True)
    for frames, random_crop in [(50, True), (96, False), (200, True)]:
        sets = [data.LogMelCrops(tiny_cache, subset, frames=frames, random_crop=random_crop, read=read)
                for read in ("mmap", "pread")]
        sets.append(data.LogMelCrops(tiny_cache, subset, frames=frames, random_crop=random_crop, use_packed=False))
        for i in range(len(subset)):
            items = []
            for dataset in sets:
                torch.manual_seed(10 + i)
                items.append(dataset[i][0])
            assert torch.equal(items[0], items[1]) and torch.equal(items[0], items[2]), (frames, i)
    with pytest.raises(ValueError, match="read='disk'"):
        data.LogMelCrops(tiny_cache, subset, read="disk")


def test_training_batches_choose_the_order_and_block_reads_give_the_same_items(tiny_cache, monkeypatch):
    df = packed_cache(tiny_cache, monkeypatch)
    dcfg = {"order": "auto", "block_clips": 4, "open_blocks": 2}
    dataset = data.LogMelCrops(tiny_cache, df, frames=50, random_crop=True)
    assert isinstance(data.training_batches(dataset, dcfg, 8, 0), data.EpochBatches)  # fits in RAM: random
    assert dataset.read == "mmap" and dataset.blocks is None and not dataset.batch_reads  # item reads, as before
    monkeypatch.setattr(data, "physical_memory", lambda: 1000)  # a pack larger than RAM
    assert isinstance(data.training_batches(dataset, {**dcfg, "order": "random"}, 8, 0), data.EpochBatches)
    assert dataset.read in ("direct", "pread") and dataset.batch_reads  # random crops from disk: batch reads
    block = data.training_batches(dataset, dcfg, 8, 0)
    assert dataset.read == "pread"  # block order: through the page cache
    assert isinstance(block, data.BlockBatches) and len(block) == 3 and dataset.blocks is not None
    plain = data.LogMelCrops(tiny_cache, df, frames=50, random_crop=True)
    for i in block.epoch(0)[0]:  # the read-ahead advice changes how, not what, is read
        torch.manual_seed(i)
        a = dataset[i][0]
        torch.manual_seed(i)
        assert torch.equal(a, plain[i][0])
    with pytest.raises(ValueError, match="data.order='shuffled'"):
        data.training_batches(dataset, {**dcfg, "order": "shuffled"}, 8, 0)
    files = data.LogMelCrops(tiny_cache, df, use_packed=False)
    with pytest.raises(ValueError, match="needs the packed cache"):
        data.training_batches(files, {**dcfg, "order": "block"}, 8, 0)


def test_block_order_resumes_exactly_and_two_processes_follow_one(tiny_cache, tmp_path):
    """MSN in block order (blocks of 5 clips, 2 open): a run stopped mid-epoch and resumed ends with the same
    weights as a straight run, and 2 torchrun processes follow the 1-process run (same losses)."""
    import csv
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    data.pack_logmels(tiny_cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def run(out, *extra, launcher=(sys.executable,)):
        args = ["pretrain_msn.py", "--config", "config/demo_msn.yaml", f"data.cache={tiny_cache}",
                f"train.out_dir={out}", "model.crop_frames=32", "model.patch=[16,8]", "model.width=16",
                "model.depth=1", "model.heads=2", "msn.num_prototypes=8", "msn.hidden_dim=32", "msn.output_dim=16",
                "msn.focal_views=2", "aug.rand_size=[64,32]", "aug.focal_size=[64,16]",
                "aug.running_norm_epoch_samples=2", "aug.mixup_memory=16", "optim.batch_size=8",
                "optim.warmup_epochs=1", "train.log_every=1", "msn.freeze_prototypes=false", "data.order=block",
                "data.block_clips=5", "data.open_blocks=2", "data.num_workers=0", *extra]
        done = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def log(out):
        with open(out / "log.csv") as f:
            return [(r["step"], float(r["loss"])) for r in csv.DictReader(f) if r["loss"]]

    run(tmp_path / "a", "train.epochs=2")
    run(tmp_path / "b", "train.epochs=2", "train.max_steps=4")
    run(tmp_path / "b", "train.epochs=2", "--resume")
    a = torch.load(tmp_path / "a" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt_last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6 and log(tmp_path / "a") == log(tmp_path / "b")
    for part in ("online", "target", "prototypes"):
        for key, value in a["modules"][part].items():
            assert torch.equal(value, b["modules"][part][key]), (part, key)
    run(tmp_path / "one", "train.epochs=1")
    run(tmp_path / "two", "train.epochs=1",
        launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    one, two = log(tmp_path / "one"), log(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == ["1", "2", "3"]
    assert np.allclose([x for _, x in one], [x for _, x in two], rtol=1e-4)


def keyed_loader(dataset, batches, seed=0, first_step=0, rank=0, world=1, workers=0):
    """Process `rank`'s share of global `batches` as trainer.epoch_loader reads them (KeyedBatches + KeyedItems)."""
    from torch.utils.data import DataLoader

    import randomness
    keyed = randomness.KeyedBatches([b[rank::world] for b in batches], seed, first_step, rank, world)
    return DataLoader(randomness.KeyedItems(dataset), batch_sampler=keyed, num_workers=workers,
                      collate_fn=randomness.KeyedItems.collate)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batch_reads_read_the_keyed_crop_by_pread_memory_map_and_per_clip_files(tiny_cache, monkeypatch, dtype):
    monkeypatch.setattr(data, "SHARD_BYTES", 7 * 120 * 64 * 4)  # several shards
    df = data.read_manifest(tiny_cache)
    data.pack_logmels(tiny_cache, dtype=dtype)
    labels = data.LabelMap.from_labels(df.label)
    subset = df.iloc[[3, 20, 11, 7, 3]].reset_index(drop=True)  # a clip twice
    positions, key = [4, 0, 9, 2, 5], (7, 12)
    u = np.random.default_rng([7, 12, data.CROP_DRAW]).random(10)[positions]  # the draw, by hand
    for frames, random_crop in [(50, True), (96, False), (200, True)]:
        sets = [data.LogMelCrops(tiny_cache, subset, labels, frames=frames, random_crop=random_crop, read=read,
                                 use_packed=packed, batch_reads=True, read_threads=threads)
                for read, packed, threads in [("mmap", True, 1), ("pread", True, 1), ("pread", True, 3),
                                              ("mmap", False, 1)][:4 if dtype == "float32" else 3]]  # files: f32
        batches = [dataset.read_batch(list(range(5)), key, positions) for dataset in sets]
        logmel, y = batches[0]
        assert logmel.shape == (5, 1, 64, frames) and logmel.dtype == torch.float32
        assert y.tolist() == labels.encode(subset.label).tolist()
        for other in batches[1:]:
            assert torch.equal(other[0], logmel) and torch.equal(other[1], y)
        for k, path in enumerate(subset.logmel):
            clip = np.load(tiny_cache / path).astype(dtype).astype(np.float32)  # [64, 120]
            start = int(u[k] * (120 - frames + 1)) if random_crop and frames < 120 else 0
            want = np.full((64, frames), LOG_SILENCE, dtype=np.float32)
            want[:, :min(frames, 120)] = clip[:, start:start + frames]
            np.testing.assert_array_equal(logmel[k, 0].numpy(), want)
        if frames == 50:  # the same clip at two positions: two crops
            assert not torch.equal(logmel[0], logmel[4])


def direct_works(folder) -> bool:
    """Whether `folder`'s file system takes O_DIRECT reads (not tmpfs)."""
    fd = data.open_direct(folder / "manifest.csv")
    if fd is not None:
        data.os.close(fd)
    return fd is not None


@pytest.fixture
def direct_ok(monkeypatch):
    """O_DIRECT allowed again for this test (a test that simulates its refusal turns it off in this process)."""
    monkeypatch.setitem(data._DIRECT, "ok", True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_direct_batch_reads_equal_buffered_pread_and_memory_map(tiny_cache, monkeypatch, dtype, direct_ok):
    """O_DIRECT reads of the 4 KB-aligned span around each crop: the same crops as pread and the memory map, for
    crops at unaligned offsets, crops that end a clip and a shard file, and clips shorter than the crop."""
    if not direct_works(tiny_cache):
        pytest.skip("no O_DIRECT on this platform or file system (the fallback is tested below)")
    monkeypatch.setattr(data, "SHARD_BYTES", 7 * 120 * 64 * 4)  # shards of 7 float32 clips (14 float16)
    df = data.read_manifest(tiny_cache)
    data.pack_logmels(tiny_cache, dtype=dtype)
    reads = []
    monkeypatch.setattr(data, "read_direct", lambda *a, _real=data.read_direct: reads.append(a[2:]) or _real(*a))
    positions = list(range(24))
    for frames in (50, 96, 120, 200):  # 120: whole clips; 200: every clip shorter than the crop
        sets = [data.LogMelCrops(tiny_cache, df, frames=frames, random_crop=True, read=read, batch_reads=True,
                                 read_threads=threads)
                for read, threads in [("mmap", 1), ("pread", 1), ("direct", 1), ("direct", 4)]]
        for key in [(0, 1), (3, 9)]:
            want = sets[0].read_batch(positions, key, positions)[0]
            for dataset in sets[1:]:
                assert torch.equal(dataset.read_batch(positions, key, positions)[0], want), (frames, key)
        starts = sets[0].crop_starts(np.full(24, 120), (0, 1), np.arange(24))
        assert frames >= 120 or (starts > 0).any()
    assert len(reads) == 4 * 2 * 2 * 24 and data._DIRECT["ok"]  # every crop of the direct sets read with O_DIRECT
    offsets = np.array([offset for offset, _ in reads])
    assert (offsets % data.DIRECT_ALIGN != 0).any()  # crops at unaligned offsets
    packed = sets[0].packed
    ends = {int(packed.maps[s].shape[0]) * packed.frame_bytes for s in range(len(packed.maps))}
    assert any(offset + size in ends for offset, size in reads)  # crops that end at a shard's last byte


def test_direct_reads_fall_back_to_buffered_pread_where_refused(tiny_cache, monkeypatch, direct_ok):
    """A file system that refuses O_DIRECT at open (tmpfs) or at the first read (EINVAL): a warning once, the same
    crops by buffered pread, and training_batches keeps `pread` for random order on a pack larger than RAM."""
    import errno
    import fcntl
    import os
    import warnings
    df = packed_cache(tiny_cache, monkeypatch)
    positions = list(range(24))
    want = data.LogMelCrops(tiny_cache, df, frames=50, random_crop=True, read="pread",
                            batch_reads=True).read_batch(positions, (2, 5), positions)[0]
    real_open, real_preadv = os.open, os.preadv

    def refuse_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def refuse_read(fd, buffers, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(data, "physical_memory", lambda: 1000)  # a pack larger than RAM
    for patch in [("open", refuse_open), ("preadv", refuse_read)]:
        data._DIRECT["ok"] = True
        with monkeypatch.context() as m:
            m.setattr(os, *patch)
            dataset = data.LogMelCrops(tiny_cache, df, frames=50, random_crop=True, read="direct",
                                       batch_reads=True, read_threads=3)
            with pytest.warns(RuntimeWarning, match="O_DIRECT reads refused"):
                got = dataset.read_batch(positions, (2, 5), positions)[0]
            assert torch.equal(got, want) and not data._DIRECT["ok"], patch[0]
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # said once
                assert torch.equal(dataset.read_batch(positions, (2, 5), positions)[0], want)
            data._DIRECT["ok"] = True
            with pytest.warns(RuntimeWarning, match="O_DIRECT reads refused"):
                data.training_batches(dataset, {"order": "random", "block_clips": 4, "open_blocks": 2}, 8, 0)
            assert dataset.read == "pread" and dataset.batch_reads, patch[0]
    data._DIRECT["ok"] = True
    data.training_batches(dataset, {"order": "random", "block_clips": 4, "open_blocks": 2}, 8, 0)
    assert dataset.read == ("direct" if direct_works(tiny_cache) else "pread")
    data.training_batches(dataset, {"order": "block", "block_clips": 4, "open_blocks": 2}, 8, 0)
    assert dataset.read == "pread"  # block order reads ahead through the page cache


def test_batch_reads_depend_on_seed_step_and_position_not_on_processes_workers_or_resume(tiny_cache, monkeypatch):
    df = packed_cache(tiny_cache, monkeypatch)
    make = lambda: data.LogMelCrops(tiny_cache, df, frames=50, random_crop=True, read="pread",  # noqa: E731
                                    batch_reads=True)
    batches = data.EpochBatches(len(df), 8, seed=3).epoch(0)
    one = [x for x, _ in keyed_loader(make(), batches, seed=3)]
    assert len(one) == 3 and all(x.shape == (8, 1, 64, 50) for x in one)
    two = [list(keyed_loader(make(), batches, seed=3, rank=r, world=2)) for r in (0, 1)]
    for step, x in enumerate(one):  # process r reads positions r::2 of each global batch
        assert torch.equal(two[0][step][0], x[0::2]) and torch.equal(two[1][step][0], x[1::2])
    workers = [x for x, _ in keyed_loader(make(), batches, seed=3, workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(workers, one))
    resumed = [x for x, _ in keyed_loader(make(), batches[2:], seed=3, first_step=2)]  # resumed at step 2
    assert len(resumed) == 1 and torch.equal(resumed[0], one[2])
    other_seed = [x for x, _ in keyed_loader(make(), batches, seed=4)]
    assert not torch.equal(other_seed[0], one[0])
    same_clips = [x for x, _ in keyed_loader(make(), [batches[0]] * 2, seed=3)]  # same clips, next step
    assert torch.equal(same_clips[0], one[0]) and not torch.equal(same_clips[1], one[0])


def test_block_order_with_batch_reads_visits_every_clip_once_as_a_pure_function_of_seed_and_epoch(tiny_cache,
                                                                                                  monkeypatch):
    df = packed_cache(tiny_cache, monkeypatch).assign(label=lambda d: d.id)  # the labels name the clips read
    clip_ids = data.LabelMap.from_labels(df.label)
    dcfg = {"order": "block", "block_clips": 4, "open_blocks": 2}

    def epoch(e, seed=0):
        dataset = data.LogMelCrops(tiny_cache, df, clip_ids, frames=50, random_crop=True)
        batches = data.training_batches(dataset, dcfg, 8, seed)
        assert dataset.batch_reads and dataset.read == "pread" and isinstance(batches, data.BlockBatches)
        loaded = list(keyed_loader(dataset, batches.epoch(e), seed=seed, first_step=e * len(batches)))
        return torch.cat([x for x, _ in loaded]), torch.cat([y for _, y in loaded]), batches.epoch(e)

    x0, y0, order0 = epoch(0)
    assert sorted(y0.tolist()) == list(range(24))  # 24 clips = 3 batches of 8: every clip once
    assert y0.tolist() == clip_ids.encode(df.id[sum(order0, [])]).tolist()  # in the sampler's order
    again = epoch(0)
    assert torch.equal(again[0], x0) and torch.equal(again[1], y0)  # rebuilt from scratch: the same epoch
    x1, y1, _ = epoch(1)
    assert sorted(y1.tolist()) == list(range(24)) and y1.tolist() != y0.tolist()
    assert epoch(0, seed=1)[1].tolist() != y0.tolist()
    # the blocks' read-ahead changes how, not what, is read: random-order batch reads of the same keys
    plain = data.LogMelCrops(tiny_cache, df, clip_ids, frames=50, random_crop=True, batch_reads=True)
    assert torch.equal(torch.cat([x for x, _ in keyed_loader(plain, order0)]), x0)


def test_assign_splits_is_stratified_seeded_and_keeps_unlabelled_clips_in_train():
    labels = ["a"] * 10 + ["b"] * 4 + [""] * 3
    splits = data.assign_splits(labels, (70, 10, 20), seed=0)
    count = lambda label, split: sum(lab == label and s == split for lab, s in zip(labels, splits))
    assert [count("a", s) for s in ("train", "valid", "test")] == [7, 1, 2]   # round(10 * 0.2), round(10 * 0.1)
    assert [count("b", s) for s in ("train", "valid", "test")] == [3, 0, 1]   # round(0.8) = 1, round(0.4) = 0
    assert splits[14:] == ["train"] * 3
    assert splits == data.assign_splits(labels, (70, 10, 20), seed=0)
    assert splits != data.assign_splits(labels, (70, 10, 20), seed=1)
    with pytest.raises(ValueError, match="summing to 100, got 70,10,10"):
        data.assign_splits(labels, (70, 10, 10))
