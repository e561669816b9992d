"""The audio encoder: log-mel frames -> strided convolutions -> bidirectional transformer -> CTC head.

Shapes: features Tensor[B x T x n_mels] at 100 frames/s with `lengths` Tensor[B] (real frames per row; the
rest is padding) -> hidden Tensor[B x T' x d_model] at 100/downsample frames/s and CTC logits
Tensor[B x T' x vocab]. Every layer ignores padding (the convolutions see zeros past each row's end, as an
unpadded row would, and attention masks padded keys), so a sample encodes the same in any batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.layers import Dropout, EncoderBlock, RMSNorm, SeqConv1d, SeqConv2d


@dataclass
class AudioEncoderConfig:
    n_mels: int = 128            # must match the features' n_mels
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 3
    d_ff: int = 768
    downsample: int = 4          # 4: 25 frames/s, enough for characters; 8: 12.5 fps, the Talker's frame rate
    frontend: str = "conv1d"     # conv1d: kernels span all mel bins; conv2d: 3x3 kernels over (time, mel),
                                 # shift-equivariant in frequency, so a voice's formants may move (unseen voices)
    conv_channels: int = 32      # conv2d only: channels of the 2-D stem before the projection to d_model
    conv_kernel: int = 0         # > 0: a Conformer convolution module (depthwise, this kernel) after each block
    dropout: float = 0.1
    vocab_size: int = 0          # CTC classes including the blank; 0 = taken from the training transcripts


def sinusoids(T: int, d: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal positions Tensor[T x d] (Vaswani et al. 2017; Whisper's encoder). Added once at the
    input, they cost nothing per layer, unlike RoPE, which on CPU took a quarter of a training step here."""
    inv = torch.exp(-math.log(max_timescale) * torch.arange(d // 2, dtype=torch.float32) / max(d // 2 - 1, 1))
    t = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """Bool[B x T], True on real frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def encoder_frames(frames, downsample: int):
    """Encoder frames for `frames` feature frames (int or Tensor): one ceil-halving per stride-2 conv."""
    for _ in range(int(round(math.log2(downsample)))):
        frames = (frames - 1) // 2 + 1
    return frames


class ConvDownsample(nn.Module):
    """log2(factor) Conv1d(kernel 3, stride 2) + GELU layers: Tensor[B x T x n_mels] -> Tensor[B x T' x d]."""

    def __init__(self, n_mels: int, d_model: int, factor: int):
        super().__init__()
        n = int(round(math.log2(factor)))
        if factor < 1 or 2 ** n != factor:
            raise ValueError(f"downsample must be a power of two (1, 2, 4, 8, ...), got {factor}")
        self.convs = nn.ModuleList(SeqConv1d(n_mels if i == 0 else d_model, d_model, 3, stride=2, padding=1)
                                   for i in range(n))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x * padding_mask(lengths, x.shape[1])[..., None]).transpose(1, 2)   # [B x C x T]
        for conv in self.convs:
            x = F.gelu(conv(x))
            lengths = encoder_frames(lengths, 2)
            # zero the padding again (the bias and the kernel's reach made it non-zero), so the next layer
            # sees exactly the zeros an unpadded row's own zero-padding would give it
            x = x * padding_mask(lengths, x.shape[-1])[:, None, :]
        return x.transpose(1, 2), lengths


class Conv2dDownsample(nn.Module):
    """log2(factor) Conv2d(3x3, stride 2) + GELU layers over (time, mel), then a linear projection of
    channels x remaining mel bins: Tensor[B x T x n_mels] -> Tensor[B x T' x d] (the ESPnet/Conformer stem)."""

    def __init__(self, n_mels: int, d_model: int, factor: int, channels: int):
        super().__init__()
        n = int(round(math.log2(factor)))
        if factor < 2 or 2 ** n != factor:
            raise ValueError(f"downsample must be a power of two >= 2 for the conv2d front end, got {factor}")
        self.convs = nn.ModuleList(SeqConv2d(1 if i == 0 else channels, channels, 3, stride=2, padding=1)
                                   for i in range(n))
        self.proj = nn.Linear(channels * encoder_frames(n_mels, factor), d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x * padding_mask(lengths, x.shape[1])[..., None]).unsqueeze(1)        # [B x 1 x T x n_mels]
        for conv in self.convs:
            x = F.gelu(conv(x))
            lengths = encoder_frames(lengths, 2)
            x = x * padding_mask(lengths, x.shape[2])[:, None, :, None]         # as in ConvDownsample
        B, C, T, Fq = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(B, T, C * Fq)), lengths


class ConvModule(nn.Module):
    """The Conformer's convolution module (Gulati et al. 2020), residual: RMSNorm -> pointwise GLU ->
    depthwise Conv1d over time -> SiLU -> pointwise. Attention sees the whole utterance; this sees the
    neighbouring frames, the local pattern a phone is made of. Padded frames are zeroed before the depthwise
    convolution, so a row encodes the same in any batch (no BatchNorm, for the same reason)."""

    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (centred), got {kernel}")
        self.norm = RMSNorm(d_model)
        self.inp = nn.Linear(d_model, 2 * d_model)
        self.depthwise = SeqConv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.inp(self.norm(x)), dim=-1) * mask[..., None]
        h = F.silu(self.depthwise(h.transpose(1, 2)).transpose(1, 2))
        return x + self.drop(self.out(h))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        if cfg.vocab_size < 2:
            raise ValueError("AudioEncoderConfig.vocab_size must be set (CTC blank + at least one character)")
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
        self.cfg = cfg
        if cfg.frontend == "conv1d":
            self.subsample = ConvDownsample(cfg.n_mels, cfg.d_model, cfg.downsample)
        elif cfg.frontend == "conv2d":
            self.subsample = Conv2dDownsample(cfg.n_mels, cfg.d_model, cfg.downsample, cfg.conv_channels)
        else:
            raise ValueError(f"AudioEncoderConfig.frontend must be 'conv1d' or 'conv2d', got {cfg.frontend!r}")
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
                                    for _ in range(cfg.n_layers))
        self.convs = nn.ModuleList(ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout)
                                   for _ in range(cfg.n_layers if cfg.conv_kernel > 0 else 0))
        self.norm = RMSNorm(cfg.d_model)
        self.ctc_head = nn.Linear(cfg.d_model, cfg.vocab_size)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("out.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    def output_length(self, frames):
        """Encoder frames for `frames` input frames (int or Tensor)."""
        return encoder_frames(frames, self.cfg.downsample)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> dict:
        """feats: Tensor[B x T x n_mels], zero-padded past `lengths` Tensor[B].

        Returns {"hidden": Tensor[B x T' x d_model] (final-normed, for the projectors of later stages),
        "logits": Tensor[B x T' x vocab] (CTC), "lengths": Tensor[B] (real encoder frames)}."""
        x, lengths = self.subsample(feats, lengths)
        T = x.shape[1]
        mask = padding_mask(lengths, T)
        x = self.drop(x + sinusoids(T, self.cfg.d_model).to(x.device, x.dtype))
        for i, block in enumerate(self.blocks):
            x = block(x, mask)
            if self.convs:
                x = self.convs[i](x, mask)
        hidden = self.norm(x)
        return {"hidden": hidden, "logits": self.ctc_head(hidden), "lengths": lengths}


BLANK = 0  # CTC class 0 (omni.vocab.CharVocab numbers the characters from 1)


def ctc_frames_needed(label: list[int]) -> int:
    """Fewest encoder frames that can emit `label` under CTC: one per character, plus a blank between
    each pair of equal neighbours ("ll" needs l, blank, l)."""
    return len(label) + sum(a == b for a, b in zip(label, label[1:]))


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]], reduction: str = "sum"):
    """CTC negative log-likelihood of `labels` (lists of class ids, no blanks) given logits Tensor[B x T x V]
    with `lengths` real frames per row; "sum" over utterances, or "mean" per label character."""
    logp = logits.float().log_softmax(-1).transpose(0, 1)                      # [T x B x V]
    targets = torch.tensor([c for lab in labels for c in lab], device=logits.device)
    target_lengths = torch.tensor([len(lab) for lab in labels], device=logits.device)
    loss = F.ctc_loss(logp, targets, lengths, target_lengths, blank=BLANK, reduction="sum", zero_infinity=True)
    return loss if reduction == "sum" else loss / target_lengths.sum().clamp_min(1)
