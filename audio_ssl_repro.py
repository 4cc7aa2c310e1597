"""audio_ssl_repro: the encoders of this package in ONE file, with the HEAR 2021 API (hearbenchmark.com).

It reads the encoder files that `export.py` writes and needs torch and torchaudio only: copy this file anywhere,
or `pip install .` from a clone of the repository (it installs this module and nothing else). It never imports the
rest of the repository; tests/test_portable_file.py checks that its embeddings equal the training code's.

    import audio_ssl_repro as ssl
    model = ssl.load_model("encoder.pt")                          # HEAR load_model, options below
    scene = ssl.get_scene_embeddings(audio, model)                # audio [n, samples] at 16 kHz -> [n, D]
    emb, ts = ssl.get_timestamp_embeddings(audio, model)          # [n, T, D] float32, [n, T] ms
    encoder, bundle = ssl.load("encoder.pt")                      # the bare encoder and the file's dict
    hear-validator audio_ssl_repro -m encoder.pt                  # the HEAR validator, no PYTHONPATH needed

Encoder file (FORMAT; tensors, str, numbers, lists, dicts and None only, so torch.load(weights_only=True) reads it):

    format    FORMAT
    kind      the training method (msn, clar, byola, ...): provenance only, never read here
    config    the resolved training config; config["model"]["arch"] selects the network (ARCHS)
    encoder   the encoder's state_dict
    logmel    the log-mel front end (LogMelConfig as a dict) of the training cache; None for wave encoders
    norm      {"source", "mean", "std"}: the scalar log-mel normalisation training applied
    source    where it came from (checkpoint, sha256, step, git)

Networks are chosen by architecture, never by method, so a new method with an existing encoder needs nothing here
and a new encoder adds one class and one ARCHS entry:
    vit_audio     ViT patching the log-mel directly (MSN's audio-native variant)
    vit_b_32      torchvision-layout ViT-B/32 behind a 1x1 conv stem, on resized log-mel "images" (MSN)
    resnet18_2d   ResNet18 on CLAR's 3-channel (log power, phase, log mel) input computed from the wave (CLAR)
    resnet18_1d   1-D ResNet18 on the raw wave (CLAR)
    audiontt2022  BYOL-A v2's CNN + MLP with max + mean temporal pooling
    audiontt2020  BYOL-A v1's CNN + MLP (the published BYOL-A weights)

HEAR embeddings. Scene: the clip embedding linear_eval.py probes (long clips cut into training-length chunks whose
embeddings are averaged). Timestamps: a regular hop <= 50 ms, the first within one hop of 0 and the last within one
hop of the clip's end:
- audiontt*: the net's own per-frame features on the whole clip, one per 4 (v2) or 8 (v1) log-mel frames.
- ViTs and ResNets: a training-length window centred on each timestamp (every `hop_ms`, 50 by default), padded with
  silence at the clip's edges and embedded as a clip, so every encoder gets the input it was trained on.
Audio with NaN or inf is a ValueError naming the sounds; a sound shorter than MIN_SAMPLES is right-padded with zeros.

load_model options (heareval: --model-options '{"pool": "mean"}'; an unknown one is a one-line ValueError):
    pool    "cls" (default) or "mean": ViT scene/window embedding = CLS token or mean patch token
    long    "chunk" (default), "resize" or "pad": how a clip longer than the training crop is embedded
    hop_ms  timestamp hop of the windowed encoders (ViT, ResNet), a multiple of the input step, <= 50 (default 50)
    tag     any string; changes nothing but heareval's output folder name (<module>-tag=<tag>), so two encoder
            files of this module never share one folder (heareval skips a task whose folder is done)
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

__version__ = "0.1.0"
FORMAT = "audio-ssl-repro/encoder-v1"
SAMPLE_RATE = 16000
LOG_EPS = float(np.finfo(np.float32).eps)  # ln(mel + eps), as BYOL-A / EVAR
LOG_SILENCE = float(np.log(LOG_EPS))       # -15.94: the log-mel of digital silence
WINDOW_HOP_MS = 50                         # default timestamp hop of the windowed encoders (ViT, ResNet)
MIN_SAMPLES = 1024                         # one log-mel window (64 ms); shorter HEAR audio is right-padded to it
BATCH = 64                                 # encoder inputs (clips or windows) per forward pass

# ============================================================================ front ends


@dataclass
class LogMelConfig:
    """The log-mel front end: 64 Slaney mel bins, 60-7800 Hz, 1024-sample window, 10 ms hop at 16 kHz (the
    MSN-audio seed's settings, BYOL-A v2 / EVAR conventions)."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    mel_scale: str = "slaney"  # "htk" (with no filter norm) = BYOL-A v1's torchaudio default

    def to_dict(self) -> dict:
        return asdict(self)


class LogMel(nn.Module):
    """waveform [..., L] -> ln(mel power + eps) [..., n_mels, 1 + L // hop], for every L >= 0.

    Centred STFT with reflect padding, periodic Hann window, power 2; Slaney mel scale and area normalisation
    (librosa's, what EVAR and BYOL-A v2 use) unless mel_scale="htk". A wave too short to reflect (<= n_fft // 2
    samples, even 0) is taken as the clip followed by silence.
    """

    def __init__(self, cfg: LogMelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LogMelConfig()
        if cfg.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {cfg.mel_scale!r}")
        slaney = cfg.mel_scale == "slaney"
        fbank = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels,
                                                      cfg.sample_rate, norm="slaney" if slaney else None,
                                                      mel_scale=cfg.mel_scale)
        self.register_buffer("fbank", fbank, persistent=False)  # [n_fft // 2 + 1, n_mels]
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        shape, cfg = wave.shape, self.cfg
        frames = 1 + shape[-1] // cfg.hop_length
        flat = wave.float().reshape(math.prod(shape[:-1]), shape[-1])
        if shape[-1] <= cfg.n_fft // 2:  # too short to reflect: the clip followed by silence
            flat = F.pad(flat, (0, cfg.n_fft // 2 + 1))
        spec = torch.stft(flat, cfg.n_fft, cfg.hop_length, cfg.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [N, n_fft // 2 + 1, frames]
        mel = torch.matmul(power.transpose(1, 2), self.fbank).transpose(1, 2)
        return torch.log(mel[..., :frames] + LOG_EPS).reshape(*shape[:-1], cfg.n_mels, frames)


@dataclass
class ClarFeatureConfig:
    """CLAR's 3-channel input (Al-Tahan & Mohsenzadeh 2021, Sec. 3.2): 16 ms window, 8 ms stride at 16 kHz, 128
    linear STFT bins (Nyquist dropped) beside 128 mels; freq_scale="log" = the CLAR code's log-frequency kernels."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 256
    win_length: int = 256
    hop_length: int = 128
    n_mels: int = 128
    f_min: float = 40.0
    f_max: float = 8000.0
    freq_scale: str = "linear"
    amin: float = 1e-10  # power floor of the log: 10 log10(max(|S|^2, amin))

    def to_dict(self) -> dict:
        return asdict(self)


class ClarFeatures(nn.Module):
    """wave [B, L] -> [B, 3, n_mels, 1 + L // hop]: stacked (10 log10 |S|^2, angle(S), 10 log10 mel power) of a
    centred, reflect-padded, periodic-Hann STFT; Slaney mel scale and area normalisation."""

    def __init__(self, cfg: ClarFeatureConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ClarFeatureConfig()
        if cfg.freq_scale not in ("linear", "log"):
            raise ValueError(f"freq_scale must be 'linear' or 'log', got {cfg.freq_scale!r}")
        n_freqs = cfg.n_fft // 2 + 1
        if cfg.freq_scale == "linear" and n_freqs - 1 < cfg.n_mels:
            raise ValueError(f"n_fft {cfg.n_fft} gives {n_freqs} bins; need at least n_mels + 1 = {cfg.n_mels + 1}")
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        import warnings

        with warnings.catch_warnings():  # the paper's 16 ms window leaves some low mel filters empty, as intended
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            fbank = torchaudio.functional.melscale_fbanks(n_freqs, cfg.f_min, cfg.f_max, cfg.n_mels,
                                                          cfg.sample_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fbank", fbank, persistent=False)
        if cfg.freq_scale == "log":  # DFT rows at log-spaced frequencies over the zero-padded n_fft frame
            freqs = cfg.f_min * (cfg.f_max / cfg.f_min) ** (torch.arange(cfg.n_mels) / cfg.n_mels)
            n = torch.arange(cfg.n_fft)
            basis = torch.exp(-2j * np.pi * freqs[:, None].double() * n[None].double() / cfg.sample_rate)
            self.register_buffer("log_basis", basis.to(torch.complex64), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        frames = 1 + wave.shape[-1] // cfg.hop_length
        if wave.shape[-1] <= cfg.n_fft // 2:  # too short to reflect: the clip followed by silence (as LogMel)
            wave = F.pad(wave, (0, cfg.n_fft // 2 + 1))
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop_length, cfg.win_length, self.window, center=True,
                              pad_mode="reflect", return_complex=True)  # [B, n_freqs, T]
            mel = torch.einsum("bft,fm->bmt", spec.real ** 2 + spec.imag ** 2, self.mel_fbank)
            spec = spec[:, :cfg.n_mels] if cfg.freq_scale == "linear" else self._log_stft(wave.float())
            magnitude_db = 10 * torch.log10((spec.real ** 2 + spec.imag ** 2).clamp_min(cfg.amin))
            mel_db = 10 * torch.log10(mel.clamp_min(cfg.amin))
            return torch.stack([magnitude_db, torch.angle(spec), mel_db], dim=1)[..., :frames]

    def _log_stft(self, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        padded = F.pad(wave[:, None], (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")[:, 0]
        frames = padded.unfold(-1, cfg.n_fft, cfg.hop_length)  # [B, T, n_fft]
        left = (cfg.n_fft - cfg.win_length) // 2
        window = F.pad(self.window, (left, cfg.n_fft - cfg.win_length - left))
        return torch.einsum("btn,kn->bkt", (frames * window).to(torch.complex64), self.log_basis)


# ============================================================================ ViT encoders
# Both ViTs return the CLS token after the final LayerNorm; position embeddings live on the training token grid
# and are bicubic-resized to any other grid (msn deit.py interpolate_pos_encoding). The transformer blocks have
# torchvision's layout and parameter names (torchvision/models/vision_transformer.py EncoderBlock), so the state
# dicts are the training code's, with no torchvision import here.


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings [grid_h * grid_w, dim] (MAE): half the channels encode the row
    (frequency) index, half the column (time) index."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def resize_pos_embed(pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """pos [1, 1 + gh*gw, D] (CLS first) on `src_grid` -> [1, 1 + dh*dw, D], the patch part bicubic-resized."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    cls, patches = pos[:, :1], pos[:, 1:]
    grid = patches.reshape(1, *src_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], -1)], dim=1)


def split_chunks(x: torch.Tensor, frames: int) -> torch.Tensor:
    """x [B, C, F, T] -> [B * n, C, F, frames]: consecutive chunks, the last aligned to the clip's end; a clip
    shorter than `frames` is one right-zero-padded chunk."""
    length = x.shape[-1]
    if length <= frames:
        return F.pad(x, (0, frames - length))
    starts = list(range(0, length - frames + 1, frames))
    if starts[-1] + frames < length:
        starts.append(length - frames)
    return torch.stack([x[..., s:s + frames] for s in starts], dim=1).flatten(0, 1)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then + MLP(LN(.)) with GELU; LayerNorm eps 1e-6."""

    def __init__(self, heads: int, width: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, width),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _ViT(nn.Module):
    """Shared trunk; subclasses define patchify, pos_embed_for and prepare. (models.py's training ViTs are these
    classes plus MSN's token dropping and their weight initialisation.)"""

    input_kind = "logmel"
    readout = "token"  # AudioViT may read out "stack" (M2D)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, W] -> the blocks' input [B, 1 + N, D]: CLS first, then the patches, plus position embeddings."""
        patches, grid = self.patchify(x)
        x = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1)
        return x + self.pos_embed_for(grid)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, W] -> tokens [B, 1 + N, D] after the final LayerNorm (CLS first)."""
        return self.norm(self.blocks(self.patch_tokens(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]

    @torch.no_grad()
    def embed(self, x: torch.Tensor, long: str = "chunk", pool: str = "cls") -> torch.Tensor:
        """Normalised log-mel [B, 1, F, T] of any T -> [B, D]. long: "chunk" (crop_frames chunks, embeddings
        averaged), "resize" or "pad"; pool: "cls" (CLS token) or "mean" (mean patch token)."""
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if long not in ("chunk", "resize", "pad"):
            raise ValueError(f"long must be 'chunk', 'resize' or 'pad', got {long!r}")
        views = split_chunks(x, self.crop_frames) if long == "chunk" else x
        tokens = self.tokens(self.prepare(views, long))
        if self.readout == "stack":  # M2D: per time column, the frequency patches' tokens concatenated
            emb = self.stack_frames(tokens).mean(dim=1)
        else:
            emb = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
        return emb.reshape(len(x), -1, emb.shape[-1]).mean(dim=1)


class _TorchvisionViT(nn.Module):
    """torchvision VisionTransformer's parameter layout (class_token, conv_proj, encoder.pos_embedding,
    encoder.layers.encoder_layer_i, encoder.ln) without its classifier: ViT-B/32 sizes."""

    def __init__(self, image_size: int, patch: int = 32, width: int = 768, depth: int = 12, heads: int = 12,
                 mlp_dim: int = 3072):
        super().__init__()
        self.hidden_dim = width
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.conv_proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.encoder = nn.Module()
        self.encoder.pos_embedding = nn.Parameter(torch.zeros(1, 1 + (image_size // patch) ** 2, width))
        self.encoder.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, width, mlp_dim)) for i in range(depth)))
        self.encoder.ln = nn.LayerNorm(width, eps=1e-6)


class ViTB32(_ViT):
    """ViT-B/32 on 1-channel log-mel "images" behind a Conv2d(1, 3, 1) stem (the MSN-audio seed). embed():
    "resize" = the whole log-mel bilinearly resized to image_size^2 (no antialias, as the training crops); "pad" =
    zero-padded (frequency 64 -> image_size at the top, i.e. the high bins; time on the right) or cut to its first
    image_size frames; "chunk" = crop_frames chunks each resized."""

    trunk = _TorchvisionViT  # trunk(image_size): the training code builds torchvision's vit_b_32 (its init) here

    def __init__(self, image_size: int = 224, crop_frames: int = 96):
        super().__init__()
        self.image_size, self.crop_frames, self.patch = image_size, crop_frames, 32
        self.stem = nn.Conv2d(1, 3, kernel_size=1)
        self.vit = self.trunk(image_size)
        self.embed_dim = self.vit.hidden_dim
        self.train_grid = (image_size // 32, image_size // 32)

    cls_token = property(lambda self: self.vit.class_token)
    blocks = property(lambda self: self.vit.encoder.layers)
    norm = property(lambda self: self.vit.encoder.ln)

    def patchify(self, x):
        x = self.vit.conv_proj(self.stem(x))
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])

    def pos_embed_for(self, grid):
        return resize_pos_embed(self.vit.encoder.pos_embedding, self.train_grid, grid)

    def prepare(self, x: torch.Tensor, long: str) -> torch.Tensor:
        size = self.image_size
        if long == "pad":
            x = x[..., :size]
            return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


class AudioViT(_ViT):
    """ViT patching the log-mel [n_mels, T] directly with [pf, pt] patches; the last T mod pt frames are dropped
    (a clip shorter than one patch is right-padded). embed(): "resize" = time resized to crop_frames, "pad" =
    right-zero-padded to / cut at crop_frames, "chunk" as _ViT. readout "stack" (M2D): per time column the
    n_mels/pf frequency patches' tokens concatenated (low band first), averaged over time; embed_dim =
    (n_mels/pf) * width and `pool` is ignored; "token" (default): CLS or mean token as `pool` says. Training
    (forward, tokens) is the same for both readouts."""

    block = EncoderBlock  # block(heads, width, mlp_dim): the training code builds torchvision's (its init) here

    @staticmethod
    def learned_pos_embed(tokens: int, width: int) -> torch.Tensor:
        """The initial value of a learned position embedding [1, tokens, width] (the weights file sets it)."""
        return torch.zeros(1, tokens, width)

    def __init__(self, n_mels: int = 64, crop_frames: int = 96, patch=(16, 16), width: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, pos_embed: str = "sincos",
                 readout: str = "token"):
        super().__init__()
        pf, pt = int(patch[0]), int(patch[1])
        if n_mels % pf or crop_frames % pt:
            raise ValueError(f"patch {patch} must divide [n_mels, crop_frames] = [{n_mels}, {crop_frames}]")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"model.pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if readout not in ("token", "stack"):
            raise ValueError(f"model.readout must be 'token' or 'stack', got {readout!r}")
        self.n_mels, self.crop_frames, self.patch, self.readout = n_mels, crop_frames, (pf, pt), readout
        self.width, self.train_grid = width, (n_mels // pf, crop_frames // pt)
        self.embed_dim = width * (self.train_grid[0] if readout == "stack" else 1)
        self.patch_embed = nn.Conv2d(1, width, kernel_size=(pf, pt), stride=(pf, pt))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        n = self.train_grid[0] * self.train_grid[1]
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(self.learned_pos_embed(1 + n, width))
        else:
            self.register_buffer("pos_embed", torch.cat([torch.zeros(1, width),
                                                         sincos_pos_embed(width, *self.train_grid)])[None])
        self.blocks = nn.Sequential(*[self.block(heads, width, int(width * mlp_ratio)) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def patchify(self, x):
        if x.shape[-2] != self.n_mels:
            raise ValueError(f"vit_audio expects {self.n_mels} mel bins, got input {tuple(x.shape)}")
        pt = self.patch[1]
        x = F.pad(x, (0, max(0, pt - x.shape[-1])))
        x = self.patch_embed(x[..., :x.shape[-1] // pt * pt])
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])

    def pos_embed_for(self, grid):
        return resize_pos_embed(self.pos_embed, self.train_grid, grid)

    def stack_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + F'*T', D] (CLS, then patches frequency-major: index f*T' + t) -> [B, T', F' * D]."""
        rows = self.n_mels // self.patch[0]
        patches = tokens[:, 1:].reshape(len(tokens), rows, -1, tokens.shape[-1])  # [B, F', T', D]
        return patches.transpose(1, 2).flatten(2)

    def prepare(self, x: torch.Tensor, long: str) -> torch.Tensor:
        if long == "resize":
            return F.interpolate(x, size=(x.shape[-2], self.crop_frames), mode="bilinear", align_corners=False)
        if long == "pad":
            x = x[..., :self.crop_frames]
            return F.pad(x, (0, self.crop_frames - x.shape[-1]))
        return x


# ============================================================================ ResNet18 encoders (CLAR)


class BasicBlockNd(nn.Module):
    """ResNet basic block (two kxk convs + identity or 1x1-conv shortcut) in 1-D or 2-D."""

    def __init__(self, dim: int, in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1 = conv(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn1 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(out_ch, out_ch, kernel, 1, kernel // 2, bias=False)
        self.bn2 = norm(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(conv(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Nd(nn.Module):
    """ResNet18 trunk (torchvision layout) in 1-D or 2-D: x [B, C, (F,) T] -> [B, 8 * width], global average pool."""

    def __init__(self, dim: int, in_channels: int, width: int = 64, kernel: int = 3):
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {dim}")
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1 = conv(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool1d if dim == 1 else nn.MaxPool2d)(3, 2, 1)
        in_ch = width
        for i, out_ch in enumerate([width, 2 * width, 4 * width, 8 * width]):
            blocks = [BasicBlockNd(dim, in_ch, out_ch, 1 if i == 0 else 2, kernel),
                      BasicBlockNd(dim, out_ch, out_ch, 1, kernel)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.pool = nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)
        self.out_dim = 8 * width
        for m in self.modules():  # torchvision's initialisation (the training code builds its nets from here)
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


class ClarEncoder(nn.Module):
    """Wave [B, L] at 16 kHz -> [B, 8 * width]: "resnet18_2d" = ClarFeatures -> 2-D ResNet18, "resnet18_1d" = the
    wave -> 1-D ResNet18 with kernel `kernel_1d`."""

    input_kind = "wave"

    def __init__(self, arch: str, width: int = 64, kernel_1d: int = 9, clip_seconds: float = 1.0,
                 features: dict | None = None):
        super().__init__()
        self.arch, self.clip_samples = arch, int(round(clip_seconds * SAMPLE_RATE))
        if arch == "resnet18_2d":
            self.features = ClarFeatures(ClarFeatureConfig(**(features or {})))
            self.resnet = ResNet18Nd(2, 3, width, 3)
        elif arch != "resnet18_1d":
            raise ValueError(f"ClarEncoder arch must be resnet18_2d or resnet18_1d, got {arch!r}")
        else:
            self.features = None
            self.resnet = ResNet18Nd(1, 1, width, kernel_1d)
        self.embed_dim = self.resnet.out_dim

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.resnet(self.features(wave) if self.features is not None else wave[:, None])

    @torch.no_grad()
    def embed(self, x: torch.Tensor, long: str = "chunk", pool: str = "cls") -> torch.Tensor:
        """[B, L] -> [B, embed_dim]. long="chunk": a wave longer than the training clip is cut into clip-length
        chunks (the last aligned to the end), embeddings averaged; otherwise the whole wave at once."""
        length, clip = x.shape[-1], self.clip_samples
        if long != "chunk" or length <= clip:
            return self(x)
        starts = list(range(0, length - clip + 1, clip))
        if starts[-1] + clip < length:
            starts.append(length - clip)
        chunks = torch.stack([x[:, s:s + clip] for s in starts], dim=1)  # [B, n, clip]
        return self(chunks.flatten(0, 1)).view(x.shape[0], len(starts), -1).mean(1)


# ============================================================================ AudioNTT encoders (BYOL-A)
# BYOL-A v1 (Niizumi et al. 2021, nttcslab/byol-a byol_a/models.py AudioNTT2020) and v2 (Niizumi et al. 2023,
# v2/byol_a2/models.py AudioNTT2022): Conv(3x3)-BN-ReLU-MaxPool(2) blocks, features per time frame, an MLP,
# then max_t + mean_t.


def conv_blocks(n_blocks: int, channels: int) -> nn.Sequential:
    """n_blocks x [Conv2d 3x3 (pad 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)], 1 input channel, one flat Sequential
    (state_dict keys features.0/1 for block 1, features.4/5 for block 2, ...: the BYOL-A weight files' keys)."""
    layers = []
    for i in range(n_blocks):
        layers += [nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                   nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


def conv_frames(features: torch.Tensor) -> torch.Tensor:
    """CNN output [B, C, F', T'] -> per-frame vectors [B, T', F' * C], the channel index running fastest (BYOL-A)."""
    return features.permute(0, 3, 2, 1).flatten(2)


class _AudioNTT(nn.Module):
    input_kind = "logmel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.frames(x)
        return frames.max(dim=1).values + frames.mean(dim=1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, long: str = "chunk", pool: str = "cls") -> torch.Tensor:
        """Evaluation embedding of a normalised log-mel [B, 1, F, T] of any T >= frame_step: the whole clip at once
        (the net is convolutional per frame, as EVAR feeds BYOL-A); `long` and `pool` do not apply (max + mean)."""
        return self(x)


class AudioNTT2022(_AudioNTT):
    """BYOL-A v2 (Niizumi et al. 2023; nttcslab/byol-a v2): log-mel [B, 1, F, T] -> Conv(1->c, 3x3)-BN-ReLU-MaxPool(2)
    x2 -> per frame [c * F/4] (1024 at F 64, c 64) -> MLP c*F/4 -> hidden -> (dim - c*F/4) with ReLU and dropout
    -> [CNN features, MLP output] stacked to dim per frame -> max_t + mean_t -> [B, dim] (3072 in the paper)."""

    frame_step = 4  # log-mel frames per output frame

    def __init__(self, n_mels: int = 64, dim: int = 3072, base: int = 64, mlp_hidden: int = 2048,
                 dropout: float = 0.3):
        super().__init__()
        self.features = conv_blocks(2, base)
        self.conv_dim = base * (n_mels // 4)
        if dim <= self.conv_dim:
            raise ValueError(f"AudioNTT2022: dim {dim} must exceed the CNN's per-frame size {self.conv_dim}")
        self.fc = nn.Sequential(nn.Linear(self.conv_dim, mlp_hidden), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(mlp_hidden, dim - self.conv_dim), nn.ReLU())
        self.embed_dim = dim

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, F, T] -> per-frame features [B, T/4, dim]; a frame's CNN part is ordered (mel, channel)."""
        x = conv_frames(self.features(x))
        return torch.cat([x, self.fc(x)], dim=-1)


class AudioNTT2020(_AudioNTT):
    """BYOL-A v1 (Niizumi et al. 2021; nttcslab/byol-a, the released AudioNTT2020-BYOLA-64x96d{512,1024,2048}
    weights): log-mel [B, 1, F, T] -> Conv(3x3, 64)-BN-ReLU-MaxPool(2) x3 -> per frame [64 * F/8] ->
    Linear(64 F/8, d)-ReLU-Dropout-Linear(d, d)-ReLU -> max_t + mean_t -> [B, d]. The package trains v2."""

    frame_step = 8

    def __init__(self, n_mels: int = 64, dim: int = 512, base: int = 64, dropout: float = 0.3):
        super().__init__()
        self.features = conv_blocks(3, base)
        self.fc = nn.Sequential(nn.Linear(base * (n_mels // 8), dim), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(dim, dim), nn.ReLU())
        self.embed_dim = dim

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, F, T] -> per-frame features [B, T/8, dim]."""
        return self.fc(conv_frames(self.features(x)))


# ============================================================================ encoder files

# arch -> (class, {constructor argument: config key}); export.py writes the complete training config, so every key
# is there (no defaults here: one copy of the defaults, the training method's)
ARCHS = {
    "vit_audio": (AudioViT, {"n_mels": "n_mels", "crop_frames": "crop_frames", "patch": "patch", "width": "width",
                             "depth": "depth", "heads": "heads", "mlp_ratio": "mlp_ratio", "pos_embed": "pos_embed",
                             "readout": "readout"}),
    "vit_b_32": (ViTB32, {"image_size": "image_size", "crop_frames": "crop_frames"}),
    "resnet18_2d": (ClarEncoder, {"width": "width", "clip_seconds": "clip_seconds", "features": "features"}),
    "resnet18_1d": (ClarEncoder, {"width": "width", "kernel_1d": "kernel_1d", "clip_seconds": "clip_seconds"}),
    "audiontt2022": (AudioNTT2022, {"n_mels": "n_mels", "dim": "dim", "base": "base", "mlp_hidden": "mlp_hidden"}),
    "audiontt2020": (AudioNTT2020, {"n_mels": "n_mels", "dim": "dim", "base": "base"}),
}


def build_encoder(model_cfg: dict) -> nn.Module:
    """The network of a config's complete `model` section, chosen by model_cfg["arch"] (ARCHS), with no weights."""
    arch = model_cfg.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"unknown encoder architecture {arch!r}; this file knows {', '.join(ARCHS)}")
    cls, args = ARCHS[arch]
    missing = [key for key in args.values() if key not in model_cfg]
    if missing:
        raise ValueError(f"model config of {arch} lacks {', '.join(missing)} (export.py writes the complete config)")
    kwargs = {name: model_cfg[key] for name, key in args.items()}
    return cls(arch, **kwargs) if cls is ClarEncoder else cls(**kwargs)


def load(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """An encoder file (export.py) -> (encoder with its weights, in eval mode; the file's dict). Errors are one
    line naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: encoder file not found")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not an encoder file of {FORMAT} (torch.load: {first[:200]}); a training "
                         "checkpoint becomes one with `python export.py --ckpt CKPT --out FILE`") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise ValueError(f"{path}: not an encoder file of {FORMAT}; a training checkpoint becomes one with "
                         "`python export.py --ckpt CKPT --out FILE`")
    return encoder_from_bundle(bundle, path), bundle


def encoder_from_bundle(bundle: dict, path: str | os.PathLike = "encoder file") -> nn.Module:
    """The encoder of an encoder file's dict, with its weights, in eval mode."""
    encoder = build_encoder(bundle["config"]["model"])
    try:
        encoder.load_state_dict(bundle["encoder"])
    except RuntimeError as err:
        raise ValueError(f"{path}: encoder weights do not match its config ({str(err).splitlines()[0]})") from None
    return encoder.eval()


class Frontend(nn.Module):
    """wave [B, L] at 16 kHz -> the encoder's input: (LogMel(wave) - mean) / std as [B, 1, n_mels, 1 + L // hop]
    for log-mel encoders, the wave itself for wave encoders. `silence` is the input value of digital silence."""

    def __init__(self, input_kind: str, logmel: dict | None, norm: dict):
        super().__init__()
        if input_kind == "logmel":
            known = {f.name for f in fields(LogMelConfig)}
            self.logmel = LogMel(LogMelConfig(**{k: v for k, v in (logmel or {}).items() if k in known}))
        else:
            self.logmel = None
        self.mean, self.std = float(norm["mean"]), float(norm["std"])
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"input normalisation must have a finite mean and std > 0, got {norm}")
        self.hop = self.logmel.cfg.hop_length if self.logmel is not None else 1  # samples per input step
        self.silence = (LOG_SILENCE - self.mean) / self.std if self.logmel is not None else 0.0

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.logmel is None:
            return wave.float()
        return ((self.logmel(wave) - self.mean) / self.std)[:, None]


# ============================================================================ HEAR API


class HearModel(nn.Module):
    """An encoder behind the HEAR API: encoder + Frontend, with sample_rate, scene_embedding_size and
    timestamp_embedding_size (Python ints) and the load_model options."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, bundle: dict, pool: str = "cls", long: str = "chunk",
                 hop_ms: float = WINDOW_HOP_MS, tag: str = ""):
        super().__init__()
        self.encoder = encoder.eval()
        self.frontend = Frontend(encoder.input_kind, bundle["logmel"], bundle["norm"])
        self.scene_embedding_size = self.timestamp_embedding_size = int(encoder.embed_dim)
        self.frame_step = getattr(encoder, "frame_step", None)  # per-frame encoders (audiontt*): input frames/output
        is_vit = encoder.input_kind == "logmel" and not self.frame_step  # windows of crop_frames log-mel frames
        if pool not in ("cls", "mean") or (pool == "mean" and not is_vit):
            raise ValueError(f"load_model option pool={pool!r}: 'cls' (default), or 'mean' for a ViT encoder")
        if long not in ("chunk", "resize", "pad") or (long != "chunk" and self.frame_step):
            raise ValueError(f"load_model option long={long!r}: 'chunk' (default), 'resize' or 'pad' (ViT, ResNet)")
        step_ms = 1000 * self.frontend.hop / SAMPLE_RATE
        steps = float(hop_ms) / step_ms
        if self.frame_step and float(hop_ms) != WINDOW_HOP_MS:
            raise ValueError(f"load_model option hop_ms: {type(encoder).__name__} has its own frames, "
                             f"{self.frame_step * step_ms:g} ms apart")
        if not (0 < float(hop_ms) <= WINDOW_HOP_MS and abs(steps - round(steps)) < 1e-9):
            raise ValueError(f"load_model option hop_ms={hop_ms!r}: a multiple of {step_ms:g} ms in (0, 50]")
        self.pool, self.long, self.hop_steps, self.tag = pool, long, int(round(steps)), str(tag)
        # window of the windowed encoders: crop_frames log-mel frames (ViT) or the training clip in samples (ResNet)
        self.window = int(encoder.clip_samples if encoder.input_kind == "wave" else getattr(encoder, "crop_frames", 0))


def check_options(options: dict) -> None:
    """A one-line ValueError for a load_model option this module does not know."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"load_model: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")


OPTIONS = ("pool", "long", "hop_ms", "tag")


def load_model(model_file_path: str = "", **options) -> HearModel:
    """HEAR load_model: an encoder file of export.py -> HearModel. options (heareval --model-options): see the
    module docstring (pool, long, hop_ms, tag); an unknown one is a one-line ValueError."""
    check_options(options)
    if not model_file_path:
        raise ValueError("audio_ssl_repro.load_model: pass the path of an encoder file (export.py)")
    encoder, bundle = load(model_file_path)
    return HearModel(encoder, bundle, **options)


def _device(model: HearModel) -> torch.device:
    return next(model.encoder.parameters()).device


def check_audio(audio: torch.Tensor) -> torch.Tensor:
    """HEAR audio [n_sounds, n_samples], checked: a ValueError names a wrong shape or the sounds with NaN or inf
    samples; a sound shorter than MIN_SAMPLES (even 0 samples) is right-padded with zeros to it."""
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples], got shape {tuple(audio.shape)}")
    bad = (~torch.isfinite(audio)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        listed = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"audio has NaN or inf samples in {len(bad)} of {len(audio)} sounds (index {listed}); "
                         "HEAR audio must be finite, in [-1, 1]")
    return F.pad(audio, (0, MIN_SAMPLES - audio.shape[1])) if audio.shape[1] < MIN_SAMPLES else audio


def _embed(model: HearModel, x: torch.Tensor) -> torch.Tensor:
    """encoder.embed over the first axis in batches of BATCH -> float32 [N, D]."""
    return torch.cat([model.encoder.embed(x[i:i + BATCH], long=model.long, pool=model.pool).float()
                      for i in range(0, len(x), BATCH)])


def _pad_frames(model: HearModel, x: torch.Tensor, frames: int) -> torch.Tensor:
    return F.pad(x, (0, max(0, frames - x.shape[-1])), value=model.frontend.silence)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """HEAR get_scene_embeddings: audio [n, samples] at 16 kHz -> float32 [n, scene_embedding_size]."""
    audio = check_audio(audio)
    with torch.no_grad():
        x = model.frontend(audio.to(_device(model), torch.float32))
        if model.frame_step:  # its pools need one output frame
            x = _pad_frames(model, x, model.frame_step)
        return _embed(model, x)


def timestamps(n_samples: int, hop: int, offset: int = 0, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Timestamps (ms) offset + k * hop samples for k >= 0 up to the clip's end (at least one)."""
    count = max(1, (n_samples - offset) // hop + 1)
    return (offset + hop * torch.arange(count, dtype=torch.float64)) * 1000.0 / sample_rate


def centred_windows(x: torch.Tensor, step: int, count: int, width: int, value: float) -> torch.Tensor:
    """x [B, ..., T] -> [B * count, ..., width]: window k holds x[..., k*step - width//2 : k*step - width//2 + width],
    positions outside the clip filled with `value`."""
    left = width // 2
    right = max(0, (count - 1) * step + width - left - x.shape[-1])
    windows = F.pad(x, (left, right), value=value).unfold(-1, width, step)[..., :count, :]
    return windows.movedim(-2, 1).flatten(0, 1)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR get_timestamp_embeddings: audio [n, samples] at 16 kHz -> (float32 [n, T, timestamp_embedding_size],
    timestamps in ms [n, T]); see the module docstring for how each encoder family makes its frames."""
    n, n_samples, device = audio.shape[0], audio.shape[1], _device(model)  # timestamps: the sound's own length
    audio = check_audio(audio)
    with torch.no_grad():
        x = model.frontend(audio.to(device, torch.float32))
        hop = model.frontend.hop  # samples per input step (log-mel frame or sample)
        if model.frame_step:
            k = model.frame_step
            ts = timestamps(n_samples, k * hop, offset=(k - 1) * hop // 2)  # each frame's centre
            emb = model.encoder.frames(_pad_frames(model, x, k * len(ts)))[:, :len(ts)].float()
        else:
            step = model.hop_steps  # in input steps (5 log-mel frames or 800 samples at 50 ms)
            ts = timestamps(n_samples, step * hop)
            windows = centred_windows(x, step, len(ts), model.window, model.frontend.silence)
            emb = _embed(model, windows).view(n, len(ts), -1)
    return emb, ts.float().to(device).expand(n, -1).contiguous()
