"""A character n-gram language model for CTC beam search (Stage B's decoding).

Witten-Bell interpolation (Witten & Bell 1991; Chen & Goodman 1998, §2.5): each order's estimate is mixed
with the next shorter one's in proportion to how many distinct characters followed its context, so unseen
characters keep a share and the model is normalised at every order. Each transcript is read as
"\\n" + text + "\\n": the line break marks its start (context) and its end (a character it predicts).

    lm = CharLM.fit(["a small red star at the top", ...], order=6)
    lm.logprob("a small red st", "a")     # natural log of P(a | "ed st")
    CharLM.from_dict(lm.to_dict())        # what the artifact stores: plain str/int, torch.load-safe
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from functools import lru_cache

BOUNDARY = "\n"


class CharLM:
    def __init__(self, order: int, counts: dict[str, dict[str, int]], alphabet: str):
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        self.order, self.counts, self.alphabet = order, counts, alphabet
        self._totals = {h: (sum(c.values()), len(c)) for h, c in counts.items()}
        self.logprob = lru_cache(maxsize=1 << 18)(self._logprob)

    @classmethod
    def fit(cls, texts, order: int = 6) -> "CharLM":
        counts: dict[str, Counter] = defaultdict(Counter)
        for text in texts:
            line = BOUNDARY + text + BOUNDARY
            for i in range(1, len(line)):
                for n in range(order):   # contexts of 0 .. order-1 characters
                    if i - n < 0:
                        break
                    counts[line[i - n:i]][line[i]] += 1
        alphabet = "".join(sorted(counts[""]))
        return cls(order, {h: dict(c) for h, c in counts.items()}, alphabet)

    def _logprob(self, history: str, char: str) -> float:
        history = (BOUNDARY + history)[-(self.order - 1):] if self.order > 1 else ""
        p = 1.0 / (len(self.alphabet) + 1)   # order 0: uniform, with one slot for unseen characters
        for n in range(len(history) + 1):    # from the empty context up to the longest
            h = history[len(history) - n:]
            if h not in self._totals:
                break
            total, distinct = self._totals[h]
            p = (self.counts[h].get(char, 0) + distinct * p) / (total + distinct)
        return math.log(p)

    def to_dict(self) -> dict:
        return {"order": self.order, "alphabet": self.alphabet, "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict) -> "CharLM":
        return cls(int(d["order"]), d["counts"], d["alphabet"])
