"""The Thinker: a decoder-only LM (pre-RMSNorm, RoPE, GQA, SwiGLU, optional MoE) with KV-cached generation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.layers import MoE, Attention, KVCache, RMSNorm, SwiGLU, rope_tables


@dataclass
class ThinkerConfig:
    vocab_size: int = 32000
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2          # GQA: 2 key/value groups shared by 4 query heads halve the KV cache
    d_ff: int = 1024
    ctx_len: int = 512
    rope_theta: float = 10000.0
    dropout: float = 0.0
    tie_embeddings: bool = True  # input embedding = output projection: at this size the vocab is most params
    n_experts: int = 0           # 0 = dense SwiGLU; >1 = MoE in every block
    moe_top_k: int = 2
    moe_aux_coef: float = 0.01   # weight of the load-balancing loss
    use_flash: bool = True       # SDPA; False = explicit attention (for checking)


class Block(nn.Module):
    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.dropout, cfg.use_flash)
        self.mlp_norm = RMSNorm(cfg.d_model)
        self.mlp = MoE(cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.moe_top_k) if cfg.n_experts > 1 \
            else SwiGLU(cfg.d_model, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.ctx_len, cfg.rope_theta)
        # not saved: rebuilt from the config, so a checkpoint does not pin the context length
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("out.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, cache: KVCache | None = None,
                return_hidden: bool = False, ignore_index: int = -100, return_logits: bool = True) -> dict:
        """input_ids: Tensor[B x T] or inputs_embeds: Tensor[B x T x d_model]; targets: Tensor[B x T].

        Returns {"logits": [B x T x V], "hidden": [B x T x d_model] if asked, "loss" if targets (mean
        token cross-entropy plus the MoE balancing term), "ce", "aux_loss"}. return_logits=False (without
        targets) skips the vocabulary projection, the bulk of the cost when only hidden states are wanted.
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.ctx_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds ctx_len {self.cfg.ctx_len}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        hidden = self.norm(x)
        out = {"logits": self.lm_head(hidden)} if return_logits or targets is not None else {}
        if return_hidden:
            out["hidden"] = hidden
        if targets is not None:
            ce = F.cross_entropy(out["logits"].float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
            aux = torch.zeros((), device=x.device)
            if self.cfg.n_experts > 1:
                aux = sum(b.mlp.aux_loss for b in self.blocks) / len(self.blocks)
            out.update(loss=ce + self.cfg.moe_aux_coef * aux, ce=ce, aux_loss=aux)
        return out

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c = self.cfg
        p = self.embed.weight
        return KVCache(c.n_layers, batch, c.n_kv_heads, max_len or c.ctx_len, c.d_model // c.n_heads, p.device, p.dtype)


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


@torch.no_grad()
def generate(model: Thinker, prompt: torch.Tensor, max_new_tokens: int = 64, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """prompt: Tensor[B x T] → Tensor[B x T'] (prompt plus new tokens). Stops when every row has emitted
    eos_id (rows that finished early are padded with eos_id) or at max_new_tokens / ctx_len."""
    ids = prompt
    limit = min(max_new_tokens, model.cfg.ctx_len - prompt.shape[1])
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + limit) if use_cache else None
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    step_input = prompt
    for _ in range(limit):
        logits = model(step_input if use_cache else ids, cache=cache)["logits"][:, -1]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if eos_id is not None and bool(done.all()):
            break
    return ids


def load_thinker(path, device="cpu"):
    """(Thinker, Tokenizer) from a final `thinker.pt`; a missing, corrupt or mismatched file is an error
    that names it."""
    from omni.config import from_dict
    from omni.tokenizer import Tokenizer
    from omni.train.checkpoint import load_artifact, load_weights

    state = load_artifact(path, "Thinker", "thinker.pt", ("model", "model_config", "tokenizer"))
    model = Thinker(from_dict(ThinkerConfig, state["model_config"], where=str(path)))
    load_weights(model, state["model"], path)
    tok = Tokenizer(model_proto=state["tokenizer"].numpy().tobytes())
    return model.to(device).eval(), tok
