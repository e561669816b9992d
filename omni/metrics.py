"""Quality metrics shared by training-time validation and scripts/evaluate.py: pure functions of predictions,
references and embeddings. Nothing here runs or imports a model; omni.infer.evaluate runs the models and
scores them with these.
"""
from __future__ import annotations

import numpy as np
import torch


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


LINE_BUCKETS = ((1, 28), (29, 48), (49, 64))   # OCR line lengths the data summary and the evaluation report apart


def length_bucket(n: int) -> str:
    """The LINE_BUCKETS name of a line of n characters: '1-28', '29-48', '49-64' (longer lines: '65+')."""
    for lo, hi in LINE_BUCKETS:
        if lo <= n <= hi:
            return f"{lo}-{hi}"
    return f"{LINE_BUCKETS[-1][1] + 1}+"
