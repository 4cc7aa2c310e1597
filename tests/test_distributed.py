"""torchrun with 2 CPU processes (gloo) trains like 1 process on the same global batch: MSN, CLAR, BYOL-A, M2D.

Every training draw (crops, augmentation parameters, MSN's token mask) is keyed by (seed, step, global batch
position), the mixup memory and RunningNorm see the global batch, batch norm and dropout are global
(distributed.GlobalBatchNorm, distributed.GlobalDropout), and the losses reduce over processes; so the two runs
may differ only by float rounding. The one intended difference: MSN sums the prototypes' gradient over processes
(msn repo), i.e. 2x the 1-process gradient, which AdamW almost cancels (only its eps sees the scale).
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

import distributed
import pretrain_clar
import pretrain_msn
from tests.conftest import ROOT
from tests.test_pretrain_byola import tiny as byola_tiny
from tests.test_pretrain_clar import tiny_args as clar_tiny
from tests.test_pretrain_msn import tiny as msn_tiny


def torchrun(script: str, args: list[str], processes: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           script, *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def read_rows(path, skip=("clips_per_s", "seconds")) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in skip} for row in csv.DictReader(f)]


def assert_same_log(one, two, rtol):
    assert len(one) == len(two) and len(one) > 0
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            if a[key] == "" or b[key] == "":
                assert a[key] == b[key], key
            else:
                assert float(b[key]) == pytest.approx(float(a[key]), rel=rtol, abs=1e-6), (key, a, b)


def assert_close_state(one: dict, two: dict, atol: float, vector_atol: float | None = None):
    """Weight matrices and kernels within atol; vectors (biases, norms, running stats) within vector_atol.

    Some biases have a zero gradient in exact arithmetic (a bias right before a batch or layer norm, the key bias
    of attention); Adam turns the rounding noise of that zero into steps of about +-lr (up to a few lr in the first
    steps, where the bias correction is large), so such vectors can only agree to a few lr * steps.
    """
    for key, value in one.items():
        if value.is_floating_point():
            tol = atol if value.ndim > 1 or vector_atol is None else vector_atol
            assert torch.allclose(value, two[key], atol=tol, rtol=1e-4), (key, (value - two[key]).abs().max())
        else:
            assert torch.equal(value, two[key]), key


def test_msn_two_processes_follow_the_one_process_trajectory(tiny_cache, tmp_path):
    """Global batch 8 (optim.batch_size is global): 1 x 8 in this process vs 2 x 4 under torchrun; RunningNorm,
    mixup, batch norm all on."""
    common = ["train.epochs=1", "msn.freeze_prototypes=false"]
    one = pretrain_msn.main(msn_tiny(tiny_cache, tmp_path / "one", "optim.batch_size=8", *common))
    torchrun("pretrain_msn.py", msn_tiny(tiny_cache, tmp_path / "two", "optim.batch_size=8", *common))
    assert one["step"] == 3
    assert_same_log(read_rows(tmp_path / "one" / "log.csv"), read_rows(tmp_path / "two" / "log.csv"), rtol=1e-4)
    a = torch.load(tmp_path / "one" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "ckpt_last.pt", weights_only=False)
    assert (a["step"], b["step"]) == (3, 3) and len(b["per_process"]) == 2
    lr_steps = 3 * 2e-3  # steps x peak lr of the tiny demo config
    assert_close_state(a["modules"]["online"], b["modules"]["online"], atol=1e-4, vector_atol=lr_steps)
    assert_close_state(a["modules"]["target"], b["modules"]["target"], atol=1e-5, vector_atol=lr_steps)
    assert_close_state(a["modules"]["prototypes"], b["modules"]["prototypes"], atol=1e-5)
    # both processes hold the same view state (mixup memory of the global batch, RunningNorm statistics)
    views = [s["state"]["views"] for s in b["per_process"]]
    assert torch.equal(views[0]["mixup"]["memory"], views[1]["mixup"]["memory"])
    one_views = a["per_process"][0]["state"]["views"]
    assert torch.allclose(views[0]["mixup"]["memory"], one_views["mixup"]["memory"], atol=1e-5)
    assert views[0]["norm"]["n"] == a["per_process"][0]["state"]["views"]["norm"]["n"] == 20
    # the 2-process checkpoint resumes in one process
    pretrain_msn.main(msn_tiny(tiny_cache, tmp_path / "two", "optim.batch_size=8", "train.epochs=2",
                               "msn.freeze_prototypes=false") + ["--resume"])
    assert torch.load(tmp_path / "two" / "ckpt_last.pt", weights_only=False)["step"] == 6


def test_clar_two_processes_follow_the_one_process_trajectory(tiny_cache, tmp_path):
    """Global batch 10 (5 labelled): 1 x 10 vs 2 x 5, so the processes hold 3 and 2 labelled clips; 2-D ResNet
    with batch norm, NT-Xent over both processes' projections, every cheap augmentation on."""
    common = ["train.epochs=2", "train.final_probe=false", "label_fraction=0.5", "mode=clar",
              "aug.names=[fade, time_mask, time_shift, white_noise, mixed_noise]", "aug.p=0.8",
              "model.width=16"]  # at width 8 per-view batch norm over 5 clips a process amplifies float rounding
    pretrain_clar.main(clar_tiny(tiny_cache, tmp_path / "one", *common))
    torchrun("pretrain_clar.py", clar_tiny(tiny_cache, tmp_path / "two", *common))
    one, two = read_rows(tmp_path / "one" / "log.csv"), read_rows(tmp_path / "two" / "log.csv")
    assert [r["step"] for r in one if r["loss"]] == ["1", "2", "3", "4"]
    assert_same_log(one, two, rtol=1e-4)
    a = torch.load(tmp_path / "one" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "ckpt_last.pt", weights_only=False)
    assert_close_state(a["modules"]["net"], b["modules"]["net"], atol=1e-4)


