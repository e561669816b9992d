"""Sentence pools of both layers, each split into a training side and a held-out side.

The split rules are the ones the text corpus uses, so no split of any modality trains on a sentence that
another modality holds out: general English follows `text.is_held_out` on whole documents (a held-out
document's sentences are held out everywhere, minus any sentence that also occurs in a training document);
the world follows `world.is_held_out`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from omni.builtin import world
from omni.builtin.speech import normalize_transcript, speakable_sentences
from omni.builtin.text import fortune_documents, is_held_out, kjv_documents, wordnet_entries

TEXT_VAL_PERCENT = 2.0  # build_text's default: the same documents are held out in text and speech


@lru_cache(maxsize=1)
def english_pools(val_percent: float = TEXT_VAL_PERCENT) -> dict[str, dict[str, list[str]]]:
    """{source: {"train": [...], "held": [...]}} of speakable 4–16-word sentences (original casing and
    punctuation, for the synthesizer), deduplicated by their normalized transcript; sorted for determinism.
    Cached: ASR, TTS and SFT share one parse (~2 s); treat the result as read-only."""
    docs = {
        "kjv": kjv_documents(),
        "wordnet": [" ".join(e if e[-1] in ".!?" else e + "." for e in ex) for _, _, _, ex in wordnet_entries()
                    if ex],
        "fortunes": fortune_documents(),
    }
    pools = {}
    for name, ds in docs.items():
        train, held = {}, {}
        for d in ds:
            side = held if is_held_out(d, val_percent) else train
            for s in speakable_sentences(d):
                side.setdefault(normalize_transcript(s), s)
        held = {k: v for k, v in held.items() if k not in train}
        pools[name] = {"train": [train[k] for k in sorted(train)], "held": [held[k] for k in sorted(held)]}
    return pools


def sample_english(pools: dict, n: int, side: str, rng: np.random.Generator, exclude: set[str] = frozenset()
                   ) -> list[str]:
    """n distinct sentences of one side, drawn evenly across sources (each source's share capped by its
    size); `exclude` holds normalized transcripts already used."""
    sources = sorted(pools)
    order = {s: list(rng.permutation(len(pools[s][side]))) for s in sources}
    out, seen = [], set(exclude)
    while len(out) < n and any(order.values()):
        for s in sources:
            while order[s]:
                sent = pools[s][side][order[s].pop()]
                key = normalize_transcript(sent)
                if key not in seen:
                    seen.add(key)
                    out.append(sent)
                    break
            if len(out) == n:
                break
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {side} English sentences available, {n} requested")
    return out


def sample_world(n: int, held_out: bool, rng: np.random.Generator, exclude: set[str] = frozenset(),
                 mix: tuple[float, float, float] = (0.6, 0.25, 0.15)) -> list[str]:
    """n distinct world sentences on one side of `world.is_held_out`: captions, statements and questions
    in proportions `mix` (questions only on the training side: they are never held out)."""
    out, seen = [], set(exclude)
    p = np.array(mix if not held_out else (mix[0], mix[1], 0.0))
    p = p / p.sum()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10000:
            raise ValueError(f"could not draw {n} distinct world sentences (held_out={held_out})")
        scene = world.sample_scene(rng)
        kind = rng.choice(3, p=p)
        if kind == 0:
            s = world.caption(scene)
        else:
            qs = world.questions(scene, rng)
            q = qs[rng.integers(len(qs))]
            s = q.statement if kind == 1 else q.text
        if world.is_held_out(s) == held_out and s not in seen:
            seen.add(s)
            out.append(s)
    return out
