"""The OCR model: a line image of any width → its characters.

    model = OCRModel(OCRConfig(vocab_size=len(vocab) + 2))
    out = model(pixels, widths, targets)            # pixels: Tensor[B x 1 x H x W], widths: real columns per row
    ids = model.generate(pixels, widths)            # the decoder, greedy, KV-cached: character ids per line
    # omni.infer.ocr reads lines by joint CTC/attention decoding (the decoder and the CTC head together)

Encoder: a CNN over the height-normalised line (height `image_height`, width kept in proportion, padded on
the right in a batch), which folds the height away and leaves one frame per `4` columns; then transformer
blocks with sinusoidal positions and a padding mask. Every convolution's output is zeroed beyond the row's
real width, so a line's frames are the same in any batch as alone (padding invariance). Decoder: causal
blocks (RoPE self-attention with a KV cache) with cross-attention to the encoder frames; an auxiliary CTC
head on the encoder frames (`ctc_weight`) gets the encoder aligned to the characters early.

Ids: 0 is padding (and CTC's blank), 1..n the vocabulary's characters (omni.vocab.CharVocab), then BOS, EOS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.audio_encoder import padding_mask, sinusoids
from omni.models.layers import CrossDecoderBlock, EncoderBlock, KVCache, RMSNorm, SeqConv2d, rope_tables


@dataclass
class OCRConfig:
    image_height: int = 32       # lines are resized to this height, their width in proportion
    channels: int = 64           # CNN width of the first stage; doubled at each of the next two
    d_model: int = 192
    enc_layers: int = 2
    dec_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    vocab_size: int = 0          # characters + padding + BOS + EOS; 0 = from the vocabulary, filled in at build
    max_text_length: int = 256   # characters of a label; the decoder's positions (+ BOS, EOS)
    max_width: int = 2048        # columns after resizing; wider lines are skipped and counted


def ctc_length(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Characters in each row's greedy CTC reading (repeats merged, blanks dropped): Long[B]."""
    best = logits.argmax(-1)
    new = torch.ones_like(mask)
    new[:, 1:] = best[:, 1:] != best[:, :-1]
    return ((best != 0) & new & mask).sum(1)