def test_byola_two_processes_follow_the_one_process_trajectory_with_the_knn_monitor(tiny_cache, tmp_path):
    """BYOL-A under 2 gloo processes: global batch norm, global dropout (p 0.3 in the encoder's MLP: per-process
    masks made the two runs differ at step 1), DDP, the EMA target, the kNN monitor on rank 0 (the starting point
    and every epoch); the same losses and weights as 1 process; its checkpoint resumes in one process."""
    import pretrain_byola
    out = tmp_path / "two"
    common = ["train.epochs=1", f"train.monitor.cache={tiny_cache}", "train.monitor.k=5"]
    pretrain_byola.main(byola_tiny(tiny_cache, tmp_path / "one", *common))
    torchrun("pretrain_byola.py", byola_tiny(tiny_cache, out, *common))
    rows = read_rows(out / "log.csv")
    assert [r["step"] for r in rows if r["knn_acc"]] == ["0", "3"] and [r["step"] for r in rows if r["loss"]] == [
        "1", "2", "3"]
    assert_same_log(read_rows(tmp_path / "one" / "log.csv"), rows, rtol=1e-4)
    a = torch.load(tmp_path / "one" / "ckpt_last.pt", weights_only=False)
    b = torch.load(out / "ckpt_last.pt", weights_only=False)
    assert_close_state(a["modules"]["online"], b["modules"]["online"], atol=1e-4, vector_atol=1e-2)  # 3 steps, lr 1e-3
    ckpt = torch.load(out / "ckpt_last.pt", weights_only=False)
    assert ckpt["step"] == 3 and len(ckpt["per_process"]) == 2
    memories = [s["state"]["views"]["mixup"]["memory"] for s in ckpt["per_process"]]
    assert torch.equal(memories[0], memories[1])  # the views' state is the global batch's in every process
    assert pretrain_byola.main(byola_tiny(tiny_cache, out, "train.epochs=2") + ["--resume"])["step"] == 6


def test_global_batch_norm_equals_batch_norm_of_the_whole_batch(tmp_path):
    """distributed.GlobalBatchNorm in 2 gloo processes (halves of one batch): outputs, gradients and running stats
    of torch's BatchNorm2d on the whole batch."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 5) * 2 + 1
    weight = torch.randn(6, 3, 4, 5)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    xg = x.clone().requires_grad_(True)
    reference = bn(xg)
    (reference * weight).sum().backward()
    torch.save({"x": x, "weight": weight, "state": state}, tmp_path / "inputs.pt")
    script = tmp_path / "bn.py"
    script.write_text(f"""
