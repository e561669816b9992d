"""Reading lines with a trained OCR model: batched decoding (greedy and KV-cached, bounded by the CTC head's
reading; or the CTC head's, or both rescored), evaluation, and the command line
`python -m omni.ocr --ckpt ocr.pt a.png b.jpg` (prints `path<TAB>text` per image)."""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omni.artifacts import load_artifact
from omni.ctc import ctc_greedy
from omni.data.ocr import batch_lines, line_pixels, load_line
from omni.device import resolve_device
from omni.errors import UserError, exit_on_user_error
from omni.metrics import cer, length_bucket, wer
from omni.models.layers import KVCache
from omni.models.ocr import OCRModel
from omni.vocab import CharVocab


def _lines(images: list, height: int) -> list:
    """Paths, PIL images or uint8 lines (line_pixels) → uint8 lines; an unreadable file is an error naming it."""
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            out.append(im)
            continue
        a = line_pixels(im, height) if isinstance(im, Image.Image) else load_line(str(im), height)
        if a is None:
            raise UserError(f"cannot read image {im} (missing, or not an image)")
        out.append(a)
    return out


DECODINGS = ("greedy", "ctc_bound", "ctc", "joint")
DECODING = "joint"       # chosen on validation (docs/results.md, OCR)
JOINT_CTC_WEIGHT = 0.7   # "joint": the CTC prefix score's weight beside the decoder's log-probabilities


