"""Validation passes that run a model over a split and score it (omni.metrics holds the pure scores): the
Thinker's perplexity and bits per byte, the CLIP model's retrieval and loss, the Talker's code cross-entropy.
Shared by the stage scripts' validation and scripts/evaluate.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from omni.data.text import eval_windows
from omni.data.tts import collate
from omni.metrics import retrieval_metrics
from omni.models.vision import clip_loss


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


@torch.no_grad()
def clip_metrics(model, pixels: np.ndarray, tokens: list[list[int]], caption_ids, device: torch.device,
                 batch_size: int = 256, group: int = 32, seed: int = 0, features: torch.Tensor | None = None) -> dict:
    """Embed every (image, caption) pair of a split with a ClipModel and score it: `retrieval_metrics` plus
    `loss`, the symmetric InfoNCE over the whole split at once (every other pair a negative) at the model's
    temperature. pixels: uint8 [N x 3 x S x S]; tokens: N lists of ids; features:
    optional cached Thinker states [n_captions x T x d] indexed by caption id."""
    ids = torch.as_tensor(np.asarray(caption_ids))
    imgs, txts = [], []
    for i in range(0, len(tokens), batch_size):
        x = torch.from_numpy(np.asarray(pixels[i:i + batch_size], dtype=np.float32) / 255.0).to(device)
        imgs.append(model.encode_image(x).float().cpu())
        toks = tokens[i:i + batch_size]
        T = max(len(t) for t in toks)
        t_ids = torch.zeros(len(toks), T, dtype=torch.long)
        mask = torch.zeros(len(toks), T, dtype=torch.bool)
        for j, t in enumerate(toks):
            t_ids[j, :len(t)], mask[j, :len(t)] = torch.tensor(t), True
        feats = features[ids[i:i + batch_size], :T].to(device) if features is not None else None
        txts.append(model.encode_text(t_ids.to(device), mask.to(device), feats).float().cpu())
    img, txt = torch.cat(imgs), torch.cat(txts)
    out = retrieval_metrics(img, txt, ids, group, seed)
    out["loss"] = float(clip_loss(img, txt, model.scale().float().cpu()))
    return out


@torch.no_grad()
def code_cross_entropy(talker, samples: list[dict], batch_size: int = 32) -> torch.Tensor:
    """Teacher-forced cross-entropy (nats) per codebook over every code frame of `samples`: Tensor[K].
    exp of its mean is the code perplexity."""
    device = next(talker.parameters()).device
    total, frames = torch.zeros(talker.codec_cfg.codebooks), 0
    for s in range(0, len(samples), batch_size):
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(samples[s:s + batch_size], 0.01).items()}
        out = talker(b["text"], b["text_lens"], b["mel"], b["mel_lens"], b["codes"], b["code_lens"],
                     tokens=b.get("tokens"), owner=b.get("owner"), voice=b["voice"])
        n = int(b["code_lens"].sum())
        total += out["ce_per_book"].float().cpu() * n
        frames += n
    return total / max(frames, 1)