def conv_width(w, kernel: int, stride: int, pad: int):
    """Output columns of a convolution over `w` input columns (int or Tensor)."""
    return (w + 2 * pad - kernel) // stride + 1


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of Tensor[B x C x H x W]: per position, so padding never
    leaks into a line's statistics (batch or group norms would mix it in)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LineCNN(nn.Module):
    """Tensor[B x 1 x H x W] + widths → Tensor[B x W/4 x d_model] + frame counts. Stages (kernel 3): stride 2
    in both axes, stride 2 in both, stride (2, 1), then a convolution over the remaining height (H/8). The
    convolutions run outside torch.compile's graphs: lines vary in width from batch to batch."""

    STRIDES = ((2, 2), (2, 2), (2, 1))

    def __init__(self, cfg: OCRConfig):
        super().__init__()
        if cfg.image_height % 8:
            raise ValueError(f"ocr image_height must be a multiple of 8, got {cfg.image_height}")
        chans = [1, cfg.channels, 2 * cfg.channels, 4 * cfg.channels]
        self.convs = nn.ModuleList(SeqConv2d(chans[i], chans[i + 1], 3, stride=s, padding=1)
                                   for i, s in enumerate(self.STRIDES))
        self.norms = nn.ModuleList(ChannelNorm(c) for c in chans[1:])
        self.fold = SeqConv2d(chans[-1], cfg.d_model, (cfg.image_height // 8, 1))

    @staticmethod
    def frames(widths):
        for s in LineCNN.STRIDES:
            widths = conv_width(widths, 3, s[1], 1)
        return widths

    def forward(self, x: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last: oneDNN's faster layout for these convolutions on the CPU, and ChannelNorm's permute a view
        x = (x * padding_mask(widths, x.shape[-1])[:, None, None, :]).contiguous(memory_format=torch.channels_last)
        for conv, norm, s in zip(self.convs, self.norms, self.STRIDES):
            widths = conv_width(widths, 3, s[1], 1)
            x = F.gelu(norm(conv(x)))
            x = x * padding_mask(widths, x.shape[-1])[:, None, None, :].to(x.dtype)
        return self.fold(x).squeeze(2).transpose(1, 2), widths


class OCRModel(nn.Module):
    def __init__(self, cfg: OCRConfig):
        super().__init__()
        if cfg.vocab_size < 4:
            raise ValueError("ocr vocab_size must count padding, the characters, BOS and EOS")
        self.cfg = cfg
        self.bos, self.eos = cfg.vocab_size - 2, cfg.vocab_size - 1
        self.cnn = LineCNN(cfg)
        self.encoder = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
                                     for _ in range(cfg.enc_layers))
        self.enc_norm = RMSNorm(cfg.d_model)
        self.ctc_head = nn.Linear(cfg.d_model, cfg.vocab_size - 2)   # blank + characters
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(CrossDecoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout)
                                    for _ in range(cfg.dec_layers))
        self.dec_norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.max_len = cfg.max_text_length + 2
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, self.max_len, 10000.0)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if p.ndim >= 2 and not name.startswith("cnn."):
                std = 0.02 / math.sqrt(2 * (cfg.enc_layers + cfg.dec_layers)) if name.endswith(
                    ("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def encode(self, pixels: torch.Tensor, widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (frames Tensor[B x S x d], mask Bool[B x S], True on real frames)."""
        x, lengths = self.cnn(pixels, widths)
        x = x + sinusoids(x.shape[1], x.shape[2]).to(x.device, x.dtype)
        mask = padding_mask(lengths, x.shape[1])
        for block in self.encoder:
            x = block(x, key_padding_mask=mask)
        return self.enc_norm(x), mask

    def decode(self, ids, memory_kv, memory_mask, cache: KVCache | None = None) -> torch.Tensor:
        """ids: Tensor[B x T] (the next T positions after the cached ones) → logits Tensor[B x T x V]."""
        start = cache.pos if cache is not None else 0
        T = ids.shape[1]
        if start + T > self.max_len:
            raise ValueError(f"OCR decoder: {start + T} positions exceed max_text_length {self.cfg.max_text_length} + 2")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, memory_kv[i], memory_mask, cache, i)
        if cache is not None:
            cache.pos += T
        return self.head(self.dec_norm(x))

    def memory_kv(self, memory):
        return [b.cross_attn.memory_kv(memory) for b in self.blocks]

    def forward(self, pixels, widths, targets: torch.Tensor | None = None) -> dict:
        """targets: Tensor[B x L] = BOS, characters, EOS, padding 0 → {"ctc_logits", "frames", "logits"}."""
        memory, mask = self.encode(pixels, widths)
        out = {"ctc_logits": self.ctc_head(memory), "frames": mask.sum(1)}
        if targets is not None:
            out["logits"] = self.decode(targets[:, :-1], self.memory_kv(memory), mask)
        return out

    @torch.no_grad()
    def generate(self, pixels, widths, max_chars: int | None = None, use_cache: bool = True,
                 ctc_bound: float | None = 1.25, encoded: tuple | None = None) -> list[list[int]]:
        """Greedy decoding; each row stops at EOS, or after as many characters as it has encoder frames (the
        most a line of its width can hold: CTC needs a frame per character), or, with `ctc_bound`, after
        ceil(ctc_bound x the CTC head's greedy length) + 2 characters: what the image holds bounds the output,
        so a decoder that loses its place past the lengths it trained on cannot run on in a loop. `encoded`:
        encode()'s (memory, mask) of these pixels, when the caller has them. → character ids per row (no BOS /
        EOS)."""
        memory, mask = encoded if encoded is not None else self.encode(pixels, widths)
        room = mask.sum(1)   # characters each row may still write
        if ctc_bound is not None:
            room = torch.minimum(room, (ctc_bound * ctc_length(self.ctc_head(memory), mask)).ceil().long() + 2)
        kv = self.memory_kv(memory)
        B = pixels.shape[0]
        n_max = min(max_chars or self.cfg.max_text_length, self.cfg.max_text_length)
        limit = n_max + 1   # the characters, then EOS
        ids = torch.full((B, 1), self.bos, dtype=torch.long, device=pixels.device)
        cache = KVCache(len(self.blocks), B, self.cfg.n_heads, limit + 1, self.cfg.d_model // self.cfg.n_heads,
                        pixels.device, memory.dtype) if use_cache else None
        done = torch.zeros(B, dtype=torch.bool, device=pixels.device)
        out = []
        for _ in range(limit):
            logits = self.decode(ids[:, -1:] if use_cache else ids, kv, mask, cache)[:, -1]
            nxt = logits.argmax(-1).masked_fill(done | (room < len(out) + 1), self.eos)
            out.append(nxt)
            done |= nxt == self.eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            if done.all():
                break
        rows = torch.stack(out, 1).tolist()
        return [[i for i in r[:r.index(self.eos) if self.eos in r else n_max] if 0 < i < self.bos] for r in rows]
