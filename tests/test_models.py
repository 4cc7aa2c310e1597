"""Encoders: ViT (MSN) tests are named test_vit_*, ResNet (CLAR) tests test_resnet_*."""
from __future__ import annotations

import torch

import models
from tests.conftest import model_cfg

VIT_B32 = model_cfg({"arch": "vit_b_32", "image_size": 224, "crop_frames": 96, "pretrained": None})
TINY_AUDIO = model_cfg({"arch": "vit_audio", "crop_frames": 32, "n_mels": 64, "patch": [16, 8], "width": 32,
                        "depth": 1, "heads": 2, "mlp_ratio": 2.0, "pos_embed": "sincos"})


_VIT_B32_CACHE = []


def _vit_b32():
    """The full ViT-B/32, built once per test session (88M parameters)."""
    if not _VIT_B32_CACHE:
        torch.manual_seed(0)
        _VIT_B32_CACHE.append(models.build_encoder({"model": VIT_B32}).eval())
    return _VIT_B32_CACHE[0]


def test_vit_b32_drops_tokens_with_one_permutation_for_the_batch():
    vit = _vit_b32()
    x = torch.randn(2, 1, 224, 224)
    # patch_drop 0.15 keeps floor(49 * 0.85) = 41 patch tokens plus CLS (facebookresearch/msn)
    captured = {}
    original = models.drop_tokens

    def spy(tokens, patch_drop):
        captured["in"] = tokens
        captured["out"] = original(tokens, patch_drop)
        return captured["out"]

    models.drop_tokens = spy
    try:
        torch.manual_seed(1)
        out = vit.tokens(x, patch_drop=0.15)
    finally:
        models.drop_tokens = original
    assert out.shape == (2, 42, 768)
    torch.manual_seed(1)
    keep = torch.randperm(49)[:41]
    expected = torch.cat([captured["in"][:, :1], captured["in"][:, 1:][:, keep]], dim=1)
    assert torch.equal(captured["out"], expected)  # CLS first, the same kept tokens for every sample
    assert vit(x, patch_drop=0.15).shape == (2, 768)


def test_vit_pos_embed_interpolation_keeps_224_and_resizes_96():
    vit = _vit_b32()
    pos = vit.vit.encoder.pos_embedding
    assert vit.pos_embed_for((7, 7)) is pos
    small = vit.pos_embed_for((3, 3))
    assert small.shape == (1, 10, 768) and torch.equal(small[:, 0], pos[:, 0])
    assert vit.tokens(torch.randn(1, 1, 96, 96)).shape == (1, 10, 768)
    # interpolation of a constant grid is that constant
    const = torch.ones(1, 50, 4)
    assert torch.allclose(models.resize_pos_embed(const, (7, 7), (3, 3)), torch.ones(1, 10, 4), atol=1e-6)


def test_vit_b32_embed_modes_and_stem_copy():
    vit = _vit_b32()
    x = torch.randn(1, 1, 64, 200)
    assert vit.embed(x, long="pad", pool="mean").shape == (1, 768)
    # pad: 64 mel bins and the first 224 frames in the top-left corner of zeros
    padded = vit.prepare(torch.ones(1, 1, 64, 300), "pad")
    assert padded.shape == (1, 1, 224, 224) and padded.sum() == 64 * 224
    # chunk = mean of the crop_frames chunks, each resized like a training crop
    chunks = [x[..., :96], x[..., 96:192], x[..., 104:]]  # the last chunk ends with the clip
    expected = torch.stack([vit.embed(c, long="resize") for c in chunks]).mean(0)
    assert torch.allclose(vit.embed(x, long="chunk"), expected, atol=1e-5)


def test_vit_b32_loads_local_torchvision_weights(tmp_path):
    vit = _vit_b32()
    state = {k: v.clone() for k, v in vit.vit.state_dict().items()}
    state["encoder.pos_embedding"] += 1.0
    state["heads.head.weight"] = torch.zeros(1000, 768)  # the ImageNet classifier is ignored
    torch.save(state, tmp_path / "vit_b_32.pth")
    models.load_torchvision_vit(vit, str(tmp_path / "vit_b_32.pth"))
    assert torch.equal(vit.vit.encoder.pos_embedding, state["encoder.pos_embedding"])
    img = torch.randn(1, 1, 8, 8)
    assert torch.allclose(vit.stem(img), img.expand(1, 3, 8, 8))  # stem = copy the channel to three
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    try:
        models.load_torchvision_vit(vit, str(tmp_path / "bad.pth"))
        raise AssertionError("a wrong file must be rejected")
    except ValueError as err:
        assert "bad.pth" in str(err)


