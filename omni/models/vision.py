"""The vision encoder (a ViT) and the contrastive image–text model that trains it (Stage C).

    enc = VisionEncoder(ViTConfig())                 # images: Tensor[B x 3 x S x S] in [0, 1]
    cls, patches = enc(images)                       # Tensor[B x d], Tensor[B x N x d], N = (S / patch)²
    a = load_artifact("runs/demo/vision/vision.pt")  # omni.artifacts: a.model is the ClipModel, a.tokenizer
    clip = a.model
    clip.encode_image(images), clip.encode_text(ids, mask)   # unit vectors in the shared embed_dim space

The text side is either the frozen Thinker (its hidden states, standardised; the default) or a
trainable token embedding with learned positions; either way a few non-causal blocks and a masked mean pool
follow, so the text side can learn which colour goes with which shape even over frozen features.
With `caption.n_layers > 0` a small caption decoder cross-attends to the ViT's CLS and patch tokens and
writes the caption (CapPa, Tschannen et al. 2023; SigLIP 2's LocCa): captions name each object's shape,
colour and place, so this loss falls only where the patch tokens carry what sits at each place — the dense
features Stage E reads, which the contrastive loss on the CLS alone does not give.
SFT takes `clip.vision` (CLS and patch tokens, d_model wide); images reach it through omni.data.images.to_pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.layers import CrossDecoderBlock, EncoderBlock, RMSNorm, rope_tables
from omni.models.thinker import Thinker
from omni.tokenizer import BOS, EOS, UNK

# Pixels are scaled to [-1, 1] inside the encoder, so every caller feeds plain [0, 1] images.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16         # 224 / 16 = 14 x 14 = 196 patch tokens + CLS
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 2
    d_ff: int = 512
    dropout: float = 0.0
    stem: str = "patch"          # "patch": one linear map per patch; "conv": stride-2 3x3 convolutions first
    stem_channels: int = 32      # "conv": channels of the first convolution, doubled by each next one


@dataclass
class TextSideConfig:
    """The text tower. With the frozen Thinker, its hidden states are projected to d_model first."""
    d_model: int = 128
    n_layers: int = 1            # non-causal blocks over the token features (0 = pool them directly)
    n_heads: int = 2
    d_ff: int = 512
    max_len: int = 64            # caption tokens; longer captions are skipped and counted, never truncated
    vocab_size: int = 0          # trainable embedding only; 0 = the tokenizer's size, filled in at build


@dataclass
class CaptionDecoderConfig:
    """The caption decoder (a training aid for dense features); n_layers 0 = none, contrastive only."""
    n_layers: int = 0
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 384
    parallel: float = 0.0        # CapPa: share of rows whose decoder input is mask tokens only, so every
                                 # caption token must come from the image (0: all autoregressive)
    vocab_size: int = 0          # the tokens it writes: those of the training captions (filled in at build;
                                 # the head over them costs a tenth of one over the whole tokenizer)


@dataclass
class ClipConfig:
    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextSideConfig = field(default_factory=TextSideConfig)
    caption: CaptionDecoderConfig = field(default_factory=CaptionDecoderConfig)
    embed_dim: int = 128                 # the shared space both towers project into
    init_temperature: float = 0.07       # CLIP: logit scale starts at 1/0.07 ...
    max_logit_scale: float = 100.0       # ... and is clamped here, or it runs away and training goes unstable


def _init_weights(module: nn.Module, n_layers: int) -> None:
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            std = 0.02 / math.sqrt(2 * max(n_layers, 1)) if name.endswith(("out.weight", "down.weight")) else 0.02
            nn.init.normal_(p, std=std)


class VisionEncoder(nn.Module):
    """ViT: non-overlapping patches → linear embedding, a CLS token, learned positions, pre-norm blocks."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        self.n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = _stem(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.n_patches, cfg.d_model))
        self.blocks = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.dropout)
                                    for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        _init_weights(self, cfg.n_layers)
        for conv in list(self.patch_embed.modules())[:-1] if cfg.stem == "conv" else []:
            if isinstance(conv, nn.Conv2d):   # ReLU-family gain, or the signal fades through the stem
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """images: Tensor[B x 3 x S x S] in [0, 1] → (cls: Tensor[B x d], patches: Tensor[B x N x d]),
        both after the final norm; patches in raster order (row by row). `layer`: the block whose output is
        returned (-1 the last, -2 the one before, as LLaVA's feature layer; through the final norm too)."""
        S = self.cfg.image_size
        if images.shape[-2:] != (S, S):
            raise ValueError(f"expected {S}x{S} images, got {tuple(images.shape[-2:])}; resize them with "
                             "omni.data.images.to_pixels")
        x = self.patch_embed((images - PIXEL_MEAN) / PIXEL_STD).flatten(2).transpose(1, 2)   # [B x N x d]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        n = len(self.blocks)
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} out of range for a ViT with {n} blocks")
        for block in self.blocks[:layer % n + 1]:
            x = block(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


def _stem(cfg: ViTConfig) -> nn.Module:
    """Pixels → one d_model vector per patch, Tensor[B x d x S/p x S/p]. "conv" (Xiao et al. 2021, early
    convolutions): 3x3 stride-2 convolutions halve the resolution until a last patchify convolution of what
    is left; their translation equivariance lets a small ViT see the shape of a small object wherever it sits
    in its patch, which one linear map per patch learns only from far more images."""
    p = cfg.patch_size
    if cfg.stem == "patch":
        return nn.Conv2d(3, cfg.d_model, p, stride=p)
    if cfg.stem != "conv":
        raise ValueError(f"vision.stem must be 'patch' or 'conv', got {cfg.stem!r}")
    if p < 4 or p & (p - 1):
        raise ValueError(f"a conv stem needs a power-of-two patch_size >= 4, got {p}")
    layers, c_in, c = [], 3, cfg.stem_channels
    for _ in range(2):
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(1, c), nn.GELU()]
        c_in, c = c, c * 2
    layers.append(nn.Conv2d(c_in, cfg.d_model, p // 4, stride=p // 4))
    return nn.Sequential(*layers)


class TextTower(nn.Module):
    """Caption tokens → one vector [B x d]: token features (frozen Thinker hidden states, standardised, through
    a linear map; or a trainable embedding plus learned positions) → non-causal blocks → mean over real tokens."""

    def __init__(self, cfg: TextSideConfig, thinker: Thinker | None):
        super().__init__()
        self.cfg = cfg
        self.thinker = thinker
        if thinker is not None:
            thinker.requires_grad_(False)
            self.thinker_proj = nn.Linear(thinker.cfg.d_model, cfg.d_model, bias=False)
            # Per-dimension mean and std of the frozen states over the training captions (set_feature_stats):
            # a few dimensions carry large offsets shared by every caption, which drown the differences
            # between captions until the states are standardised. Saved with the weights.
            d = thinker.cfg.d_model
            self.register_buffer("feature_mean", torch.zeros(d))
            self.register_buffer("feature_std", torch.ones(d))
        else:
            if cfg.vocab_size <= 0:
                raise ValueError("text.vocab_size must be set for the trainable embedding text side")
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_len, cfg.d_model))
        self.blocks = nn.ModuleList(EncoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, 0.0, 0.0)
                                    for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        for name, p in self.named_parameters():
            if not name.startswith("thinker."):
                if p.ndim >= 2:
                    nn.init.normal_(p, std=0.02)

    @property
    def uses_thinker(self) -> bool:
        return self.thinker is not None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.thinker is not None:
            self.thinker.eval()  # frozen: no dropout, whatever the rest does
        return self

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        """features: Tensor[N x T x d] Thinker states, mask: Bool[N x T] → the standardisation buffers."""
        h = features[mask].float()
        self.feature_mean.copy_(h.mean(0))
        self.feature_std.copy_(h.std(0).clamp(min=1e-3))

    @torch.no_grad()
    def thinker_features(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: Tensor[B x T] right-padded → frozen hidden states Tensor[B x T x d_thinker]. The Thinker is
        causal, so the padding after a caption never changes its tokens' states: these can be cached."""
        return self.thinker(ids, return_hidden=True, return_logits=False)["hidden"]

    def forward(self, ids: torch.Tensor | None, mask: torch.Tensor, features: torch.Tensor | None = None):
        """ids: Tensor[B x T], mask: Bool[B x T] (True on real tokens); `features` (cached Thinker hidden
        states [B x T x d_thinker]) replaces running the Thinker. → Tensor[B x d_model]."""
        if self.uses_thinker:
            h = features if features is not None else self.thinker_features(ids)
            x = self.thinker_proj((h - self.feature_mean) / self.feature_std)
        else:
            x = self.embed(ids) + self.pos_embed[:, :ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_padding_mask=mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)


class CaptionDecoder(nn.Module):
    """Writes an image's caption from its ViT tokens: causal blocks with RoPE self-attention and
    cross-attention to the (projected) CLS + patch tokens, a head tied to the token embedding.
    Token ids are the text side's (caption + EOS), mapped to the decoder's own vocabulary: the `token_ids` it
    was built with (set_vocab; the tokens of the training captions, others read as UNK). BOS starts the input,
    and for the `parallel` share of rows (training only) every input is BOS instead, so the whole caption is
    read off the image at once."""

    def __init__(self, cfg: CaptionDecoderConfig, d_vision: int, max_len: int):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("caption.vocab_size must be set (the tokenizer's size)")
        self.cfg = cfg
        self.memory_proj = nn.Linear(d_vision, cfg.d_model, bias=False)
        self.memory_norm = RMSNorm(cfg.d_model)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(CrossDecoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff)
                                    for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.register_buffer("token_ids", torch.arange(cfg.vocab_size))   # sorted tokenizer ids; saved
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, max_len + 1, 10000.0)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        _init_weights(self, cfg.n_layers)

    @torch.no_grad()
    def set_vocab(self, token_ids: list[int]) -> None:
        """The tokenizer ids it writes (BOS, EOS and UNK among them), len == cfg.vocab_size."""
        ids = sorted(set(token_ids) | {BOS, EOS, UNK})
        if len(ids) != self.cfg.vocab_size:
            raise ValueError(f"caption vocabulary of {len(ids)} tokens, configured for {self.cfg.vocab_size}")
        self.token_ids.copy_(torch.tensor(ids))

    def to_vocab(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids → indices into token_ids (UNK's for an id it does not write)."""
        i = torch.searchsorted(self.token_ids, ids).clamp(max=len(self.token_ids) - 1)
        unk = torch.searchsorted(self.token_ids, torch.tensor(UNK, device=ids.device))
        return torch.where(self.token_ids[i] == ids, i, unk)

    def forward(self, tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                parallel: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: Tensor[B x N x d_vision] (CLS + patches); ids: Tensor[B x T] caption + EOS, right-padded;
        mask: Bool[B x T] on real ids; parallel: Bool[B], rows decoded from BOS inputs only.
        → logits Tensor[B x T x V] over token_ids, position t predicting ids[:, t]."""
        memory = self.memory_norm(self.memory_proj(tokens))
        inputs = self.to_vocab(torch.cat([torch.full_like(ids[:, :1], BOS), ids[:, :-1]], dim=1))
        if parallel is not None:
            inputs = inputs.masked_fill(parallel[:, None], int(self.to_vocab(torch.tensor(BOS))))
        T = ids.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x, cos, sin, block.cross_attn.memory_kv(memory))
        return self.norm(x) @ self.embed.weight.t()

    def loss(self, tokens, ids, mask, parallel=None) -> torch.Tensor:
        """Mean cross-entropy over the real caption tokens."""
        logits = self(tokens, ids, mask, parallel)
        return F.cross_entropy(logits.float().flatten(0, 1), self.to_vocab(ids).masked_fill(~mask, -100).flatten())

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_len: int) -> list[list[int]]:
        """Greedy captions of Tensor[B x N x d_vision] tokens → token ids per row (without EOS). Reruns the
        prefix each step (captions are a few dozen tokens): this is for evaluation, not serving."""
        ids = torch.zeros(tokens.shape[0], 0, dtype=torch.long, device=tokens.device)
        done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(max_len):
            pad = torch.cat([ids, ids.new_zeros(len(ids), 1)], 1)   # the position to predict
            nxt = self.token_ids[self(tokens, pad, torch.ones_like(pad, dtype=torch.bool))[:, -1].argmax(-1)]
            ids = torch.cat([ids, nxt.masked_fill(done, EOS)[:, None]], 1)
            done |= nxt == EOS
            if done.all():
                break
        return [[i for i in row[:row.index(EOS) if EOS in row else len(row)]] for row in ids.tolist()]


class ClipModel(nn.Module):
    """CLIP-style image–text model: ViT + text tower, each projected to embed_dim, one learnable logit scale."""

    def __init__(self, cfg: ClipConfig, thinker: Thinker | None = None):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.text = TextTower(cfg.text, thinker)
        self.image_proj = nn.Linear(cfg.vision.d_model, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text.d_model, cfg.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=cfg.vision.d_model ** -0.5)
        nn.init.normal_(self.text_proj.weight, std=cfg.text.d_model ** -0.5)
        # named logit_scale: the engine's optimizer keeps it out of weight decay. Shape [1], not 0-d: the
        # engine's DDP weight check views every tensor as bytes, which a 0-d tensor cannot do.
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / cfg.init_temperature)]))
        self.captioner = (CaptionDecoder(cfg.caption, cfg.vision.d_model, cfg.text.max_len)
                          if cfg.caption.n_layers > 0 else None)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: Tensor[B x 3 x S x S] in [0, 1] → unit vectors Tensor[B x embed_dim]."""
        cls, _ = self.vision(images)
        return F.normalize(self.image_proj(cls), dim=-1)

    def encode_text(self, ids, mask, features=None) -> torch.Tensor:
        """ids: Tensor[B x T], mask: Bool[B x T] (or cached Thinker `features`) → unit vectors [B x embed_dim]."""
        return F.normalize(self.text_proj(self.text(ids, mask, features)), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped at max_logit_scale: a 0-d tensor."""
        return self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()[0]

    def forward(self, images, ids, mask, features=None, neg_ids=None, neg_mask=None, neg_features=None,
                parallel=None, caption_rows: int = 0) -> dict:
        """→ {"loss": symmetric InfoNCE of the batch, "image", "text": Tensor[B x E], "scale": 0-d, and with a
        caption decoder "caption_loss"}. neg_*: hard negative captions (N of them), extra wrong answers for
        every image (clip_loss). parallel: Bool[B], the caption decoder's parallel-prediction rows.
        caption_rows: the decoder writes the captions of the first this many rows only (0: all)."""
        cls, patches = self.vision(images)
        img = F.normalize(self.image_proj(cls), dim=-1)
        txt = self.encode_text(ids, mask, features)
        neg = self.encode_text(neg_ids, neg_mask, neg_features) if neg_ids is not None else None
        scale = self.scale()
        out = {"loss": clip_loss(img, txt, scale, neg), "image": img, "text": txt, "scale": scale.detach()}
        if self.captioner is not None:
            k = caption_rows or len(ids)
            T = int(mask[:k].sum(1).max())   # the longest of these captions: no padding beyond it
            tokens = torch.cat([cls[:k, None], patches[:k]], dim=1)
            out["caption_loss"] = self.captioner.loss(tokens, ids[:k, :T], mask[:k, :T],
                                                      parallel[:k] if parallel is not None else None)
        return out

    @torch.no_grad()
    def describe(self, images: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
        """Greedy captions (token ids) of Tensor[B x 3 x S x S] images, by the caption decoder."""
        if self.captioner is None:
            raise ValueError("this vision model has no caption decoder (model.caption.n_layers is 0)")
        cls, patches = self.vision(images)
        return self.captioner.generate(torch.cat([cls[:, None], patches], dim=1), max_len or self.cfg.text.max_len)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
              neg: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): mean of image→text and text→image cross-entropy over the B x B similarities.
    img, txt: Tensor[B x E] unit vectors. Duplicate captions in a batch need no special target: their
    embeddings are identical, so their columns (and rows) of logits are too, and the one-hot target gives
    exactly the loss and gradient of a target spread over the duplicates (tests/test_vision.py checks it).
    neg: Tensor[N x E], hard negative captions appended to the image→text candidates (NegCLIP)."""
    logits = scale * img.float() @ txt.float().t()
    target = torch.arange(len(img), device=img.device)
    i2t = logits if neg is None else torch.cat([logits, scale * img.float() @ neg.float().t()], dim=1)
    return 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(logits.t(), target))
