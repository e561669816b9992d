"""CTC decoding: best path (greedy), and prefix beam search with a character LM (omni.charlm) by shallow
fusion. Stage B's artifact holds its `DecodeConfig` and LM; omni.artifacts builds its `Decoder` from them.

    decoder = Decoder(vocab, CharLM.fit(transcripts), DecodeConfig(beam=8))
    texts = decoder(logits, lengths)      # logits: Tensor[B x T x V], class 0 the blank
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omni.charlm import BOUNDARY, CharLM
from omni.config import ConfigError
from omni.models.audio_encoder import BLANK


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. logits: Tensor[B x T x V]; lengths: Tensor[B]."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist()):
        row = row[:n]
        keep = torch.ones_like(row, dtype=torch.bool)
        keep[1:] = row[1:] != row[:-1]
        out.append([int(i) for i in row[keep] if i != BLANK])
    return out


def _logaddexp(*xs: float) -> float:
    m = max(xs)
    return m if m == -math.inf else m + math.log(sum(math.exp(x - m) for x in xs))


def ctc_beam_search(logp: torch.Tensor, chars: str, lm: CharLM, beam: int = 8, lm_weight: float = 0.5,
                    char_bonus: float = 0.0, prune: float = 8.0) -> str:
    """CTC prefix beam search (Hannun et al. 2014) with a character LM by shallow fusion: a prefix scores its
    CTC log-probability + lm_weight × its LM log-probability + char_bonus per character, and the line's end
    is scored by the LM too. logp: Tensor[T x V] log-softmax of one utterance (class 0 the blank, class i the
    character chars[i - 1]); per frame only classes within `prune` nats of the best are tried."""
    logp = logp.float().cpu()
    beams = {"": (0.0, -math.inf, 0.0)}   # prefix -> (log P ending in blank, not in blank, LM + bonus score)
    for row in logp:
        best = float(row.max())
        tried = [(i, float(row[i])) for i in torch.nonzero(row >= best - prune).flatten().tolist() if i != BLANK]
        blank = float(row[BLANK])
        nxt: dict[str, list] = {}

        def add(prefix, pb, pnb, lm_score):
            cur = nxt.get(prefix)
            if cur is None:
                nxt[prefix] = [pb, pnb, lm_score]
            else:
                cur[0], cur[1] = _logaddexp(cur[0], pb), _logaddexp(cur[1], pnb)

        for prefix, (pb, pnb, lm_score) in beams.items():
            add(prefix, _logaddexp(pb, pnb) + blank, -math.inf, lm_score)
            last = prefix[-1:]
            if last:   # the last character held over another frame
                add(prefix, -math.inf, pnb + float(row[chars.index(last) + 1]), lm_score)
            for i, p in tried:
                c = chars[i - 1]
                ext = lm_score + lm_weight * lm.logprob(prefix, c) + char_bonus
                add(prefix + c, -math.inf, (pb if c == last else _logaddexp(pb, pnb)) + p, ext)
        beams = dict(sorted(nxt.items(), key=lambda kv: -(_logaddexp(kv[1][0], kv[1][1]) + kv[1][2]))[:beam])
    return max(beams, key=lambda b: _logaddexp(*beams[b][:2]) + beams[b][2]
               + lm_weight * lm.logprob(b, BOUNDARY))


@dataclass
class DecodeConfig:
    """How Stage B's artifact turns CTC outputs into text. beam 0: best path (greedy), no language model."""
    beam: int = 8
    lm_order: int = 6           # the character LM fitted on the training transcripts when the stage finishes
    lm_weight: float = 0.5
    char_bonus: float = 0.5     # added per character: keeps the LM from favouring short outputs

    def __post_init__(self):
        if self.beam < 0 or (self.beam and self.lm_order < 1):
            raise ConfigError(f"decode: beam must be >= 0 and lm_order >= 1 with a beam, got beam {self.beam}, "
                              f"lm_order {self.lm_order}")


class Decoder:
    """A batch of CTC logits → texts: greedy (no LM) or beam search with the character LM."""

    def __init__(self, vocab, lm: CharLM | None = None, cfg: DecodeConfig | None = None):  # vocab: CharVocab
        self.vocab, self.lm, self.cfg = vocab, lm, cfg or DecodeConfig(beam=0)
        if self.cfg.beam and lm is None:
            raise ValueError("a beam search decoder needs its character LM")

    def __call__(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        if not self.cfg.beam:
            return [self.vocab.decode(ids) for ids in ctc_greedy(logits, lengths)]
        logp = logits.float().log_softmax(-1).cpu()
        c = self.cfg
        return [ctc_beam_search(row[:n], self.vocab.chars, self.lm, c.beam, c.lm_weight, c.char_bonus)
                for row, n in zip(logp, lengths.tolist())]