def test_vit_audio_patches_logmel_directly_any_length():
    torch.manual_seed(0)
    vit = models.build_encoder({"model": TINY_AUDIO}).eval()
    assert vit.input_kind == "logmel" and vit.embed_dim == 32
    assert vit.tokens(torch.randn(3, 1, 64, 32)).shape == (3, 1 + 4 * 4, 32)
    assert vit.tokens(torch.randn(3, 1, 64, 32), patch_drop=0.15).shape == (3, 1 + 13, 32)
    assert vit.tokens(torch.randn(1, 1, 64, 85)).shape == (1, 1 + 4 * 10, 32)   # 85 frames -> 10 patches
    x = torch.randn(2, 1, 64, 70)
    for long in ("chunk", "resize", "pad"):
        assert vit.embed(x, long=long, pool="mean").shape == (2, 32)
    chunks = [x[..., :32], x[..., 32:64], x[..., 38:]]  # the last chunk ends with the clip
    expected = torch.stack([vit.embed(c, long="pad") for c in chunks]).mean(0)
    assert torch.allclose(vit.embed(x, long="chunk"), expected, atol=1e-5)
    strips = models.build_encoder({"model": {**TINY_AUDIO, "patch": [64, 2], "pos_embed": "learned"}})
    assert strips.tokens(torch.randn(1, 1, 64, 32)).shape == (1, 17, 32)


def test_vit_sincos_pos_embed_values():
    pos = models.sincos_pos_embed(8, 2, 3)
    assert pos.shape == (6, 8)
    # token (row 1, col 2): channels [sin(1*w), cos(1*w), sin(2*w), cos(2*w)], w = [1, 1/100]
    w = torch.tensor([1.0, 0.01], dtype=torch.float64)
    expected = torch.cat([torch.sin(1 * w), torch.cos(1 * w), torch.sin(2 * w), torch.cos(2 * w)]).float()
    assert torch.allclose(pos[5], expected, atol=1e-6)


def test_vit_msn_head_and_ema_update():
    head = models.MSNHead(16, hidden_dim=32, output_dim=8)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU",
                                               "Linear"]
    assert head(torch.randn(4, 16)).shape == (4, 8) and torch.all(head.fc1.bias == 0)
    online = torch.nn.Linear(2, 1)
    target = torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(3.0)
    models.ema_update(target, online, 0.75)
    assert torch.allclose(target.weight, torch.full((1, 2), 0.75 * 3 + 0.25 * 1))


def test_vit_checkpoint_config_rebuilds_encoder_without_reading_pretrained():
    cfg = {"model": {**TINY_AUDIO, "pretrained": "/nonexistent/weights.pth"}}
    enc = models.build_encoder(cfg)
    again = models.build_encoder(cfg)
    again.load_state_dict(enc.state_dict())
    x = torch.randn(1, 1, 64, 40)
    assert torch.equal(enc.eval().embed(x), again.eval().embed(x))


# ----------------------------------------------------------------------------- ResNet18 1D / 2D (CLAR)


def test_resnet_2d_is_torchvision_resnet18_without_fc():
    import torchvision

    enc = models.build_encoder({"model": model_cfg({"arch": "resnet18_2d"})})
    reference = torchvision.models.resnet18()
    reference.fc = torch.nn.Identity()
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    enc.resnet.load_state_dict(state, strict=True)
    reference.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 64, 50)
    assert torch.allclose(enc.resnet.eval()(x), reference.eval()(x), atol=1e-5)
    assert enc.input_kind == "wave" and enc.embed_dim == 512


def test_resnet_1d_is_all_one_dimensional():
    enc = models.build_encoder({"model": model_cfg({"arch": "resnet18_1d", "width": 8})})
    kinds = {type(m) for m in enc.modules()}
    assert torch.nn.Conv1d in kinds and torch.nn.BatchNorm1d in kinds and torch.nn.MaxPool1d in kinds
    assert not kinds & {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d}
    assert enc.resnet.layer1[0].conv1.kernel_size == (9,) and enc.embed_dim == 64


def test_resnet_encoders_embed_waves_and_average_chunks():
    for arch in ("resnet18_2d", "resnet18_1d"):
        enc = models.build_encoder({"model": model_cfg({"arch": arch, "width": 4, "clip_seconds": 0.25})}).eval()
        wave = torch.randn(2, 8000)  # two 0.25 s chunks
        with torch.no_grad():
            whole = enc.embed(wave)
            halves = (enc(wave[:, :4000]) + enc(wave[:, 4000:])) / 2
            assert whole.shape == (2, 32) and torch.allclose(whole, halves, atol=1e-5)
            assert enc.embed(wave, long="full").shape == (2, 32)
            # a ragged tail: the last chunk is aligned to the end of the wave
            ragged = enc.embed(wave[:, :6000])
            assert torch.allclose(ragged, (enc(wave[:, :4000]) + enc(wave[:, 2000:6000])) / 2, atol=1e-5)


def test_resnet_projection_head_shapes():
    head = models.ProjectionHead(512, 512, 128)
    assert head(torch.randn(3, 512)).shape == (3, 128)
    assert [type(m).__name__ for m in head.net] == ["Linear", "ReLU", "Linear"]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in models.ProjectionHead(batch_norm=True).modules())


