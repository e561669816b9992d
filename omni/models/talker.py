"""The Talker: text -> RVQ code frames (12.5 fps), autoregressive, duration-informed.

    talker = Talker(TalkerConfig(vocab_size=40), codec.cfg)        # codec: the MelCodec whose codes it speaks
    out = talker(text_ids, text_lens, mel, mel_lens, codes, code_lens)   # training losses
    codes, lengths = talker.generate(text_ids, text_lens, temperature=0.7, top_k=20)
    codes, lengths = talker.generate(text_ids, text_lens, voice=torch.tensor([2]))   # a Talker of several voices

How it learns to speak in minutes:
- A text encoder (transformer over characters; with a Thinker, each character's embedding plus a projection
  of what the frozen Thinker makes of the token that holds it: its hidden state and input embedding, as
  Qwen2.5-Omni's Talker reads the Thinker's reply) predicts for each token a mean log-mel frame. Monotonic alignment search (Glow-TTS / Grad-TTS) finds, per
  batch and without gradient, the alignment of tokens to the 10 ms mel frames that fits those means best;
  the means are trained on it, so alignment and encoder improve together from scratch. A duration predictor
  learns each token's frame count from that alignment, for use when speaking: the mean and the variance of its
  log, so that speaking takes the expected count (a log-normal's mean), not the median a point estimate gives.
- The aligned token states, averaged over each 80 ms block, condition the autoregressive decoder frame by
  frame: input at frame k = its block's text state + the embedded codes of frame k-1 (teacher forcing,
  shifted exactly one frame). After the last frame the condition is a learned end-of-speech vector, where an
  end head learns to say stop; generation stops there by itself.
- Each frame's codebooks are predicted in order by small heads: codebook j sees the decoder state plus the
  codes 0..j-1 of the same frame, as residual codebooks depend on each other.
- Voices: trained on the recordings of several speakers (`n_voices` > 1), a learned embedding of the voice is
  added to every character's input, so the durations, the aligner's mel means and the decoder's conditions
  all depend on it (a speaker id, as Qwen-Omni's Talkers and Piper's multi-speaker voices take). A Talker of
  one voice has no such embedding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.audio_encoder import padding_mask, sinusoids
from omni.models.codec import CodecConfig
from omni.models.decoder import CausalDecoder, sample_next
from omni.models.layers import EncoderBlock, KVCache, RMSNorm, SeqConv1d
from omni.models.thinker import Thinker


@dataclass
class TalkerConfig:
    vocab_size: int = 0           # characters + pad + silence; 0 = derived from the training transcripts
    d_model: int = 192
    n_layers: int = 4             # autoregressive decoder
    n_heads: int = 3
    d_ff: int = 768
    text_layers: int = 3          # text encoder
    max_frames: int = 2048        # code frames the decoder's positions cover (164 s at 12.5 fps)
    thinker_dim: int = 0          # > 0: `text_embeds` of this width (the Thinker's view, per character) added
    n_voices: int = 0             # > 1: a learned voice embedding, chosen by id; 0 = from the training speakers
    # the duration predictor also learns each token's log-duration variance and speaks the log-normal's mean
    # (a point estimate of log-frames speaks the median: ~3% short on the training sentences, 8% on new English)
    duration_spread: bool = True
    dropout: float = 0.1
    # training only: the codes of the previous frame are hidden from the decoder at this fraction of frames
    # (Tacotron's pre-net dropout), so it must speak from the text condition, not continue memorised speech
    frame_dropout: float = 0.3
    rope_theta: float = 10000.0


PAD, SIL = 0, 1  # text ids: padding, and the silence token that starts and ends every utterance
DEFAULT_VOICE = "default"   # the name of the one voice of a Talker trained without speaker names


@torch.no_grad()
def monotonic_align(logp: torch.Tensor, text_lens: torch.Tensor, frame_lens: torch.Tensor) -> torch.Tensor:
    """The most likely monotonic alignment in which every token holds at least one frame (Viterbi; Kim et al.
    2020). logp: Tensor[B x L x T] log-likelihood of frame t under token i. Returns Float[B x L x T], 1 where
    frame t belongs to token i. Dynamic programming in numpy (many tiny steps: far faster than torch ops)."""
    B, L, T = logp.shape
    lp = logp.detach().float().cpu().numpy().transpose(2, 0, 1).copy()     # [T x B x L]
    tl, fl = text_lens.cpu().numpy(), frame_lens.cpu().numpy()
    neg = np.float32(-1e9)
    lp[:, np.arange(L)[None, :] >= tl[:, None]] = neg                       # padding tokens
    q = np.full((T, B, L), neg, dtype=np.float32)
    q[0, :, 0] = lp[0, :, 0]
    moved = np.empty((B, L), dtype=np.float32)
    for t in range(1, T):
        moved[:, 0] = neg
        moved[:, 1:] = q[t - 1, :, :-1]
        np.maximum(q[t - 1], moved, out=q[t])
        q[t] += lp[t]
    path = np.zeros((B, L, T), dtype=np.float32)
    rows = np.arange(B)
    idx = tl - 1
    for t in range(T - 1, -1, -1):
        active = t < fl
        path[rows[active], idx[active], t] = 1.0
        if t > 0:
            prev = np.maximum(idx - 1, 0)
            go = active & (idx > 0) & ((idx == t) | (q[t - 1, rows, prev] > q[t - 1, rows, idx]))
            idx = idx - go
    return torch.from_numpy(path).to(logp.device)


def durations_to_path(durations: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """Long[B x L] frames per token -> Float[B x L x T] alignment (T = the longest total, or `frames`)."""
    ends = durations.cumsum(1)
    T = int(ends[:, -1].max()) if frames is None else frames
    t = torch.arange(T, device=durations.device)[None, None]
    return ((t >= (ends - durations)[..., None]) & (t < ends[..., None])).float()


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig, codec: CodecConfig, thinker: Thinker | None = None):
        """codec: the config of the codec whose codes it speaks (codebooks, their size, the mel bins the aligner
        predicts, fine frames per code frame): read from the codec, never copied into cfg. thinker: the frozen
        Thinker whose reading conditions the characters (cfg.thinker_dim must be twice its width); it is part
        of the Talker's weights, so talker.pt speaks without another file."""
        super().__init__()
        if cfg.vocab_size < 3:
            raise ValueError(f"TalkerConfig.vocab_size must be set (characters + 2), got {cfg.vocab_size}")
        if thinker is not None and cfg.thinker_dim != 2 * thinker.cfg.d_model:
            raise ValueError(f"thinker_dim {cfg.thinker_dim} must be twice the Thinker's width {thinker.cfg.d_model}")
        self.cfg, self.codec_cfg = cfg, codec
        self.thinker = thinker
        if thinker is not None:
            thinker.requires_grad_(False)
        d, K = cfg.d_model, codec.codebooks
        # text encoder, aligner and duration predictor
        self.text_embed = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD)
        self.thinker_proj = nn.Linear(cfg.thinker_dim, d) if cfg.thinker_dim > 0 else None
        self.voice_embed = nn.Embedding(cfg.n_voices, d) if cfg.n_voices > 1 else None
        self.text_blocks = nn.ModuleList(EncoderBlock(d, cfg.n_heads, cfg.d_ff, cfg.dropout)
                                         for _ in range(cfg.text_layers))
        self.text_norm = RMSNorm(d)
        self.to_mel = nn.Linear(d, codec.n_mels)
        self.dur_conv = nn.ModuleList(SeqConv1d(d, d, 3, padding=1) for _ in range(2))
        self.dur_norm = nn.ModuleList(nn.LayerNorm(d) for _ in range(2))
        self.dur_out = nn.Linear(d, 1)
        self.dur_spread = nn.Linear(d, 1) if cfg.duration_spread else None   # log-variance of log(1 + frames)
        # autoregressive decoder over code frames
        # the block conditions are known ahead (from the durations): a convolution over them lets each frame
        # see the sounds around it, as the codec's own encoder does (coarticulation)
        self.cond_conv = SeqConv1d(d, d, 5, padding=2)
        self.cond_proj = nn.Linear(d, d)
        self.end_cond = nn.Parameter(torch.randn(d) * 0.02)
        self.bos = nn.Parameter(torch.randn(d) * 0.02)
        self.code_embed = nn.ModuleList(nn.Embedding(codec.codebook_size, d) for _ in range(K))
        self.decoder = CausalDecoder(cfg.n_layers, d, cfg.n_heads, cfg.n_heads, cfg.d_ff, cfg.max_frames + 1,
                                     cfg.rope_theta, cfg.dropout)
        self.depth_embed = nn.ModuleList(nn.Embedding(codec.codebook_size, d) for _ in range(K - 1))
        self.heads = nn.ModuleList(nn.Linear(d, codec.codebook_size) for _ in range(K))
        self.end_head = nn.Linear(d, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.thinker is not None:
            self.thinker.eval()  # frozen: no dropout, whatever the rest does
        return self

    # ---- text side --------------------------------------------------------------------------------
    @torch.no_grad()
    def thinker_view(self, tokens: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """What the frozen Thinker makes of the text, per character: tokens Long[B x S] (the Thinker's ids of
        the spoken text, right-padded), owner Long[B x L] (for each Talker text position the index of the token
        holding its character; -1 for silence and padding) -> Tensor[B x L x thinker_dim]: the token's last
        hidden state and its input embedding, each layer-normalised (zeros where owner is -1). The Thinker is
        causal: padding after a text never changes its states."""
        n = self.thinker.cfg.ctx_len   # a text longer than the Thinker's context is read in windows
        if tokens.shape[1] == 0:       # nothing the Thinker reads (silence only)
            return owner.new_zeros(*owner.shape, 2 * self.thinker.cfg.d_model, dtype=self.thinker.embed.weight.dtype)
        out = torch.cat([self.thinker(tokens[:, i:i + n], return_hidden=True, return_logits=False)["hidden"]
                         for i in range(0, tokens.shape[1], n)], dim=1)
        d = out.shape[-1]   # each half standardised per token: the states carry large shared offsets
        both = torch.cat([F.layer_norm(out, (d,)), F.layer_norm(self.thinker.embed(tokens), (d,))], dim=-1)
        picked = torch.gather(both, 1, owner.clamp_min(0)[..., None].expand(-1, -1, both.shape[-1]))
        return picked * (owner >= 0)[..., None].to(picked.dtype)

    def encode_text(self, text_ids: torch.Tensor | None, text_lens: torch.Tensor,
                    text_embeds: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                    owner: torch.Tensor | None = None, voice: torch.Tensor | None = None) -> torch.Tensor:
        """Long[B x L] character ids and/or Tensor[B x L x thinker_dim] (given, or thinker_view of the Thinker's
        tokens and owner, omni.data.tts.thinker_tokens), in voice Long[B] (None: voice 0, the default)
        -> Tensor[B x L x d]."""
        if tokens is not None:
            if self.thinker is None:
                raise ValueError("this Talker was trained without a Thinker: it takes text_ids only")
            text_embeds = self.thinker_view(tokens, owner)
        elif self.thinker is not None and text_embeds is None:
            raise ValueError("this Talker reads the Thinker's tokens too: give tokens and owner "
                             "(omni.data.tts.thinker_tokens)")
        if text_embeds is not None and self.thinker_proj is None:
            raise ValueError("this Talker was built without thinker_dim: it takes text_ids only")
        if text_ids is None and text_embeds is None:
            raise ValueError("encode_text needs text_ids or text_embeds")
        x = self.text_embed(text_ids) if text_ids is not None else 0
        if text_embeds is not None:
            x = x + self.thinker_proj(text_embeds)
        if self.voice_embed is not None:
            if voice is None:
                voice = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            x = x + self.voice_embed(voice)[:, None]
        L = x.shape[1]
        x = x + sinusoids(L, self.cfg.d_model).to(x.device, x.dtype)
        mask = padding_mask(text_lens, L)
        for blk in self.text_blocks:
            x = blk(x, key_padding_mask=mask)
        return self.text_norm(x) * mask[..., None]

    def log_durations(self, h: torch.Tensor, text_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per token, log(1 + frames): its predicted mean, and its log-variance (None without duration_spread),
        each Tensor[B x L]. Sees the text states without their gradient."""
        mask = padding_mask(text_lens, h.shape[1])[..., None]
        x = h.detach()
        for conv, norm in zip(self.dur_conv, self.dur_norm):
            x = norm(F.relu(conv((x * mask).transpose(1, 2)).transpose(1, 2)))
        log_var = None if self.dur_spread is None else self.dur_spread(x).squeeze(-1).clamp(-10, 5) * mask[..., 0]
        return self.dur_out(x).squeeze(-1) * mask[..., 0], log_var

    def duration_loss(self, h: torch.Tensor, text_lens: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The duration predictor's loss against each token's frame count (Float[B x L], from the alignment): the
        squared error of the mean of log(1 + frames), and with duration_spread the Gaussian negative
        log-likelihood of that error under the predicted log-variance (the mean's error detached, so the mean
        is fitted as without the spread)."""
        mean, log_var = self.log_durations(h, text_lens)
        err = (mean - torch.log1p(frames)).pow(2)
        if log_var is not None:
            err = err + 0.5 * (log_var + err.detach() * torch.exp(-log_var))
        mask = padding_mask(text_lens, h.shape[1])
        return (err * mask).sum() / mask.sum()

    def block_condition(self, h: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
        """Token states spread over fine frames by `path` (Float[B x L x T]), averaged per code frame and
        mixed with their neighbours (cond_conv): Tensor[B x ceil(T/block) x d] (zeros past an utterance's end)."""
        fine = path.transpose(1, 2) @ h                                      # [B x T x d]
        occupied = path.sum(1)                                               # [B x T]: 1 on real frames
        B, T, d = fine.shape
        n = -(-T // self.codec_cfg.block)
        pad = n * self.codec_cfg.block - T
        fine = F.pad(fine, (0, 0, 0, pad)).view(B, n, self.codec_cfg.block, d).sum(2)
        count = F.pad(occupied, (0, pad)).view(B, n, self.codec_cfg.block).sum(2)
        cond = fine / count.clamp_min(1)[..., None]
        real = (count > 0)[..., None].to(cond.dtype)
        return (cond + F.gelu(self.cond_conv(cond.transpose(1, 2)).transpose(1, 2))) * real

    def _decoder_input(self, cond: torch.Tensor, code_lens: torch.Tensor, prev_codes: torch.Tensor,
                       start: int = 0) -> torch.Tensor:
        """Decoder inputs for steps start..start+S-1. cond: Tensor[B x S x d] their block conditions;
        code_lens: Long[B], from which step on the condition is end-of-speech; prev_codes: the codes each step
        follows (step k follows frame k-1; step 0 follows BOS): Long[B x S-1 x K] when start is 0, else
        Long[B x S x K]."""
        B, S, _ = cond.shape
        past_end = start + torch.arange(S, device=cond.device)[None] >= code_lens[:, None]
        cond = torch.where(past_end[..., None], self.end_cond.to(cond.dtype), cond)
        if start > 0:
            prev = self.embed_codes(prev_codes)
        elif prev_codes.shape[1]:
            prev = torch.cat([self.bos.expand(B, 1, -1), self.embed_codes(prev_codes)], dim=1)
        else:
            prev = self.bos.expand(B, 1, -1)
        if self.training and self.cfg.frame_dropout > 0:
            keep = torch.rand(prev.shape[:2], device=prev.device) >= self.cfg.frame_dropout
            prev = prev * keep[..., None].to(prev.dtype)
        return self.cond_proj(cond) + prev

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(self.code_embed[k](codes[..., k]) for k in range(self.codec_cfg.codebooks))

    def decode(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Decoder inputs Tensor[B x S x d] (the next S steps after the cached ones) -> states [B x S x d]."""
        return self.decoder(x, cache)

    def code_logits(self, h: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits of every codebook: head j sees h plus the frame's codes 0..j-1."""
        out, x = [], h
        for j, head in enumerate(self.heads):
            out.append(head(x))
            if j + 1 < len(self.heads):
                x = x + self.depth_embed[j](codes[..., j])
        return out

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, text_ids, text_lens, mel, mel_lens, codes, code_lens, text_embeds=None, tokens=None,
                owner=None, voice=None) -> dict:
        """text_ids Long[B x L]; mel: the codec's normalised log-mel Tensor[B x T x n_mels] with lengths
        mel_lens; codes Long[B x N x K] with lengths code_lens (= ceil(mel_lens / block)); tokens / owner: the
        Thinker's reading, voice: each row's voice id (encode_text). Returns {"loss", "ce" (mean over
        codebooks), "ce_per_book", "align", "dur", "end"}."""
        h = self.encode_text(text_ids, text_lens, text_embeds, tokens, owner, voice)
        mu = self.to_mel(h)                                                  # [B x L x F]
        with torch.no_grad():  # log N(x_t; mu_i, I) up to a constant
            logp = -0.5 * ((mu.float() ** 2).sum(-1)[..., None] - 2 * mu.float() @ mel.float().transpose(1, 2)
                           + (mel.float() ** 2).sum(-1)[:, None])
            path = monotonic_align(logp, text_lens, mel_lens).to(h.dtype)
        fmask = padding_mask(mel_lens, mel.shape[1])[..., None]
        align = ((path.transpose(1, 2) @ mu - mel).pow(2) * fmask).sum() / (fmask.sum() * mel.shape[-1])
        dur = self.duration_loss(h, text_lens, path.sum(-1))

        N = codes.shape[1]
        cond = F.pad(self.block_condition(h, path)[:, :N], (0, 0, 0, 1))    # [B x N+1 x d]
        hid = self.decode(self._decoder_input(cond, code_lens, codes))       # [B x N+1 x d]
        real = padding_mask(code_lens, N)
        ce_books = []
        for logits, k in zip(self.code_logits(hid[:, :N], codes), range(self.codec_cfg.codebooks)):
            ce = F.cross_entropy(logits.float().flatten(0, 1), codes[..., k].flatten(), reduction="none")
            ce_books.append((ce.view_as(real) * real).sum() / real.sum())
        ce_books = torch.stack(ce_books)
        # every step from code_lens on holds the end condition and must say stop (not only the first: a
        # sampled frame that misses it would otherwise run on)
        end_target = (torch.arange(N + 1, device=codes.device)[None] >= code_lens[:, None]).float()
        end = F.binary_cross_entropy_with_logits(self.end_head(hid).squeeze(-1).float(), end_target)
        ce = ce_books.mean()
        return {"loss": ce + align + dur + end, "ce": ce, "ce_per_book": ce_books.detach(), "align": align,
                "dur": dur, "end": end, "durations": path.sum(-1)}

    # ---- speaking ---------------------------------------------------------------------------------
    def predict_durations(self, h: torch.Tensor, text_lens: torch.Tensor, pace: float = 1.0) -> torch.Tensor:
        """Long[B x L] fine frames per token (>= 1 for real tokens, 0 for padding): the expected count under
        the predicted log-normal (its median without duration_spread), times pace."""
        mean, log_var = self.log_durations(h, text_lens)
        if log_var is not None:
            mean = mean + 0.5 * log_var.exp()
        d = (torch.expm1(mean) * pace).round().clamp_min(1).long()
        return d * padding_mask(text_lens, h.shape[1]).long()

    @torch.no_grad()
    def generate(self, text_ids: torch.Tensor | None, text_lens: torch.Tensor, text_embeds=None,
                 temperature: float = 0.0, top_k: int = 20, max_frames: int | None = None, pace: float = 1.0,
                 use_cache: bool = True, generator: torch.Generator | None = None,
                 durations: torch.Tensor | None = None, tokens=None, owner=None, voice=None):
        """Speak the texts, in voice Long[B] (None: voice 0, the default): (codes Long[B x N x K], lengths
        Long[B]). Each row stops at its end-of-speech decision; as a guard, at most a quarter (and 8 frames) past
        its predicted length, or at max_frames. Frames past a row's end are padding."""
        if voice is not None and not bool(((voice >= 0) & (voice < max(1, self.cfg.n_voices))).all()):
            raise ValueError(f"voice ids {voice.tolist()} outside this Talker's {max(1, self.cfg.n_voices)} voice(s)")
        h = self.encode_text(text_ids, text_lens, text_embeds, tokens, owner, voice)
        if durations is None:  # else given: Long[B x L] fine frames per token (e.g. from an alignment)
            durations = self.predict_durations(h, text_lens, pace)
        cond = self.block_condition(h, durations_to_path(durations))
        B, K = h.shape[0], self.codec_cfg.codebooks
        limit = min(max_frames or self.cfg.max_frames, self.cfg.max_frames)
        cond = F.pad(cond, (0, 0, 0, max(0, limit + 1 - cond.shape[1])))[:, :limit + 1]
        n_cond = -(-durations.sum(1) // self.codec_cfg.block)   # code frames to speak; then the end condition
        guard = n_cond + torch.clamp(n_cond // 4, min=8)
        codes = torch.zeros(B, 0, K, dtype=torch.long, device=h.device)
        lengths = torch.full((B,), -1, dtype=torch.long, device=h.device)
        cache = self.decoder.new_cache(B, limit + 1, like=h) if use_cache else None
        for k in range(limit + 1):
            if use_cache:  # one new step: its condition and the codes of the frame before it
                hk = self.decode(self._decoder_input(cond[:, k:k + 1], n_cond, codes[:, k - 1:k], start=k),
                                 cache)[:, -1]
            else:
                hk = self.decode(self._decoder_input(cond[:, :k + 1], n_cond, codes))[:, -1]
            stop = ((torch.sigmoid(self.end_head(hk).squeeze(-1)) > 0.5) | (k >= guard)) & (lengths < 0)
            lengths = torch.where(stop, torch.full_like(lengths, k), lengths)
            if bool((lengths >= 0).all()) or k == limit:
                break
            frame, x = [], hk
            for j, head in enumerate(self.heads):
                c = sample_next(head(x), temperature, top_k, generator=generator)
                frame.append(c)
                if j + 1 < K:
                    x = x + self.depth_embed[j](c)
            codes = torch.cat([codes, torch.stack(frame, -1)[:, None]], dim=1)
        lengths = torch.where(lengths < 0, torch.full_like(lengths, codes.shape[1]), lengths)
        return codes, lengths
