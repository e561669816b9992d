"""The omni model of Stage E: the Thinker reading images and speech through projectors.

    model = OmniModel(OmniConfig(thinker=..., vision=..., audio=..., projector=ProjectorConfig()))
    out = model(ids, targets, image_feats=..., audio_feats=..., audio_counts=...)   # or pixels=, mels=

Image: the ViT's patch tokens average-pooled to a `image_tokens` grid (plus its CLS), then a 2-layer MLP into
the Thinker's width. Audio: the encoder's real frames of each clip (padding removed by length), `audio_stack`
neighbouring frames concatenated into one token (the last group zero-filled), then a 2-layer MLP. The
projected tokens replace the chat template's `<|image|>` / `<|audio|>` placeholders in order; RoPE positions
run on across media and text. The encoder-side reductions (`image_features`, `audio_features`) have no
parameters of their own, so frozen encoders' outputs can be computed once and cached by the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.audio_encoder import AudioEncoder, AudioEncoderConfig, padding_mask
from omni.models.thinker import Thinker, ThinkerConfig
from omni.models.vision import ViTConfig, VisionEncoder
from omni.tokenizer import LAYOUTS, SPECIAL_IDS

IMAGE_ID, AUDIO_ID = SPECIAL_IDS["<|image|>"], SPECIAL_IDS["<|audio|>"]  # the chat template's placeholders
# a batch's media inputs: cached features, or raw media for the encoders (omni.data.sft.media_batch makes them)
MEDIA_KEYS = ("image_feats", "audio_feats", "audio_counts", "pixels", "mels", "mel_lengths")


@dataclass
class ProjectorConfig:
    image_tokens: int = 16       # patch tokens after average pooling to a square grid (0: CLS only)
    image_cls: bool = True       # the CLS token too (Stage C trained it against captions)
    audio_stack: int = 4         # encoder frames per audio token (25 fps / 4: 6.25 tokens a second)
    hidden: int = 0              # MLP width; 0: the Thinker's d_model
    vision_layer: int = -1       # the ViT block whose tokens are used (-2: the one before the last, as LLaVA)
    image_slots: bool = False    # a learned embedding per image token: which cell it came from, as content


@dataclass
class OmniConfig:
    """Everything that rebuilds the model; the parts' sizes come from the Stage A/B/C artifacts."""
    thinker: ThinkerConfig = field(default_factory=ThinkerConfig)
    vision: ViTConfig | None = None
    audio: AudioEncoderConfig | None = None
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    chat_layout: str = "media_first"   # omni.tokenizer.LAYOUTS; artifacts written before the option used media_first


def image_features(vision: VisionEncoder, pixels: torch.Tensor, n_tokens: int, cls: bool,
                   layer: int = -1) -> torch.Tensor:
    """pixels: Tensor[N x 3 x S x S] in [0, 1] → Tensor[N x (cls + n_tokens) x d_vision]."""
    c, patches = vision(pixels, layer)
    grid, side = int(round(math.sqrt(patches.shape[1]))), int(round(math.sqrt(n_tokens)))
    parts = [c[:, None]] if cls else []
    if n_tokens:
        x = patches.transpose(1, 2).reshape(len(pixels), -1, grid, grid)
        parts.append(F.adaptive_avg_pool2d(x, side).flatten(2).transpose(1, 2))
    return torch.cat(parts, dim=1)


