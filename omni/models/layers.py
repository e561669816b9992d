"""Building blocks shared by the models: RMSNorm, RoPE, attention through SDPA (self and cross), SwiGLU, MoE,
the encoder and cross-attending decoder blocks, and convolutions over time that torch.compile leaves out of
its graphs."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _OutOfGraph:
    """Mixin: the module's forward runs outside torch.compile's graphs (the layers around it stay compiled)
    once keep_out_of_graph() has run, which whatever compiles a model calls first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def keep_out_of_graph() -> None:
    """Mark SeqConv1d / SeqConv2d's forward with torch.compiler.disable. Called before torch.compile, not at
    import: the decorator imports torch._dynamo (~1 s), which a process that never compiles need not pay."""
    if not getattr(_OutOfGraph.forward, "_torchdynamo_disable", False):
        _OutOfGraph.forward = torch.compiler.disable(_OutOfGraph.forward)


class Conv1d(nn.Conv1d):
    """nn.Conv1d that on the CPU runs as a 2-D convolution over a channels-last Tensor[B x C x 1 x T] view:
    oneDNN's fast layout there, and free for inputs stored time-major ([B x T x C] transposed, as the models
    hold them). Forward and backward 1.1-2x faster for dense kernels, ~8x for depthwise ones in bf16 (Zen 4);
    the output is channels-last too (a [B x T x C] tensor seen as [B x C x T]). Same parameters and
    state-dict keys as nn.Conv1d; elsewhere (CUDA, inside torch.compile's graphs) it is nn.Conv1d."""

    def _conv_forward(self, x, weight, bias):
        if x.device.type != "cpu" or self.padding_mode != "zeros" or torch.compiler.is_compiling():
            return super()._conv_forward(x, weight, bias)
        pad = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        x2 = x.unsqueeze(-2).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x2, weight.unsqueeze(-2), bias, (1, self.stride[0]), pad, (1, self.dilation[0]), self.groups)
        return y.squeeze(-2)


class SeqConv1d(_OutOfGraph, Conv1d):
    """nn.Conv1d over a variable-length time axis, run outside torch.compile's graphs. Inductor specialises a
    convolution's backward on the input length, so a compiled model fed a new length per batch recompiled at
    each (~10 s apiece; 3 minutes before Stage B's first 50 steps on an H100, then the recompile limit turned
    it eager). Out of the graph, cuDNN runs any length; the layers around it stay compiled, with dynamic shapes.
    Same parameters and state-dict keys as nn.Conv1d."""


class SeqConv2d(_OutOfGraph, nn.Conv2d):
    """nn.Conv2d over (time, frequency), outside torch.compile's graphs for the reason SeqConv1d gives."""


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout with a cheaper mask on the CPU: one 64-bit random draw gives the keep/drop bytes of 8 elements
    (a byte kept when >= round(256 p)), so p is rounded to 1/256 and the kept values scaled by the kept share.
    torch's CPU dropout draws one Bernoulli per element: 4x slower here, up to a tenth of a Talker step.
    Elsewhere (CUDA, or inside torch.compile's graphs) it is F.dropout."""
    if not training or p == 0 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    drop = round(p * 256)
    if drop >= 256:
        return x * 0
    n = x.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
    keep = words.view(torch.uint8)[:n].view(x.shape) >= drop
    return x * keep.to(x.dtype) * (256 / (256 - drop))


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (the cheaper CPU mask)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: Tensor[max_len x head_dim/2]."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: Tensor[B x H x T x D]; cos, sin: Tensor[T x D/2] for the positions of x. Rotates (even, odd) pairs."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class KVCache:
    """Preallocated keys and values for every layer: Tensor[L x B x H_kv x max_len x D] each."""

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, device, dtype):
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # tokens already cached
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {t} tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]


class StaticKVCache(KVCache):
    """A prefilled KVCache, continued one token per step with fixed shapes, for a compiled decode step: the
    position is a tensor (a Python int would be a new constant, so a new graph, at every step) and every step
    attends over the whole buffer with the slots past the position masked. Shares the buffers of `cache`."""

    def __init__(self, cache: KVCache):
        self.k, self.v, self.max_len = cache.k, cache.v, cache.max_len
        self.pos = torch.tensor([cache.pos], device=cache.k.device)   # Long[1]: the slot the next token fills

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.pos, k)
        self.v[layer].index_copy_(2, self.pos, v)
        return self.k[layer], self.v[layer]

    def mask(self) -> torch.Tensor:
        """Bool[1 x 1 x 1 x max_len]: the slots written so far, this step's included."""
        return (torch.arange(self.max_len, device=self.pos.device) <= self.pos).view(1, 1, 1, -1)