def test_msn_head_runs_once_per_crop_group():
    """MSN's deit.py runs the head per crop-size group, so the anchor and the focal views get their own BN stats."""
    torch.manual_seed(0)
    cfg = model_cfg({"arch": "vit_audio", "crop_frames": 32, "patch": [16, 8], "width": 16, "depth": 1, "heads": 2})
    net = models.MSNNet(models.build_vit(cfg), models.MSNHead(16, 32, 8)).train()
    anchor, focal = torch.randn(4, 1, 64, 32), torch.randn(8, 1, 64, 16)
    z = net(anchor, focal)
    separate = torch.cat([net.head(net.encoder(anchor)), net.head(net.encoder(focal))])
    torch.testing.assert_close(z, separate)
    joint = net.head(torch.cat([net.encoder(anchor), net.encoder(focal)]))
    assert not torch.allclose(z, joint)  # batch norm over both groups would give other values


def test_clar_net_runs_each_view_on_its_own_unless_joint_views():
    torch.manual_seed(0)
    cfg = model_cfg({"arch": "resnet18_1d", "width": 4, "kernel_1d": 3, "clip_seconds": 0.1, "proj_hidden": 8,
                     "proj_dim": 4, "proj_batch_norm": True})
    net = models.ClarNet(models.build_resnet(cfg), cfg, n_classes=3, with_classifier=True).train()
    w1, w2 = torch.randn(5, 1600), 2 * torch.randn(5, 1600)
    z1, z2, _, _, _ = net(w1, w2)
    torch.testing.assert_close(z1, net.projection(net.encoder(w1)))
    torch.testing.assert_close(z2, net.projection(net.encoder(w2)))
    net.joint_views = True
    z1_joint = net(w1, w2)[0]
    torch.testing.assert_close(z1_joint, net.projection(net.encoder(torch.cat([w1, w2])))[:5])
    assert not torch.allclose(z1_joint, z1)


def test_audiontt2022_shapes_frames_and_mean_plus_max_pooling():
    torch.manual_seed(0)
    net = models.AudioNTT2022(n_mels=64, dim=512, base=8, mlp_hidden=64).eval()
    x = torch.randn(3, 1, 64, 40)
    frames = net.frames(x)
    assert net.conv_dim == 8 * 16 and frames.shape == (3, 10, 512)  # T/4 frames, CNN 128 + MLP 384 per frame
    conv = net.features(x)  # [3, 8, 16, 10]
    torch.testing.assert_close(frames[0, 2, :8], conv[0, :, 0, 2])  # frame 2, mel bin 0: the 8 channels first
    torch.testing.assert_close(frames[0, 2, 8:16], conv[0, :, 1, 2])
    torch.testing.assert_close(frames[..., 128:], net.fc(frames[..., :128]))
    torch.testing.assert_close(net(x), frames.max(1).values + frames.mean(1))
    assert net.embed(torch.randn(2, 1, 64, 501)).shape == (2, 512) and net.embed_dim == 512

    class Known(models.AudioNTT2022):
        def frames(self, x):
            return torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]])

    assert Known(dim=512, base=8, mlp_hidden=8)(x).tolist() == [[5 + 3, 4 + 2]]  # max + mean over time
    full = models.build_encoder({"model": model_cfg({"arch": "audiontt2022"})})
    assert full.embed_dim == 3072 and full.conv_dim == 1024  # the paper's AudioNTT2022: 64 ch x 16 mel bins


def test_ema_update_hand_values_and_byol_target_has_no_predictor():
    torch.manual_seed(0)
    online = models.BYOLNet(models.AudioNTT2022(dim=512, base=8, mlp_hidden=16), hidden=16, out_dim=4)
    target = online.target_copy()
    assert target.predictor is None and not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(1.0)
        for p in online.parameters():
            p.fill_(3.0)
    models.ema_update(target, online, 0.99)
    assert all(torch.allclose(p, torch.full_like(p, 0.99 * 1 + 0.01 * 3)) for p in target.parameters())
    x = torch.randn(4, 1, 64, 16)
    assert online(x).shape == target(x).shape == (4, 4)


def test_the_training_encoders_are_the_encoder_files_with_the_training_init():
    """One network for training and inference: models.py adds token dropping and the initialisation only."""
    import audio_ssl_repro
    assert issubclass(models.ViTB32, audio_ssl_repro.ViTB32) and issubclass(models.AudioViT, audio_ssl_repro.AudioViT)
    assert issubclass(models.ClarEncoder, audio_ssl_repro.ClarEncoder)
    assert models.AudioNTT2022 is audio_ssl_repro.AudioNTT2022 and models.AudioNTT2020 is audio_ssl_repro.AudioNTT2020
    cfg = {**TINY_AUDIO, "width": 64, "pos_embed": "learned"}
    torch.manual_seed(0)
    trained, plain = models.build_encoder({"model": cfg}), audio_ssl_repro.build_encoder(cfg)
    assert trained.state_dict().keys() == plain.state_dict().keys()
    assert abs(trained.pos_embed.std().item() - 0.02) < 0.002 and not plain.pos_embed.any()  # N(0, 0.02) vs zeros
    assert 0 < trained.cls_token.abs().max().item() <= 0.04 and not plain.cls_token.any()   # trunc N(0, 0.02)
    assert trained.blocks[0].mlp[0].bias.abs().max().item() < 1e-4  # torchvision's MLP init: biases N(0, 1e-6)
