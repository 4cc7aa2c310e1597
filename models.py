"""Networks: ViT encoders for MSN (torchvision vit_b_32 and an audio-native ViT), 1D/2D ResNet18 for
CLAR, AudioNTT2022 for BYOL-A, and their heads (MSNNet, ClarNet, BYOLNet).

Every encoder built by `build_encoder(cfg)` has the same evaluation interface, used by linear_eval.py:

    encoder.input_kind   "logmel" (x = normalised log-mel [B, 1, F, T]) or "wave" (x = [B, L] at 16 kHz)
    encoder.embed_dim    size of the embedding
    encoder.embed(x, long="chunk", pool="cls") -> [B, embed_dim]

so a checkpoint, which carries its resolved config, rebuilds its encoder with no other information.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn as nn

# The encoders are the one-file encoder module's (what an exported, installed encoder runs), so training and
# inference run one network: this file adds only what training needs (token dropping, weight init, channels-last).
import audio_ssl_repro as portable_encoders
from audio_ssl_repro import (  # noqa: F401  (the encoders' building blocks, used by the methods' scripts)
    AudioNTT2020,
    AudioNTT2022,
    ResNet18Nd,
    resize_pos_embed,
    sincos_pos_embed,
    split_chunks,
)

# ============================================================================ ViT encoders (MSN)
# Two ViTs with one interface. Both return the CLS token after the final LayerNorm (MSN, facebookresearch/msn) and
# drop tokens MSN-style when asked: after the position embeddings, ONE torch.randperm(N)[:floor(N(1-p))]
# shared by the whole batch, kept in permutation order, CLS always first (msn deit.py L213-233).
#   vit_b_32   torchvision vit_b_32 behind a learnable 1x1 Conv2d 1 -> 3 channels (the MSN-audio seed); views are
#              224x224 / 96x96 resized crops of the log-mel; pos-embeds bicubic-interpolated for 96.
#   vit_audio  patches the [64, T] log-mel directly with a [pf, pt] patch (square, or frequency-band
#              strips such as [4, 16] / [64, 2]); fixed 2-D sin-cos or learned pos-embeds.
# Position embeddings are defined on the training grid (vit_b_32: 7x7; vit_audio: 64/pf x crop_frames/pt)
# and bicubic-interpolated to any other token grid (focal views, other lengths); the training grid itself
# is used unchanged.


def drop_tokens(x: torch.Tensor, patch_drop: float) -> torch.Tensor:
    """MSN token dropping: x [B, 1 + N, D] -> [B, 1 + floor(N (1 - patch_drop)), D], CLS kept at index 0,
    one permutation (torch CPU RNG) for the whole batch."""
    if patch_drop <= 0:
        return x
    n = x.shape[1] - 1
    keep = torch.randperm(n)[:int(n * (1 - patch_drop))].to(x.device)
    return torch.cat([x[:, :1], x[:, 1:][:, keep]], dim=1)


class _TrainingViT:
    """What training adds to the encoder file's ViTs (audio_ssl_repro._ViT: patchify, position embeddings, embed):
    MSN's token dropping in tokens() and forward()."""

    def tokens(self, x: torch.Tensor, patch_drop: float = 0.0) -> torch.Tensor:
        """x [B, 1, H, W] -> tokens [B, 1 + N', D] after the final LayerNorm (CLS first, N' = N after dropping)."""
        return self.norm(self.blocks(drop_tokens(self.patch_tokens(x), patch_drop)))

    def forward(self, x: torch.Tensor, patch_drop: float = 0.0) -> torch.Tensor:
        """x [B, 1, H, W] -> CLS embedding [B, D] (MSN's encoder output)."""
        return self.tokens(x, patch_drop)[:, 0]