def _slow_cpu_backward(x: torch.Tensor) -> bool:
    """True when attention on the CPU runs with gradients under autocast (bf16): there the backward pass of
    SDPA's fused CPU kernel is the slow part of a step, and the explicit math path made Stage B's and the
    Thinker's training steps ~20% faster on 2 cores. In fp32 and without gradients the two are level and
    SDPA stays."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")


def attend(q, k, v, mask: torch.Tensor | None = None, causal: bool = False, p: float = 0.0,
           fused: bool = True) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q Tensor[B x H x T x D], k and v Tensor[B x H x S x D]; mask: Bool, broadcast to
    [B x H x T x S], True where a query sees a key; causal: query i sees keys 0..i (T = S); p: dropout on the
    weights. Through SDPA, or the explicit math path when `fused` is False or under CPU autocast training."""
    if fused and not _slow_cpu_backward(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    return dropout(att.softmax(-1), p) @ v


class Attention(nn.Module):
    """Self-attention with grouped-query heads (n_kv_heads divides n_heads).

    causal=True (the Thinker): each query sees the keys up to its own position, with the KV cache.
    causal=False (the encoders: ViT, audio): every query sees every key, except the keys that
    `key_padding_mask` marks as padding. RoPE applies when the caller passes cos/sin, else positions come
    from elsewhere (learned position embeddings).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, dropout: float = 0.0,
                 causal: bool = True, bias: bool = False):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        assert d_model % n_heads == 0 and n_heads % n_kv_heads == 0, "heads must divide d_model and kv groups"
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.q = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.kv = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.dropout = dropout
        self.use_flash = True  # SDPA; False = explicit math (the config's use_flash, set by `use_sdpa`)
        self.causal = causal

    def forward(self, x, cos=None, sin=None, cache: KVCache | None = None, layer: int = 0,
                key_padding_mask: torch.Tensor | None = None):
        """x: Tensor[B x T x d]; cos, sin: Tensor[T x D/2] or None (no RoPE); key_padding_mask:
        Bool[B x T], True where a key is real (non-causal only). Returns Tensor[B x T x d]."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        S = k.shape[2]
        mask, causal = None, False
        if self.causal:
            # Causal over the whole key range: query i (absolute position past+i) sees keys 0..past+i.
            if key_padding_mask is not None:
                raise ValueError("key_padding_mask is for non-causal attention")
            if isinstance(cache, StaticKVCache):   # one query over the whole buffer
                mask = cache.mask()
            elif past == 0:
                causal = T > 1
            elif T > 1:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
        elif key_padding_mask is not None:
            mask = key_padding_mask[:, None, None, :S].to(torch.bool)      # [B x 1 x 1 x S], broadcast over queries
        p = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, causal, p, fused=self.use_flash)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


def use_sdpa(model: nn.Module, on: bool = True) -> nn.Module:
    """Every attention layer of `model` through scaled_dot_product_attention (flash / memory-efficient
    kernels), or with `on=False` through explicit math (for checking). The config's `use_flash`."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.use_flash = on
    return model


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts with the Switch-Transformer load-balancing loss
    (n_experts * Σ_i f_i P_i, which is 1 when routing is uniform)."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int):
        super().__init__()
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_experts))
        self.top_k = top_k
        self.aux_loss = torch.zeros(())

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = self.router(x).float().softmax(-1)                     # [N x E]
        weight, idx = probs.topk(self.top_k, dim=-1)                   # [N x k]
        weight = (weight / weight.sum(-1, keepdim=True)).type_as(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            # run even when empty, so every expert is in the graph (DDP expects every parameter used)
            out.index_add_(0, rows, expert(x[rows]) * weight[rows, slot, None])
        n_e = probs.shape[-1]
        frac = torch.zeros(n_e, device=x.device).scatter_add_(0, idx.flatten(), torch.ones(idx.numel(), device=x.device))
        self.aux_loss = n_e * (frac / idx.numel() * probs.mean(0)).sum()
        return out.view(shape)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block with non-causal attention, for the encoders (audio, ViT, caption text).
    Positions come from the caller (learned or sinusoidal), not RoPE. attn_dropout > 0 on CPU sends SDPA to
    its slow math path, so the audio encoder keeps it at 0 and drops out on the residuals only."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout=attn_dropout, causal=False)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, d_ff)
        self.drop = Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        """x: Tensor[B x T x d]; key_padding_mask: Bool[B x T], True where a position is real."""
        x = x + self.drop(self.attn(self.attn_norm(x), key_padding_mask=key_padding_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class CrossAttention(nn.Module):
    """Queries from a decoder, keys and values from encoder states (computed once per input: `memory_kv`)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory: Tensor[B x S x d] → (k, v), each Tensor[B x heads x S x head_dim]."""
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, kv, memory_mask: torch.Tensor | None = None):
        """x: Tensor[B x T x d]; memory_mask: Bool[B x S], True on real memory positions (None: all are)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        mask = memory_mask[:, None, None, :] if memory_mask is not None else None
        y = attend(q, kv[0], kv[1], mask)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class CrossDecoderBlock(nn.Module):
    """Causal RoPE self-attention (with a KV cache), cross-attention to encoder states, SwiGLU; pre-norm.
    The OCR decoder and Stage C's caption decoder."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.self_norm, self.self_attn = RMSNorm(d_model), Attention(d_model, n_heads, dropout=0.0)
        self.cross_norm, self.cross_attn = RMSNorm(d_model), CrossAttention(d_model, n_heads)
        self.mlp_norm, self.mlp = RMSNorm(d_model), SwiGLU(d_model, d_ff)
        self.drop = Dropout(dropout)

    def forward(self, x, cos, sin, kv, memory_mask=None, cache=None, layer=0):
        x = x + self.drop(self.self_attn(self.self_norm(x), cos, sin, cache, layer))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), kv, memory_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))
