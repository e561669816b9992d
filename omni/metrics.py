"""Quality metrics shared by training-time validation and scripts/evaluate.py."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from omni.data.text import eval_windows


@torch.no_grad()
def lm_metrics(model, tokens: np.ndarray, ctx_len: int, batch_size: int, token_bytes: np.ndarray,
               device: torch.device) -> dict:
    """Perplexity and bits per byte of `tokens` (every token after the first predicted once).
    bits per byte = total NLL in bits / UTF-8 bytes of the predicted tokens, which is comparable across
    tokenizers, unlike perplexity."""
    nll, n_tok, n_bytes = 0.0, 0, 0
    tb = torch.from_numpy(token_bytes)
    for x, y in eval_windows(tokens, ctx_len, batch_size):
        logits = model(x.to(device))["logits"].float()
        nll += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n_tok += y.numel()
        n_bytes += int(tb[y].sum())
    return {"loss": nll / n_tok, "perplexity": math.exp(nll / n_tok),
            "bits_per_byte": nll / math.log(2) / max(n_bytes, 1), "n_tokens": n_tok}