def audio_features(audio: AudioEncoder, mels: torch.Tensor, lengths: torch.Tensor,
                   stack: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mels: Tensor[N x T x n_mels] zero-padded past `lengths` → (Tensor[N x S x stack·d_audio], tokens per
    clip Long[N]); a clip's tokens depend on its own frames only, whatever it is batched with."""
    out = audio(mels, lengths)
    h, n = out["hidden"], out["lengths"]
    h = h * padding_mask(n, h.shape[1])[..., None]
    pad = -h.shape[1] % stack
    h = F.pad(h, (0, 0, 0, pad))
    return h.reshape(h.shape[0], -1, stack * h.shape[-1]), (n + stack - 1) // stack


def audio_token_count(audio_cfg: AudioEncoderConfig, stack: int, mel_frames: int) -> int:
    from omni.models.audio_encoder import encoder_frames
    return -(-encoder_frames(mel_frames, audio_cfg.downsample) // stack)


class Projector(nn.Module):
    """LLaVA-1.5's 2-layer MLP: Linear → GELU → Linear; with `slots`, a learned embedding added to each of the
    `slots` tokens of an input (x: Tensor[N x slots x d_in]), so that the Thinker's attention can find a place's
    token by what it holds, not by counting positions."""

    def __init__(self, d_in: int, hidden: int, d_out: int, slots: int = 0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, d_out)
        self.slot = nn.Parameter(torch.randn(slots, d_out) * 0.02) if slots else None

    def forward(self, x):
        x = self.out(F.gelu(self.inp(x)))
        return x if self.slot is None else x + self.slot


class OmniModel(nn.Module):
    def __init__(self, cfg: OmniConfig):
        super().__init__()
        self.cfg = cfg
        p, d = cfg.projector, cfg.thinker.d_model
        if p.image_tokens and round(math.sqrt(p.image_tokens)) ** 2 != p.image_tokens:
            raise ValueError(f"projector.image_tokens must be a square (1, 4, 9, 16, ...), got {p.image_tokens}")
        if cfg.vision is not None and p.image_tokens > (cfg.vision.image_size // cfg.vision.patch_size) ** 2:
            raise ValueError(f"projector.image_tokens {p.image_tokens} is more than the ViT's patches")
        if cfg.vision is not None and not -cfg.vision.n_layers <= p.vision_layer < cfg.vision.n_layers:
            raise ValueError(f"projector.vision_layer {p.vision_layer} is outside the ViT's {cfg.vision.n_layers} "
                             f"blocks")
        if cfg.chat_layout not in LAYOUTS:
            raise ValueError(f"chat_layout must be one of {', '.join(LAYOUTS)}, got {cfg.chat_layout!r}")
        if p.audio_stack < 1:
            raise ValueError(f"projector.audio_stack must be >= 1, got {p.audio_stack}")
        self.thinker = Thinker(cfg.thinker)
        self.vision = VisionEncoder(cfg.vision) if cfg.vision is not None else None
        self.audio = AudioEncoder(cfg.audio) if cfg.audio is not None else None
        hidden = p.hidden or d
        slots = self.image_token_count if p.image_slots else 0
        self.image_proj = Projector(cfg.vision.d_model, hidden, d, slots) if self.vision is not None else None
        self.audio_proj = Projector(cfg.audio.d_model * p.audio_stack, hidden, d) if self.audio is not None else None
        self.frozen: set[str] = set()

    @property
    def image_token_count(self) -> int:
        return self.cfg.projector.image_tokens + int(self.cfg.projector.image_cls)

    def audio_token_count(self, mel_frames: int) -> int:
        return audio_token_count(self.cfg.audio, self.cfg.projector.audio_stack, mel_frames)

    def freeze(self, thinker: bool = False, vision: bool = True, audio: bool = True) -> "OmniModel":
        """Frozen parts get no gradients, are never computed with autograd, and stay in eval mode."""
        for name, on in (("thinker", thinker), ("vision", vision), ("audio", audio)):
            part = getattr(self, name)
            if part is not None:
                part.requires_grad_(not on)
                (self.frozen.add if on else self.frozen.discard)(name)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def _encode(self, name: str, fn, *args):
        with torch.no_grad() if name in self.frozen else torch.enable_grad():
            return fn(getattr(self, name), *args)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.cfg.projector
        return self._encode("vision", image_features, pixels, p.image_tokens, p.image_cls, p.vision_layer)

    def audio_features(self, mels: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode("audio", audio_features, mels, lengths, self.cfg.projector.audio_stack)

    def embed(self, ids: torch.Tensor, image_feats: torch.Tensor | None = None,
              audio_feats: torch.Tensor | None = None, audio_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings of ids: Long[B x T] with the projected media in place of the placeholder ids, in
        order (row by row, then along the sequence). image_feats: Tensor[N_img x n x d_vision];
        audio_feats: Tensor[N_aud x S x stack·d_audio] with `audio_counts` real tokens each."""
        x = self.thinker.embed(ids)
        for feats, proj, pid, name in ((image_feats, self.image_proj, IMAGE_ID, "image"),
                                       (audio_feats, self.audio_proj, AUDIO_ID, "audio")):
            mask = ids == pid
            n_slots = int(mask.sum())
            if feats is None or len(feats) == 0:
                if n_slots:
                    raise ValueError(f"the sequence has {n_slots} {name} placeholders but no {name} was given")
                continue
            if proj is None:
                raise ValueError(f"this model has no {name} encoder")
            tokens = proj(feats)
            if name == "audio":
                keep = padding_mask(audio_counts.to(tokens.device), tokens.shape[1])
                tokens = tokens[keep]
            else:
                tokens = tokens.flatten(0, 1)
            if len(tokens) != n_slots:
                raise ValueError(f"{len(tokens)} {name} tokens for {n_slots} placeholders")
            x = x.masked_scatter(mask[..., None], tokens.to(x.dtype))
        return x

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *, image_feats=None,
                audio_feats=None, audio_counts=None, pixels=None, mels=None, mel_lengths=None,
                return_logits: bool = True, loss_weights: torch.Tensor | None = None) -> dict:
        """The Thinker's output (omni.models.thinker) for ids with the media spliced in (see media_features)."""
        media = self.media_features(image_feats, audio_feats, audio_counts, pixels, mels, mel_lengths)
        return self.thinker(inputs_embeds=self.embed(ids, **media), targets=targets, return_logits=return_logits,
                            loss_weights=loss_weights)

    def media_features(self, image_feats=None, audio_feats=None, audio_counts=None, pixels=None, mels=None,
                       mel_lengths=None) -> dict:
        """`embed`'s media arguments. Raw media (pixels: Tensor[N x 3 x S x S] in [0, 1]; mels: Tensor[N x T x
        n_mels] with mel_lengths) go through the encoders here; cached features pass as they are."""
        if pixels is not None:
            image_feats = self.image_features(pixels)
        if mels is not None:
            audio_feats, audio_counts = self.audio_features(mels, mel_lengths)
        return {"image_feats": image_feats, "audio_feats": audio_feats, "audio_counts": audio_counts}
