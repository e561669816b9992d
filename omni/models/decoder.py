"""The causal decoder stack the Thinker and the Talker share: pre-RMSNorm blocks (GQA attention with RoPE,
SwiGLU or MoE), positions, the block loop and the KV-cache advance, written once; and `sample_next`, the
temperature / top-k / top-p draw both of them generate with."""
from __future__ import annotations

import torch
import torch.nn as nn

from omni.models.layers import Attention, Dropout, KVCache, MoE, RMSNorm, StaticKVCache, SwiGLU, rope_tables


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)). Dropout on the attention weights and on both residuals."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, dropout: float = 0.0,
                 n_experts: int = 0, moe_top_k: int = 2):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, n_kv_heads, dropout)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = MoE(d_model, d_ff, n_experts, moe_top_k) if n_experts > 1 else SwiGLU(d_model, d_ff)
        self.drop = Dropout(dropout)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class CausalDecoder(nn.Module):
    """Tensor[B x T x d] inputs (embeddings) -> Tensor[B x T x d] normalised hidden states, causal.

    With a `KVCache` the inputs are the next T positions after the cached ones: positions continue from
    `cache.pos`, the new keys and values are appended, and the cache advances by T. `max_len` bounds the
    positions (the RoPE tables are built for it)."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, max_len: int,
                 rope_theta: float = 10000.0, dropout: float = 0.0, n_experts: int = 0, moe_top_k: int = 2):
        super().__init__()
        self.n_layers, self.n_kv_heads, self.head_dim, self.max_len = n_layers, n_kv_heads, d_model // n_heads, max_len
        self.blocks = nn.ModuleList(Block(d_model, n_heads, n_kv_heads, d_ff, dropout, n_experts, moe_top_k)
                                    for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        cos, sin = rope_tables(self.head_dim, max_len, rope_theta)
        # not saved: rebuilt from the config, so a checkpoint does not pin the context length
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        T = x.shape[1]
        if isinstance(cache, StaticKVCache):  # one token at a tensor position (its caller bounds it)
            cos, sin = self.rope_cos[cache.pos], self.rope_sin[cache.pos]
        else:
            start = cache.pos if cache is not None else 0
            if start + T > self.max_len:
                raise ValueError(f"sequence of {start + T} positions exceeds the model's context of "
                                 f"{self.max_len} (ctx_len / max_frames)")
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    def new_cache(self, batch: int, max_len: int | None = None, like: torch.Tensor | None = None) -> KVCache:
        """An empty cache for `batch` rows of up to `max_len` positions, on the device and dtype of `like`
        (default: the decoder's weights)."""
        like = self.norm.weight if like is None else like
        return KVCache(self.n_layers, batch, self.n_kv_heads, max_len or self.max_len, self.head_dim,
                       like.device, like.dtype)

    def aux_loss(self) -> torch.Tensor:
        """Mean MoE load-balancing loss of the last forward (0 without experts)."""
        losses = [b.mlp.aux_loss for b in self.blocks if isinstance(b.mlp, MoE)]
        return sum(losses) / len(losses) if losses else torch.zeros((), device=self.norm.weight.device)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: Tensor[B x V] → token ids Tensor[B]. temperature 0 = greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
