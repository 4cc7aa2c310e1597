"""utils.py: schedules as functions of the step, atomic files, checkpoints, CSV log resume, param groups, RNG."""
import math
import random

import numpy as np
import pytest
import torch

import utils


def test_cosine_and_warmup_cosine_values():
    assert utils.cosine(0, 10, 1.0, 0.0) == 1.0 and utils.cosine(10, 10, 1.0, 0.0) == 0.0
    assert utils.cosine(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert utils.cosine(20, 10, 1.0, 0.1) == pytest.approx(0.1)  # flat after the end
    # MSN: linear start_lr -> lr over the warmup, then cosine lr -> final_lr
    assert utils.warmup_cosine(0, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(2e-4)
    assert utils.warmup_cosine(2, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(6e-4)
    assert utils.warmup_cosine(4, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert utils.warmup_cosine(9, 4, 14, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))


def test_multistep_is_the_seeds_multisteplr():
    milestones = [100, 200, 300, 400]
    assert utils.multistep(99, 1e-4, milestones, 0.1) == pytest.approx(1e-4)
    assert utils.multistep(100, 1e-4, milestones, 0.1) == pytest.approx(1e-5)
    assert utils.multistep(450, 1e-4, milestones, 0.1) == pytest.approx(1e-8)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
    for epoch in range(450):
        assert opt.param_groups[0]["lr"] == pytest.approx(utils.multistep(epoch, 1e-4, milestones, 0.1))
        opt.step()
        sched.step()


def test_ema_momentum_matches_msn_formula():
    ipe, epochs = 10, 800
    total = ipe * epochs
    assert utils.ema_momentum(0, total) == 0.996
    assert utils.ema_momentum(total, total) == pytest.approx(0.996 + total * 0.004 / (1.25 * total))  # 0.9992
    assert utils.ema_momentum(total, total) == pytest.approx(0.9992)


def test_decay_groups_exclude_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    decay, no_decay = utils.decay_groups(net.named_parameters(), 0.04)
    assert [p.shape for p in decay["params"]] == [(4, 3), (2, 4)] and decay["weight_decay"] == 0.04
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"]
    opt = torch.optim.AdamW([decay, no_decay], lr=1.0)
    utils.set_lr(opt, 0.5, weight_decay=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


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


def test_check_finite_names_step_and_checkpoint():
    utils.check_finite(torch.tensor(1.0), 5, None)
    with pytest.raises(utils.NonFiniteLoss, match=r"at step 7;.*last good checkpoint: runs/x/ckpt_last.pt"):
        utils.check_finite(torch.tensor(math.nan), 7, "runs/x/ckpt_last.pt")


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