class CTCPrefixScore:
    """CTC prefix log-probabilities of one growing hypothesis per row, for every next character at once (Watanabe
    et al. 2017, "Hybrid CTC/attention architecture for end-to-end speech recognition", Algorithm 2).
    log_probs: Tensor[B x T x C] (blank 0, then the characters), frames: Long[B] real frames per row.
    r_n / r_b: Tensor[B x T], log p(prefix, ending by frame t in a character / in a blank)."""

    def __init__(self, log_probs: torch.Tensor, frames: torch.Tensor):
        B, T, _ = log_probs.shape
        self.x, self.frames = log_probs.float(), frames
        self.valid = torch.arange(T, device=frames.device)[None] < frames[:, None]
        self.r_n = torch.full((B, T), -math.inf, device=log_probs.device)
        self.r_b = self.x[:, :, 0].cumsum(1)                       # the empty prefix: blanks only
        self.last = torch.full((B,), -1, dtype=torch.long, device=frames.device)
        self.empty = torch.ones(B, dtype=torch.bool, device=frames.device)

    def _phi(self, c: torch.Tensor | None = None) -> torch.Tensor:
        """log p(prefix by frame t-1, ready for the next character): Tensor[B x T (x C)], shifted by one frame;
        for the prefix's own last character only the paths ending in a blank count (a repeat needs one)."""
        tot = torch.logaddexp(self.r_n, self.r_b)
        if c is None:   # every character: [B x T x C-1]
            phi = tot[:, :, None].expand(-1, -1, self.x.shape[2] - 1).clone()
            rows = (self.last > 0).nonzero()[:, 0]
            phi[rows, :, self.last[rows] - 1] = self.r_b[rows]
        else:
            phi = torch.where((c == self.last)[:, None], self.r_b, tot)
        start = torch.where(self.empty, 0.0, -math.inf).to(phi.dtype)   # a first character may start at frame 0
        start = start.view(-1, *([1] * (phi.ndim - 1))).expand_as(phi[:, :1])
        return torch.cat([start, phi[:, :-1]], 1)

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p of prefix + c as a prefix, for each character c: Tensor[B x C-1]; log p(the line is exactly the
        prefix): Tensor[B])."""
        terms = self._phi() + self.x[:, :, 1:]
        psi = terms.masked_fill(~self.valid[:, :, None], -math.inf).logsumexp(1)
        end = torch.logaddexp(self.r_n, self.r_b).gather(1, (self.frames - 1).clamp_min(0)[:, None])[:, 0]
        return psi, end

    def extend(self, c: torch.Tensor) -> None:
        """Append character c (Long[B], 1..C-1) to each row's prefix. The recursions r_n[t] = (r_n[t-1] ⊕ phi[t])
        + x[t, c] and r_b[t] = (r_n[t-1] ⊕ r_b[t-1]) + x[t, blank] are solved in closed form with cumulative
        log-sum-exps (no loop over frames)."""
        phi = self._phi(c)
        xc = self.x.gather(2, c[:, None, None].expand(-1, self.x.shape[1], 1))[:, :, 0]
        lc = xc.cumsum(1)
        r_n = lc + torch.logcumsumexp(phi - F.pad(lc[:, :-1], (1, 0)), 1)
        lb = self.x[:, :, 0].cumsum(1)
        prev = F.pad(r_n[:, :-1], (1, 0), value=-math.inf)
        self.r_n, self.r_b = r_n, lb + torch.logcumsumexp(prev - F.pad(lb[:, :-1], (1, 0)), 1)
        self.last, self.empty = c, torch.zeros_like(self.empty)


@torch.no_grad()
def joint_generate(model: OCRModel, memory: torch.Tensor, mask: torch.Tensor, ctc_logits: torch.Tensor,
                   ctc_weight: float | None = None) -> list[list[int]]:
    """Greedy decoding on ctc_weight (default JOINT_CTC_WEIGHT) x the CTC prefix score + (1 - ctc_weight) x the
    decoder's log-probability of each next character (EOS: of the line being exactly the prefix). The CTC
    alignment over the line's frames keeps the decoder from looping, skipping or stopping early past the
    lengths it trained on.
    → character ids per row (no BOS / EOS)."""
    ctc_weight = JOINT_CTC_WEIGHT if ctc_weight is None else ctc_weight
    B, frames = memory.shape[0], mask.sum(1)
    ctc = CTCPrefixScore(ctc_logits.log_softmax(-1), frames)
    kv = model.memory_kv(memory)
    # CTC needs a frame per character: the most a line holds, then EOS; and no more than the decoder's positions
    limit = min(int(frames.max()) + 1, model.cfg.max_text_length + 1)
    cache = KVCache(len(model.blocks), B, model.cfg.n_heads, limit + 1, model.cfg.d_model // model.cfg.n_heads,
                    memory.device, memory.dtype)
    nxt = torch.full((B,), model.bos, dtype=torch.long, device=memory.device)
    done = torch.zeros(B, dtype=torch.bool, device=memory.device)
    prev = torch.zeros(B, device=memory.device)   # the CTC prefix score of the hypothesis so far
    out = []
    for _ in range(limit):
        att = model.decode(nxt[:, None], kv, mask, cache)[:, -1].float().log_softmax(-1)
        psi, end = ctc.scores()
        joint = torch.cat([ctc_weight * (psi - prev[:, None]) + (1 - ctc_weight) * att[:, 1:model.bos],
                           (ctc_weight * (end - prev) + (1 - ctc_weight) * att[:, model.eos])[:, None]], 1)
        k = joint.argmax(1)
        stop = done | (k == joint.shape[1] - 1)
        nxt = torch.where(stop, model.eos, k + 1)
        out.append(nxt)
        done = stop
        if done.all():
            break
        k = k.clamp_max(psi.shape[1] - 1)         # finished rows extend by a dummy character: never read again
        ctc.extend(k + 1)
        prev = torch.where(done, prev, psi.gather(1, k[:, None])[:, 0])
    rows = torch.stack(out, 1).tolist()
    return [r[:r.index(model.eos)] if model.eos in r else r for r in rows]


@torch.no_grad()
def decode_batch(model: OCRModel, pixels: torch.Tensor, widths: torch.Tensor, decoding: str = DECODING
                 ) -> tuple[list[list[int]], list[list[int]]]:
    """Character ids per line of a batch, by `decoding`, and the CTC head's best path beside them:
    - "greedy": the decoder alone, up to one character per encoder frame;
    - "ctc_bound": the decoder, stopped after 1.25 x the CTC head's reading + 2 characters (OCRModel.generate);
    - "ctc": the CTC head's best path;
    - "joint": the decoder and the CTC head together, one greedy step at a time (joint_generate)."""
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    memory, mask = model.encode(pixels, widths)
    ctc_logits = model.ctc_head(memory)
    ctc_ids = ctc_greedy(ctc_logits, mask.sum(1))
    if decoding == "ctc":
        return ctc_ids, ctc_ids
    if decoding == "joint":
        return joint_generate(model, memory, mask, ctc_logits), ctc_ids
    return model.generate(pixels, widths, ctc_bound=None if decoding == "greedy" else 1.25,
                          encoded=(memory, mask)), ctc_ids


@torch.no_grad()
def read_lines(model: OCRModel, vocab: CharVocab, images: list, batch_size: int = 32, device="cpu",
               ctc: bool = False, decoding: str = DECODING) -> list[str] | tuple[list[str], list[str]]:
    """The text of each line image (paths, PIL images or line_pixels arrays), in input order, read by
    `decoding` (decode_batch); with `ctc`, also the CTC head's best path, as (texts, CTC texts)."""
    lines = _lines(images, model.cfg.image_height)
    order = sorted(range(len(lines)), key=lambda i: lines[i].shape[1])   # similar widths: little padding
    texts, ctc_texts = [""] * len(lines), [""] * len(lines)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        pixels, widths = batch_lines([lines[i] for i in idx])
        ids, ctc_ids = decode_batch(model, pixels.to(device), widths.to(device), decoding)
        for i, a, c in zip(idx, ids, ctc_ids):
            texts[i], ctc_texts[i] = vocab.decode(a), vocab.decode(c)
    return (texts, ctc_texts) if ctc else texts


