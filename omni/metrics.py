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


def edit_distance(ref: list, hyp: list) -> int:
    """Levenshtein distance (substitutions + deletions + insertions) between two sequences."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(refs: list[str], hyps: list[str], unit: str) -> float:
    """Corpus error rate: total edits / total reference units (words for "word", characters for "char"),
    so long utterances weigh more, as in every published WER. Whitespace is normalised before scoring."""
    split = str.split if unit == "word" else (lambda s: list(" ".join(s.split())))
    edits = sum(edit_distance(split(r), split(h)) for r, h in zip(refs, hyps, strict=True))
    total = sum(len(split(r)) for r in refs)
    return edits / total if total else float(edits > 0)


def wer(refs: list[str], hyps: list[str]) -> float:
    """Word error rate of hypotheses against references (a fraction; can exceed 1 with insertions)."""
    return error_rate(refs, hyps, "word")


def cer(refs: list[str], hyps: list[str]) -> float:
    """Character error rate (spaces count as characters)."""
    return error_rate(refs, hyps, "char")


@torch.no_grad()
def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_ids, group: int = 32,
                      seed: int = 0, partitions: int = 10) -> dict:
    """Image↔text retrieval over N (image, caption) pairs. image_emb, text_emb: Tensor[N x E] (compared by
    dot product, so pass unit vectors for cosine); caption_ids: [N], equal for rows with the same caption.

    Duplicate captions (two images both "a small red star on the left") are one text: the candidates for
    image→text are the distinct captions (the first row of each stands for it), and a text→image query is
    answered correctly by any image with that caption. So a duplicate is never a wrong answer, and top-5
    lists hold five different captions.
      i2t_top{1,5}: over all N images, is the image's caption among the top k of the distinct captions
      t2i_top{1,5}: over the distinct captions, is an image with that caption among the top k of all N images
      i2t_top1_in32: the same image→text top-1 within random groups of `group` pairs, averaged over
                     `partitions` seeded partitions of the split (one partition of 500 pairs moves it by
                     ±0.02); a tail smaller than the group is dropped unless N is smaller than one group
    """
    ids = torch.as_tensor(np.asarray(caption_ids))
    img, txt = image_emb.float(), text_emb.float()
    uniq, inverse = torch.unique(ids, return_inverse=True)                 # inverse: row -> distinct caption
    first = torch.full((len(uniq),), len(ids), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(ids)), "amin")
    sim = img @ txt[first].t()                                              # [N x U]
    out = {"n": len(ids), "n_captions": len(uniq)}
    # Ranks count the wrong candidates scoring at least as high: a tie is a miss, so a collapsed model
    # (every embedding equal) scores 0 rather than 1.
    target = sim.gather(1, inverse[:, None])
    rank_i2t = (sim >= target).sum(1) - 1
    rank_t2i = []
    for u in range(len(uniq)):  # best-scoring image of caption u against every image of other captions
        s = sim[:, u]
        rank_t2i.append(int((s[inverse != u] >= s[inverse == u].max()).sum()))
    rank_t2i = torch.tensor(rank_t2i)
    for k in (1, 5):
        out[f"i2t_top{k}"] = float((rank_i2t < k).float().mean())
        out[f"t2i_top{k}"] = float((rank_t2i < k).float().mean())
    n_groups = max(1, len(ids) // group)
    hits, total = 0, 0
    for part in range(partitions):
        order = torch.from_numpy(np.random.default_rng([seed, part]).permutation(len(ids)))
        for g in range(n_groups):
            rows = order[g * group:(g + 1) * group] if len(ids) >= group else order
            s = img[rows] @ txt[first[inverse[rows]]].t()                   # [g x g]
            same = inverse[rows][:, None] == inverse[rows][None, :]
            own = s.masked_fill(~same, float("-inf")).max(1).values
            other = s.masked_fill(same, float("-inf")).max(1).values
            hits += int((own > other).sum())
            total += len(rows)
    out[f"i2t_top1_in{group}"] = hits / total
    return out


@torch.no_grad()
def clip_metrics(model, pixels: np.ndarray, tokens: list[list[int]], caption_ids, device: torch.device,
                 batch_size: int = 256, group: int = 32, seed: int = 0, features: torch.Tensor | None = None) -> dict:
    """Embed every (image, caption) pair of a split with a ClipModel and score it: `retrieval_metrics` plus
    `loss`, the symmetric InfoNCE over the whole split at once (every other pair a negative) at the model's
    temperature. pixels: uint8 [N x 3 x S x S]; tokens: N lists of ids; features:
    optional cached Thinker states [n_captions x T x d] indexed by caption id."""
    from omni.models.vision import clip_loss
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
    from omni.data.tts import collate
    device = next(talker.parameters()).device
    total, frames = torch.zeros(talker.cfg.codebooks), 0
    for s in range(0, len(samples), batch_size):
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(samples[s:s + batch_size], 0.01).items()}
        out = talker(b["text"], b["text_lens"], b["mel"], b["mel_lens"], b["codes"], b["code_lens"],
                     tokens=b.get("tokens"), owner=b.get("owner"))
        n = int(b["code_lens"].sum())
        total += out["ce_per_book"].float().cpu() * n
        frames += n
    return total / max(frames, 1)
