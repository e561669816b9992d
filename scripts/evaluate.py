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


STAGES = {"text": eval_text}


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
