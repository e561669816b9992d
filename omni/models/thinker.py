"""The Thinker: a decoder-only LM (pre-RMSNorm, RoPE, GQA, SwiGLU, optional MoE) over the shared causal
decoder stack. Generation (KV-cached, from token ids or from input embeddings) lives in omni.infer.generate."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from omni.models.decoder import CausalDecoder
from omni.models.layers import KVCache


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


class Thinker(nn.Module):
    def __init__(self, cfg: ThinkerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.decoder = CausalDecoder(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.ctx_len,
                                     cfg.rope_theta, cfg.dropout, cfg.n_experts, cfg.moe_top_k)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
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
                return_hidden: bool = False, ignore_index: int = -100, return_logits: bool = True,
                loss_weights: torch.Tensor | None = None) -> dict:
        """input_ids: Tensor[B x T] or inputs_embeds: Tensor[B x T x d_model]; targets: Tensor[B x T].

        Returns {"logits": [B x T x V], "hidden": [B x T x d_model] if asked, "loss" if targets (mean
        token cross-entropy plus the MoE balancing term), "ce", "aux_loss"}. loss_weights: Tensor[B x T]
        makes "ce" the weighted mean over the target tokens instead. return_logits=False skips the vocabulary
        projection, the bulk of the cost at this size: without targets entirely (only hidden states wanted),
        with targets at every position but the target tokens (SFT's loss covers a few answer tokens a row).
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = self.decoder(x, cache)
        out = {"logits": self.lm_head(hidden)} if return_logits else {}
        if return_hidden:
            out["hidden"] = hidden
        if targets is not None:
            t, w = targets.flatten(), None if loss_weights is None else loss_weights.flatten().float()
            if return_logits:
                logits = out["logits"].flatten(0, 1)
            else:  # the target positions only: the same loss without the other positions' logits
                keep = (t != ignore_index).nonzero().squeeze(1)
                logits, t = self.lm_head(hidden.flatten(0, 1)[keep]), t[keep]
                w = None if w is None else w[keep]
            ce = F.cross_entropy(logits.float(), t, ignore_index=ignore_index,
                                 reduction="mean" if w is None else "none")
            if w is not None:
                w = w * (t != ignore_index)
                ce = (ce * w).sum() / w.sum().clamp(min=1e-8)
            aux = self.decoder.aux_loss()
            out.update(loss=ce + self.cfg.moe_aux_coef * aux, ce=ce, aux_loss=aux)
        return out

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return self.decoder.new_cache(batch, max_len, like=self.embed.weight)