class ViTB32(_TrainingViT, portable_encoders.ViTB32):
    """torchvision vit_b_32 on 1-channel "images": Conv2d(1, 3, 1) stem, no classifier (the MSN-audio seed).

    The network, its parameter names and embed() are audio_ssl_repro.ViTB32's; training builds the trunk with
    torchvision's vit_b_32 (its weight initialisation, and its state dict loads: load_torchvision_vit) and adds
    token dropping. Training views are resized crops (224 / 96).
    """

    @staticmethod
    def trunk(image_size: int) -> nn.Module:
        from torchvision.models import vit_b_32
        vit = vit_b_32(weights=None, image_size=image_size)
        del vit.heads
        return vit

    def init_stem_copy(self) -> None:
        """Stem = "copy the one channel to all three" (used with ImageNet weights)."""
        with torch.no_grad():
            self.stem.weight.fill_(1.0)
            self.stem.bias.zero_()


class AudioViT(_TrainingViT, portable_encoders.AudioViT):
    """ViT that patches the log-mel [n_mels, T] directly with [pf, pt] patches (audio_ssl_repro.AudioViT: the
    network, readouts "token" (MSN) and "stack" (M2D), embed()). Training adds token dropping and the weight
    initialisation: torchvision's transformer blocks (their init), a learned position embedding drawn from
    N(0, 0.02), the CLS token from a truncated N(0, 0.02).
    """

    @staticmethod
    def block(heads: int, width: int, mlp_dim: int) -> nn.Module:
        from torchvision.models.vision_transformer import EncoderBlock
        return EncoderBlock(heads, width, mlp_dim, 0.0, 0.0)

    @staticmethod
    def learned_pos_embed(tokens: int, width: int) -> torch.Tensor:
        return torch.empty(1, tokens, width).normal_(std=0.02)

    def __init__(self, n_mels: int = 64, crop_frames: int = 96, patch=(16, 16), width: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, pos_embed: str = "sincos",
                 readout: str = "token"):
        super().__init__(n_mels, crop_frames, patch, width, depth, heads, mlp_ratio, pos_embed, readout)
        nn.init.trunc_normal_(self.cls_token, std=0.02)


def build_vit(model_cfg: dict) -> nn.Module:
    """ViT encoder from a complete `model` config section (never loads weights; see load_torchvision_vit). The
    defaults live in the method's DEFAULTS (methods.py), never here: a missing key is a KeyError."""
    arch = model_cfg["arch"]
    if arch == "vit_b_32":
        return ViTB32(image_size=model_cfg["image_size"], crop_frames=model_cfg["crop_frames"])
    if arch == "vit_audio":
        return AudioViT(n_mels=model_cfg["n_mels"], crop_frames=model_cfg["crop_frames"], patch=model_cfg["patch"],
                        width=model_cfg["width"], depth=model_cfg["depth"], heads=model_cfg["heads"],
                        mlp_ratio=model_cfg["mlp_ratio"], pos_embed=model_cfg["pos_embed"],
                        readout=model_cfg["readout"])
    raise ValueError(f"build_vit: unknown arch {arch!r}")


def load_torchvision_vit(encoder: ViTB32, path: str) -> None:
    """Initialise from a LOCAL torchvision vit_b_32 state dict file (e.g. vit_b_32-d86f8d99.pth); the
    classifier is ignored and the stem starts as "copy the channel to three"."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("heads.")}
    missing, unexpected = encoder.vit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not a torchvision vit_b_32 state dict (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    encoder.init_stem_copy()


class MSNHead(nn.Sequential):
    """MSN projection head Linear(D, h)-BN-GELU-Linear(h, h)-BN-GELU-Linear(h, out), trunc_normal(0.02)
    weights and zero biases (msn_train.py L490-511); use_bn=False drops the BNs."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, output_dim: int = 256, use_bn: bool = True):
        norm = (lambda: nn.BatchNorm1d(hidden_dim)) if use_bn else nn.Identity
        super().__init__(OrderedDict([
            ("fc1", nn.Linear(in_dim, hidden_dim)), ("bn1", norm()), ("gelu1", nn.GELU()),
            ("fc2", nn.Linear(hidden_dim, hidden_dim)), ("bn2", norm()), ("gelu2", nn.GELU()),
            ("fc3", nn.Linear(hidden_dim, output_dim))]))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


