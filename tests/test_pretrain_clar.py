"""pretrain_clar.py: config resolution, labelled subsets, the ratio-keeping sampler, training, checkpoints, resume."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import models
import pretrain_clar
from config import ConfigError
from trainer import NonFiniteLoss

DEMO = "config/demo_clar.yaml"


def tiny_args(cache, out, *extra) -> list[str]:
    """The demo config shrunk to seconds: width 8, 0.25 s crops, 20 training clips, batch 10 (2 steps/epoch)."""
    return ["--config", DEMO, f"data.cache={cache}", f"train.out_dir={out}", "model.width=8",
            "model.clip_seconds=0.25", "model.proj_hidden=32", "model.proj_dim=16", "optim.batch_size=10",
            "data.num_workers=0", "train.log_every=1", "train.eval_every=1",
            "aug.names=[time_shift, white_noise]", *extra]


def read_log(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_resolve_config_applies_encoder_alias_and_rejects_unknown_and_moved_keys(tmp_path):
    cfg = pretrain_clar.resolve_config(DEMO, ["encoder=1d"])
    assert cfg["model"]["arch"] == "resnet18_1d" and cfg["seed"] == 0 and cfg["optim"]["batch_size"] == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lars_eta: 0.001\n")
    with pytest.raises(ConfigError, match="optim.lars_eta"):
        pretrain_clar.resolve_config(str(bad), [])
    with pytest.raises(ConfigError, match="mode"):
        pretrain_clar.resolve_config(DEMO, ["mode=semi"])
    # one nested merge rule: a key the YAML omits can still be overridden
    bad.write_text("mode: clar\n")
    assert pretrain_clar.resolve_config(str(bad), ["train.final_probe=false"])["train"]["final_probe"] is False
    # keys that moved name their new place
    bad.write_text("train:\n  seed: 3\n")
    with pytest.raises(ConfigError, match="train.seed' moved to the top level"):
        pretrain_clar.resolve_config(str(bad), [])
    with pytest.raises(ConfigError, match="optim.batch_size"):
        pretrain_clar.resolve_config(DEMO, ["train.batch_size=8"])


def test_paper_config_resolves_to_the_paper_setup():
    cfg = pretrain_clar.resolve_config("config/clar.yaml", [])
    assert cfg["model"]["arch"] == "resnet18_2d" and cfg["optim"]["batch_size"] == 1024
    assert cfg["train"]["epochs"] == 1000 and cfg["optim"]["weight_decay"] == 1e-4 and cfg["loss"]["tau"] == 0.5
    assert pretrain_clar.resolve_config("config/clar_1d.yaml", [])["model"]["arch"] == "resnet18_1d"


def test_training_targets_are_stratified_and_masked():
    labels = np.repeat(np.arange(4), 25)
    targets = pretrain_clar.training_targets(labels, "clar", 0.2, seed=1337)
    labelled = targets >= 0
    assert labelled.sum() == 20 and all((targets[labels == c] >= 0).sum() == 5 for c in range(4))
    assert (targets[labelled] == labels[labelled]).all()
    assert (pretrain_clar.training_targets(labels, "selfsupervised", 1.0, 0) == -1).all()
    assert (pretrain_clar.training_targets(labels, "supervised", 1.0, 0) == labels).all()


def test_training_lowers_the_loss_and_writes_outputs(tiny_cache, tmp_path):
    out = tmp_path / "run"
    results = pretrain_clar.main(tiny_args(tiny_cache, out, "train.epochs=8", "optim.lr=1.0"))
    rows = [r for r in read_log(out / "log.csv") if r["loss"]]
    assert len(rows) == 16
    first = np.mean([float(r["loss"]) for r in rows[:3]])
    last = np.mean([float(r["loss"]) for r in rows[-3:]])
    assert last < first - 0.1, (first, last)
    assert (out / "config.yaml").is_file() and (out / "results.json").is_file()
    assert 0 <= results["probe_test_acc"] <= 1 and results["step"] == 16
    ckpt = torch.load(out / "ckpt_last.pt", weights_only=False)
    assert ckpt["kind"] == "clar" and ckpt["epoch"] == 8 and ckpt["step"] == 16
    encoder = models.build_encoder(ckpt["config"])
    encoder.load_state_dict(ckpt["encoder"])
    assert encoder.input_kind == "wave" and encoder.embed_dim == 64
    encoder.eval()
    assert encoder.embed(torch.randn(2, 16000)).shape == (2, 64)


@pytest.mark.parametrize("mode", pretrain_clar.MODES)
@pytest.mark.parametrize("encoder", ["2d", "1d"])
def test_every_mode_and_encoder_runs_a_step(tiny_cache, tmp_path, mode, encoder):
    results = pretrain_clar.main(tiny_args(tiny_cache, tmp_path / "run", f"mode={mode}", f"encoder={encoder}",
                                           "label_fraction=0.5", "train.max_steps=1", "train.final_probe=false"))
    assert results["step"] == 1 and results["arch"] == f"resnet18_{encoder}"
    ckpt = torch.load(tmp_path / "run" / "ckpt_last.pt", weights_only=False)
    assert ("classifier.weight" not in ckpt["modules"]["net"]) == (mode == "selfsupervised")
    row = read_log(tmp_path / "run" / "log.csv")[0]
    assert (float(row["ntxent"]) == 0) == (mode == "supervised")
    assert (float(row["ce"]) == 0) == (mode == "selfsupervised")


def test_resume_is_exact(tiny_cache, tmp_path):
    """2 epochs straight == 1 epoch, stop, --resume, 1 more epoch: identical weights and optimiser state."""
    straight = tmp_path / "straight"
    pretrain_clar.main(tiny_args(tiny_cache, straight, "train.epochs=2", "train.final_probe=false", "encoder=1d",
                                 "aug.names=[fade, time_mask, time_shift, mixed_noise]"))
    split = tmp_path / "split"
    common = ["train.epochs=2", "train.final_probe=false", "encoder=1d",
              "aug.names=[fade, time_mask, time_shift, mixed_noise]"]
    first = pretrain_clar.main(tiny_args(tiny_cache, split, *common, "train.max_steps=2"))
    assert first["step"] == 2 and first["epoch"] == 1
    pretrain_clar.main(["--resume", *tiny_args(tiny_cache, split, *common)])
    a = torch.load(straight / "ckpt_last.pt", weights_only=False)
    b = torch.load(split / "ckpt_last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["modules"]["net"].items():
        assert torch.equal(value, b["modules"]["net"][key]), f"net.{key} differs after resume"
    momentum_a = [s["momentum_buffer"] for s in a["optimizers"]["lars"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizers"]["lars"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    log = read_log(split / "log.csv")
    assert [r["step"] for r in log if r["loss"]] == ["1", "2", "3", "4"]


def test_non_finite_loss_stops_with_a_clear_error(tiny_cache, tmp_path):
    with pytest.raises(NonFiniteLoss, match="step 0"):
        pretrain_clar.main(tiny_args(tiny_cache, tmp_path / "run", "loss.tau=0.0", "mode=selfsupervised"))


def test_paper_config_builds_the_full_model_and_runs_a_step_on_cpu(tiny_cache, tmp_path):
    results = pretrain_clar.main(["--config", "config/clar.yaml", f"data.cache={tiny_cache}", "data.classes=null",
                                  "data.num_workers=0", f"train.out_dir={tmp_path}", "optim.batch_size=8",
                                  "train.max_steps=1", "train.final_probe=false"])
    assert results["step"] == 1
    ckpt = torch.load(tmp_path / "ckpt_last.pt", weights_only=False)
    encoder = models.build_encoder(ckpt["config"])
    encoder.load_state_dict(ckpt["encoder"])
    n_params = sum(p.numel() for p in encoder.parameters())
    assert encoder.embed_dim == 512 and 11.0e6 < n_params < 11.3e6  # torchvision resnet18 minus its fc: 11.18M


def test_supcon_option_trains_and_bad_choice_is_refused(tiny_cache, tmp_path):
    results = pretrain_clar.main(tiny_args(tiny_cache, tmp_path / "run", "loss.contrastive=supcon",
                                           "label_fraction=0.5", "train.max_steps=2", "train.final_probe=false"))
    assert results["step"] == 2
    assert float(read_log(tmp_path / "run" / "log.csv")[0]["ntxent"]) > 0
    with pytest.raises(ConfigError, match="loss.contrastive"):
        pretrain_clar.resolve_config(DEMO, ["loss.contrastive=triplet"])


def test_resume_flag_does_not_swallow_the_next_override(tiny_cache, tmp_path):
    """Regression: `--resume key=value` used to read key=value as the checkpoint path."""
    args = tiny_args(tiny_cache, tmp_path / "run", "train.final_probe=false", "train.epochs=1")
    pretrain_clar.main(args)
    results = pretrain_clar.main([*args, "--resume", "train.epochs=2"])
    assert results["step"] == 4 and read_log(tmp_path / "run" / "log.csv")[-1]["epoch"] == "2"
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt: not a readable checkpoint"):
        pretrain_clar.main([*args, "--resume-from", str(tmp_path / "broken.pt")])


class _FixedViews:
    """Stands in for BatchWaveAugment: draw() hands out the fixed views in order, apply() returns them."""

    def __init__(self, *views):
        self.views = list(views)

    def draw(self, *_):
        return self.views.pop(0)

    def apply(self, wave, view, rows):
        return view[rows]


def _clar_step(arch: str, joint_views: bool):
    """pretrain_clar.train_step once on fixed views with a tiny ClarNet (projection BN on); returns (loss, the net
    after the step with its gradients, a copy from before, the inputs)."""
    import copy

    import optim
    import trainer

    cfg = pretrain_clar.resolve_config(DEMO, ["model.width=4", "model.clip_seconds=0.1", "model.proj_hidden=8",
                                              "model.proj_dim=4", "model.proj_batch_norm=true",
                                              f"model.joint_views={str(joint_views).lower()}"])
    cfg["model"]["arch"] = arch
    torch.manual_seed(0)
    wave1, wave2 = torch.randn(6, 1600), 3 * torch.randn(6, 1600) + 0.5  # views with other batch statistics
    targets, labels = torch.tensor([0, 2, -1, 1, -1, 0]), torch.tensor([0, 2, 1, 1, 2, 0])
    net = models.ClarNet(models.build_resnet(cfg["model"]), cfg["model"], 3, with_classifier=True).train()
    before = copy.deepcopy(net)
    env = trainer.Env(cfg, 0, 1, torch.device("cpu"), steps_per_epoch=1)
    lars = optim.LARS(optim.decay_groups(list(net.named_parameters()), 1e-4), lr=0.1, momentum=0.9, eta=0.001)
    adam = torch.optim.Adam(net.online.parameters(), lr=1e-3)
    out = pretrain_clar.train_step(env=env, net=net, model=net, lars=lars, adam=adam, views=_FixedViews(wave1, wave2),
                                   batch=(wave1, targets, labels), step=3)
    return out["loss"], net, before, (wave1, wave2, targets, labels)


@pytest.mark.parametrize("arch", ["resnet18_1d", "resnet18_2d"])
def test_clar_step_runs_each_view_through_encoder_and_projection_on_its_own(arch):
    """CLAR's shared_step (semi_supervised.py): h1 = forward(aud1); h2 = forward(aud2); z1, y1 = projection(h1);
    z2, y2 = projection(h2). Written here by hand, one view per call: same loss and gradients as train_step."""
    import losses

    loss, net, ref, (wave1, wave2, targets, labels) = _clar_step(arch, joint_views=False)
    h1, h2 = ref.encoder(wave1), ref.encoder(wave2)
    z1, z2 = ref.projection(h1), ref.projection(h2)
    ref_loss = losses.clar_loss(z1, z2, ref.classifier(z1), ref.classifier(z2), targets, "clar", 0.5, 1.0)["loss"]
    (ref_loss + torch.nn.functional.cross_entropy(ref.online(h1.detach()), labels)).backward()
    assert loss == pytest.approx(ref_loss.item(), abs=1e-5)
    ref_params = dict(ref.named_parameters())
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert abs(_clar_step(arch, joint_views=True)[0] - loss) > 1e-4  # one BN batch for both views: another loss