def length_buckets(refs: list[str], hyps: list[str]) -> dict:
    """CER per line-length bucket of the references (omni.metrics.LINE_BUCKETS): {"cer_1-28": ..., "n_1-28": ...}."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        groups.setdefault(length_bucket(len(r)), []).append(i)
    out = {}
    for name in sorted(groups, key=lambda k: int(k.split("-")[0].rstrip("+"))):
        idx = groups[name]
        out[f"cer_{name}"] = cer([refs[i] for i in idx], [hyps[i] for i in idx])
        out[f"n_{name}"] = len(idx)
    return out


def evaluate_lines(model: OCRModel, vocab: CharVocab, images: list, texts: list[str], batch_size: int = 64,
                   device="cpu", ctc: bool = False, decoding: str = DECODING) -> tuple[dict, list[str]]:
    """CER, WER and line accuracy (exact match) of the readings by `decoding` (and `ctc_cer` of the CTC head's),
    CER per line-length bucket, and `max_len_ratio`: the longest reading over its reference's length (a loop
    shows there). Unreadable images are skipped and counted in `skipped`. Returns (metrics, readings in input
    order)."""
    h = model.cfg.image_height
    lines = [line_pixels(im, h) if isinstance(im, Image.Image) else load_line(str(im), h) for im in images]
    keep = [i for i, a in enumerate(lines) if a is not None]
    refs = [texts[i] for i in keep]
    hyps, ctc_hyps = read_lines(model, vocab, [lines[i] for i in keep], batch_size, device, True, decoding)
    m = {"cer": cer(refs, hyps), "wer": wer(refs, hyps),
         "line_acc": sum(r == h for r, h in zip(refs, hyps)) / max(len(refs), 1), "n": len(refs),
         "skipped": len(images) - len(refs),
         "max_len_ratio": max((len(h) / len(r) for r, h in zip(refs, hyps)), default=0.0),
         **length_buckets(refs, hyps)}
    if ctc:
        m["ctc_cer"] = cer(refs, ctc_hyps)
    return m, hyps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Read text lines in images with a trained OCR model.")
    p.add_argument("--ckpt", required=True, help="final ocr.pt (or the folder that holds it)")
    p.add_argument("images", nargs="+", help="line images: PNG, JPEG, ... of one line of text each")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--decoding", choices=DECODINGS, default=DECODING, help=f"how lines are read (default {DECODING})")
    args = p.parse_args(argv)
    with exit_on_user_error():
        device = resolve_device(args.device)
        a = load_artifact(args.ckpt, "ocr", device)
        texts = read_lines(a.model, a.vocab, args.images, args.batch_size, device, decoding=args.decoding)
    for path, text in zip(args.images, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