class MSNNet(nn.Module):
    """Encoder + projection head; one forward embeds the masked anchor group and the focal group.

        z = net(anchor [B,1,S,S], focal [M*B,1,s,s] view-major, patch_drop=0.15)  # [(1+M)*B, out]
    Only the first group (the anchor) is masked (msn deit.py L228); the target net is called as net(target).
    The head runs once per crop-size group, as MSN's deit.py forward does over its crop groups, so the anchor
    and the focal views get separate batch-norm statistics.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, anchor: torch.Tensor, focal: torch.Tensor | None = None, patch_drop: float = 0.0):
        z = [self.head(self.encoder(anchor, patch_drop))]
        if focal is not None and len(focal):
            z.append(self.head(self.encoder(focal)))
        return torch.cat(z)


class Prototypes(nn.Module):
    """MSN's learnable prototypes [K, D], uniform in +-1/sqrt(D) (msn_train.py L196-199)."""

    def __init__(self, num_prototypes: int, dim: int, trainable: bool = True):
        super().__init__()
        bound = 1.0 / dim ** 0.5
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim).uniform_(-bound, bound), requires_grad=trainable)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameters only, matched by name (msn_train.py
    L374-377; byol-pytorch update_moving_average). Online parameters the target lacks (BYOL's predictor) are
    left out."""
    online_params = dict(online.named_parameters())
    for name, p_target in target.named_parameters():
        p_target.mul_(momentum).add_(online_params[name].detach(), alpha=1 - momentum)


# ============================================================================ ResNet18 1D / 2D (CLAR)
# CLAR encoders (CLAR paper; CLAR code). One ResNet18 written once for 1-D and 2-D: at width 64 and kernel 3 the 2-D
# net is torchvision's resnet18 without its classifier (same parameter names, so its state_dict loads); the
# 1-D net swaps every conv, pool and batch norm for its 1-D version (kernel 9 in the blocks, as the CLAR
# code) and reads the raw waveform. Both end in adaptive average pooling to 8 * width (512 at width 64).
# `ClarEncoder` takes 16 kHz waves [B, L] for both: the 2-D one computes its [3, F, T] input itself with
# audio.ClarFeatures, so evaluation code only ever feeds waves.



class ClarEncoder(portable_encoders.ClarEncoder):
    """CLAR encoder on 16 kHz waves [B, L] -> [B, embed_dim] (embed_dim = 8 * width, 512 in the paper).

    arch "resnet18_2d": audio.ClarFeatures [B, 3, F, T] -> 2-D ResNet18 (kernel 3, torchvision layout).
    arch "resnet18_1d": the wave [B, 1, L] -> 1-D ResNet18 (kernel `kernel_1d` in the blocks).
    The network and `embed` are audio_ssl_repro's (what an exported encoder runs); training adds channels-last.
    """

    def __init__(self, arch: str, width: int = 64, kernel_1d: int = 9, clip_seconds: float = 1.0,
                 features: dict | None = None):
        super().__init__(arch, width, kernel_1d, clip_seconds, features)
        self.channels_last = False

    def use_channels_last(self) -> ClarEncoder:
        """Channels-last (NHWC) weights and activations for the 2-D ResNet: faster convolutions on CUDA with
        bf16. A no-op for the 1-D net. The state_dict is unchanged."""
        if self.arch == "resnet18_2d":
            self.channels_last = True
            self.resnet.to(memory_format=torch.channels_last)
        return self

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.features(wave) if self.features is not None else wave[:, None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.resnet(x)


def build_resnet(model_cfg: dict) -> ClarEncoder:
    """ClarEncoder from a complete `model` config section (keys: arch, width, kernel_1d, clip_seconds, features)."""
    return ClarEncoder(model_cfg["arch"], model_cfg["width"], model_cfg["kernel_1d"], model_cfg["clip_seconds"],
                       model_cfg["features"])


class ProjectionHead(nn.Module):
    """CLAR projection 512 -> 512 -> 128: Linear, ReLU, Linear (paper); batch_norm=True adds the code's BN.

    Returns the un-normalised projection; NT-Xent normalises it, the classifier reads it as is (CLAR paper).
    """

    def __init__(self, in_dim: int = 512, hidden: int = 512, out_dim: int = 128, batch_norm: bool = False):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden)] + ([nn.BatchNorm1d(hidden)] if batch_norm else [])
        self.net = nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ClarNet(nn.Module):
    """CLAR's training net: encoder + projection head + classifier on z (modes with CE) + an online linear head
    on the detached h (the paper's learning-speed curves).

    Each view goes through the encoder and the projection head on its own, as CLAR's shared_step does
    (`h1 = forward(aud1); h2 = forward(aud2); z1 = projection(h1); z2 = projection(h2)`), so every batch norm
    layer sees one view's statistics. model_cfg["joint_views"] = True runs both views as one batch of 2B
    through encoder and projection (batch norm statistics over both views), an option that changes the loss.
    """

    def __init__(self, encoder: nn.Module, model_cfg: dict, n_classes: int, with_classifier: bool):
        super().__init__()
        self.encoder = encoder
        self.projection = ProjectionHead(encoder.embed_dim, model_cfg["proj_hidden"], model_cfg["proj_dim"],
                                         model_cfg["proj_batch_norm"])
        self.joint_views = bool(model_cfg["joint_views"])
        self.classifier = nn.Linear(model_cfg["proj_dim"], n_classes) if with_classifier else None
        self.online = nn.Linear(encoder.embed_dim, n_classes)

    def forward(self, wave1: torch.Tensor, wave2: torch.Tensor):
        """Both views [B, L] -> z1, z2 [B, proj_dim], classifier logits of each view (or None), online logits."""
        n = wave1.shape[0]
        if self.joint_views:
            h = self.encoder(torch.cat([wave1, wave2]))
            z = self.projection(h)
        else:
            h1, h2 = self.encoder(wave1), self.encoder(wave2)
            h, z = torch.cat([h1, h2]), torch.cat([self.projection(h1), self.projection(h2)])
        logits = self.classifier(z) if self.classifier is not None else None
        online = self.online(h[:n].detach())
        return z[:n], z[n:], (logits[:n] if logits is not None else None), \
            (logits[n:] if logits is not None else None), online

# ============================================================================ AudioNTT2022 and BYOL (BYOL-A v2)
# BYOL-A v2 (Niizumi et al. 2023; nttcslab/byol-a v2/byol_a2/models.py): a 2-block CNN, a per-frame MLP, the
# CNN features and the MLP output stacked per frame, then temporal pooling max_t + mean_t (a SUM, EVAR code).
# BYOL (Grill et al. 2020; lucidrains byol-pytorch as v2 uses it): MLP projector and predictor
# Linear-BN-ReLU-Linear, an EMA target of encoder + projector, loss 2 - 2 cos per view pair. The encoders
# (AudioNTT2022, and AudioNTT2020 for the published v1 weights) are audio_ssl_repro's, imported above.


class BYOLMLP(nn.Sequential):
    """BYOL's projector / predictor: Linear(in, hidden)-BN-ReLU-Linear(hidden, out) (byol-pytorch MLP)."""

    def __init__(self, in_dim: int, hidden: int = 4096, out_dim: int = 256):
        super().__init__(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class BYOLNet(nn.Module):
    """BYOL's online net: encoder -> projector -> predictor. Its EMA target is `target_copy()`: encoder ->
    projector, the same parameter names without the predictor (models.ema_update matches them by name).

    forward(*views) runs each view through the net on its own, so every batch norm layer normalises one view
    with that view's batch statistics, as byol-pytorch's BYOL.forward (one online and one target call per
    view; byol-a byol_a/byol_pytorch.diff). joint_views=True instead runs all views as ONE concatenated batch
    (batch norm statistics over both views; fewer, larger kernel calls), an option that changes the loss."""

    def __init__(self, encoder: nn.Module, hidden: int = 4096, out_dim: int = 256, predictor: bool = True,
                 joint_views: bool = False):
        super().__init__()
        self.encoder, self.projector = encoder, BYOLMLP(encoder.embed_dim, hidden, out_dim)
        self.predictor = BYOLMLP(out_dim, hidden, out_dim) if predictor else None
        self.joint_views = joint_views

    def single(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, F, T] -> the prediction (online) or the projection (target) [B, out_dim]."""
        z = self.projector(self.encoder(x))
        return self.predictor(z) if self.predictor is not None else z

    def forward(self, *views: torch.Tensor):
        """One view [B, 1, F, T] -> [B, out_dim]; several views -> a tuple, one output per view."""
        if len(views) == 1:
            return self.single(views[0])
        if self.joint_views:
            return self.single(torch.cat(views)).split([len(v) for v in views])
        return tuple(self.single(v) for v in views)

    def target_copy(self) -> BYOLNet:
        """A frozen copy of encoder + projector with this net's current weights."""
        target = copy.deepcopy(self)
        target.predictor = None
        return target.requires_grad_(False)


def build_audiontt(model_cfg: dict) -> AudioNTT2022:
    """AudioNTT2022 from a complete `model` config section (keys: n_mels, dim, base, mlp_hidden, dropout)."""
    return AudioNTT2022(model_cfg["n_mels"], model_cfg["dim"], model_cfg["base"], model_cfg["mlp_hidden"],
                        model_cfg["dropout"])


# ============================================================================ factory and evaluation


@torch.no_grad()
def embed_dataset(encoder: nn.Module, dataset, long: str = "chunk", pool: str = "cls", batch_size: int = 32,
                  workers: int = 0, device: str | torch.device = "cpu", desc: str = "embed",
                  norm: tuple[float, float] | None = None):
    """encoder.embed over a dataset in order (items: the input, or a tuple whose first element is), inputs
    standardised as (x - mean) / std when `norm` is given, with a progress bar -> float32 numpy [N, D]. The
    encoder is left in eval mode on `device`."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    encoder.eval().to(device)
    mean, std = norm or (0.0, 1.0)
    out = [encoder.embed(((x[0] if isinstance(x, (list, tuple)) else x).to(device) - mean) / std, long=long,
                         pool=pool).float().cpu()
           for x in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True, leave=False)]
    return torch.cat(out).numpy()


def load_encoder_file(path) -> tuple[nn.Module, dict]:
    """A training checkpoint (runs/X/ckpt_last.pt) or an export.py file (portable.py) -> (encoder rebuilt from the
    file's "config" with its "encoder" weights, in eval mode; the file's dict). Errors name the file."""
    from files import load_checkpoint  # names the file when it is missing or unreadable

    state = load_checkpoint(path)
    if "encoder" not in state:
        raise ValueError(f"{path}: no 'encoder' entry (not a checkpoint or encoder file of this package)")
    encoder = build_encoder(state["config"])
    try:
        encoder.load_state_dict(state["encoder"])
    except RuntimeError as err:
        raise ValueError(f"{path}: encoder weights do not match its config ({str(err).splitlines()[0]})") from None
    return encoder.eval(), state


def build_encoder(cfg: dict) -> nn.Module:
    """The encoder named by cfg["model"]["arch"]: vit_b_32 | vit_audio | resnet18_2d | resnet18_1d | audiontt2022 |
    audiontt2020 (BYOL-A v1, for the published weights)."""
    arch = cfg["model"]["arch"]
    if arch in ("vit_b_32", "vit_audio"):
        return build_vit(cfg["model"])
    if arch in ("resnet18_2d", "resnet18_1d"):
        return build_resnet(cfg["model"])
    if arch == "audiontt2022":
        return build_audiontt(cfg["model"])
    if arch == "audiontt2020":
        m = cfg["model"]
        return AudioNTT2020(m["n_mels"], m["dim"], m["base"], m["dropout"])
    raise ValueError(f"unknown model.arch {arch!r}; expected vit_b_32, vit_audio, resnet18_2d, resnet18_1d, "
                     "audiontt2022 or audiontt2020")