import torch, torch.distributed as dist, distributed
rank, world, _ = distributed.init_distributed()
inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
bn = distributed.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
bn.load_state_dict({{"0." + k: v for k, v in inputs["state"].items()}})
x = inputs["x"][rank::world].clone().requires_grad_(True)
out = bn(x)
(out * inputs["weight"][rank::world]).sum().backward()
grads = [p.grad for p in bn.parameters()]
for g in grads:
    dist.all_reduce(g)
torch.save({{"out": out.detach(), "x_grad": x.grad, "grads": grads, "state": bn.state_dict()}},
           {str(tmp_path)!r} + f"/out{{rank}}.pt")
""")
    torchrun(str(script), [])
    parts = [torch.load(tmp_path / f"out{r}.pt") for r in range(2)]
    out, x_grad = torch.empty_like(x), torch.empty_like(x)
    for r, part in enumerate(parts):
        out[r::2], x_grad[r::2] = part["out"], part["x_grad"]
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(x_grad, xg.grad, atol=1e-5)
    # parameter gradients: each process's own-loss gradient, summed (the backward all-reduces the statistics)
    assert torch.allclose(parts[0]["grads"][0], bn.weight.grad, atol=1e-4)
    assert torch.allclose(parts[0]["grads"][1], bn.bias.grad, atol=1e-4)
    for key in ("running_mean", "running_var"):
        assert torch.allclose(parts[0]["state"][f"0.{key}"], bn.state_dict()[key], atol=1e-6), key
    assert torch.equal(parts[1]["state"]["0.running_var"], parts[0]["state"]["0.running_var"])


def test_single_process_distributed_helpers_are_identities():
    x = torch.arange(4.0)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert torch.equal(distributed.all_reduce_sum(x.clone()), x) and torch.equal(distributed.gather_with_grad(x), x)
    assert torch.equal(distributed.gather_batch(x), x)


def test_global_dropout_alone_is_nn_dropout_and_converts_in_place():
    """One process: GlobalDropout draws the very mask nn.Dropout draws (same generator state, same numbers);
    convert_dropout swaps every nn.Dropout, keeps p and the train/eval mode."""
    x = torch.randn(6, 10)
    torch.manual_seed(3)
    want = torch.nn.Dropout(0.3)(x)
    torch.manual_seed(3)
    got = distributed.GlobalDropout(0.3)(x)
    assert torch.equal(got, want) and (got == 0).any() and not torch.equal(got, x)
    net = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Sequential(torch.nn.Dropout(0.25))).eval()
    distributed.convert_dropout(net)
    inner = net[1][0]
    assert type(inner) is distributed.GlobalDropout and inner.p == 0.25 and not inner.training


def test_m2d_two_processes_follow_the_one_process_trajectory(tiny_cache, tmp_path):
    """M2D under 2 gloo processes: masks drawn for the global batch (process r keeps rows r::2), the norm_mse loss
    averaged over processes, DDP on the online net and predictor, the EMA target: 1 process's losses and weights."""
    import pretrain_m2d
    from tests.test_pretrain_m2d import tiny as m2d_tiny
    common = ["train.epochs=1", "optim.batch_size=8"]
    pretrain_m2d.main(m2d_tiny(tiny_cache, tmp_path / "one", *common))
    torchrun("pretrain_m2d.py", m2d_tiny(tiny_cache, tmp_path / "two", *common))
    one, two = read_rows(tmp_path / "one" / "log.csv"), read_rows(tmp_path / "two" / "log.csv")
    assert [r["step"] for r in one if r["loss"]] == ["1", "2", "3"]
    assert_same_log(one, two, rtol=1e-4)
    a = torch.load(tmp_path / "one" / "ckpt_last.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "ckpt_last.pt", weights_only=False)
    for name in a["modules"]:
        assert_close_state(a["modules"][name], b["modules"][name], atol=1e-4, vector_atol=1e-2)
