#!/usr/bin/env python
"""Evaluate one trained stage on data in SPEC §9's formats; prints its metrics as one JSON object.

    python scripts/evaluate.py text --ckpt runs/demo/thinker/thinker.pt --data data/demo/text/val.txt
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omni.data.text import token_cache  # noqa: E402
from omni.metrics import lm_metrics  # noqa: E402
from omni.models.thinker import load_thinker  # noqa: E402
from omni.train.dist import resolve_device  # noqa: E402


def eval_text(args) -> dict:
    device = resolve_device(args.device)
    model, tok = load_thinker(args.ckpt, device)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = token_cache(args.data, tok, tmp)
    with torch.no_grad():
        m = lm_metrics(model, tokens, model.cfg.ctx_len, args.batch_size, tok.token_bytes(), device)
    return {"perplexity": m["perplexity"], "bits_per_byte": m["bits_per_byte"], "loss": m["loss"],
            "n_tokens": m["n_tokens"], "ckpt": str(args.ckpt), "data": str(args.data)}


def eval_vision(args) -> dict:
    """Image↔text retrieval over the whole manifest (duplicate captions count as one text; see
    omni.metrics.retrieval_metrics), plus top-1 within random groups of 32 and the whole-split loss."""
    import numpy as np
    from omni.data.images import decode_image, read_manifest
    from omni.metrics import clip_metrics
    from omni.models.vision import load_vision
    from omni.tokenizer import EOS

    device = resolve_device(args.device)
    model, tok = load_vision(args.ckpt, device)
    rows = read_manifest(args.data)
    size, max_len = model.cfg.vision.image_size, model.cfg.text.max_len
    if model.text.uses_thinker:
        max_len = min(max_len, model.text.thinker.cfg.ctx_len)
    pixels, tokens, captions, skipped = [], [], [], 0
    for (path, caption), ids in zip(rows, tok.encode([c for _, c in rows])):
        img = decode_image(path, size)
        if img is None or len(ids) + 1 > max_len:
            skipped += 1
            continue
        pixels.append(img)
        tokens.append(ids + [EOS])
        captions.append(caption)
    if not pixels:
        raise ValueError(f"{args.data}: no usable rows")
    index = {c: i for i, c in enumerate(sorted(set(captions)))}
    with torch.no_grad():
        m = clip_metrics(model, np.stack(pixels), tokens, [index[c] for c in captions], device,
                         args.batch_size)
    return {**m, "skipped": skipped, "ckpt": str(args.ckpt), "data": str(args.data)}


def eval_asr(args) -> dict:
    """Greedy CTC transcription of every utterance in an ASR manifest: WER, CER (fractions), CTC loss."""
    from omni.asr import evaluate_utterances, load_asr
    from omni.data.speech import read_manifest

    device = resolve_device(args.device)
    model, vocab, mel = load_asr(args.ckpt, device)
    utts = read_manifest(args.data)
    m, _ = evaluate_utterances(model, vocab, mel, [u.wav for u in utts], [u.text for u in utts],
                               args.batch_size, device)
    return {**m, "ckpt": str(args.ckpt), "data": str(args.data)}


STAGES = {"text": eval_text, "vision": eval_vision, "asr": eval_asr}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--ckpt", required=True, help="final artifact of the stage")
    p.add_argument("--data", required=True, help="held-out data in the stage's format")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    try:
        result = STAGES[args.stage](args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
