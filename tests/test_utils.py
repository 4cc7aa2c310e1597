"""utils.py: atomic files, checkpoints, CSV log resume, RNG."""
import random

import numpy as np
import pytest
import torch

import utils


def test_atomic_save_and_load_checkpoint_errors(tmp_path):
    utils.atomic_torch_save({"config": {"a": 1}, "step": 3}, tmp_path / "ck" / "ckpt.pt")
    assert utils.load_checkpoint(tmp_path / "ck" / "ckpt.pt")["step"] == 3
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["ckpt.pt"]  # no temp file left
    with pytest.raises(FileNotFoundError, match="nope.pt: checkpoint not found"):
        utils.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt: not a readable checkpoint"):
        utils.load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a checkpoint of this package"):
        utils.load_checkpoint(tmp_path / "other.pt")


def test_csv_log_resume_drops_rows_from_the_resume_step(tmp_path):
    log = utils.CSVLog(tmp_path / "log.csv", ["step", "loss"])
    for step in range(5):
        log.write({"step": step, "loss": 1.0 / (step + 1)})
    utils.CSVLog(tmp_path / "log.csv", ["step", "loss"], resume_step=3).write({"step": 3, "loss": 0.0})
    lines = (tmp_path / "log.csv").read_text().split()
    assert lines == ["step,loss", "0,1", "1,0.5", "2,0.333333", "3,0"]


def test_rng_state_round_trip():
    utils.seed_everything(3)
    state = utils.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    utils.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_single_process_distributed_helpers_are_identities():
    x = torch.arange(4.0)
    assert utils.world_size() == 1 and utils.is_main()
    assert torch.equal(utils.all_reduce_sum(x.clone()), x) and torch.equal(utils.gather_with_grad(x), x)
    assert torch.equal(utils.gather_batch(x), x)


def test_remove_stale_temps_keeps_a_live_writers_temp(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import utils
    from utils import remove_stale_temps, temp_path
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".a.npy.tmp{live.pid}").write_bytes(b"in flight")
        (tmp_path / ".b.npy.tmp99999999").write_bytes(b"killed")
        (tmp_path / ".index.npz.tmp99999999.npz").write_bytes(b"killed")
        (tmp_path / "c.npy").write_bytes(b"done")
        other = tmp_path / ".d.npy.tmp99999999@another-node"  # a live writer elsewhere on a shared file system
        other.write_bytes(b"in flight")
        old = tmp_path / ".e.npy.tmp99999999@another-node"
        old.write_bytes(b"left by a crashed node")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        assert remove_stale_temps(tmp_path) == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.npy.tmp{live.pid}", other.name, "c.npy"]
        assert temp_path(tmp_path / "x.npy").name == f".x.npy.tmp{os.getpid()}@{utils.HOST}"
    finally:
        live.kill()
        live.wait()
