#!/usr/bin/env python
"""Throughput of each stage's hot paths, printed as a table and written as JSON.

    python scripts/benchmark.py [--only thinker] [--device auto] [--out runs/benchmark.json]

Training rows time full optimizer steps (forward, backward, AdamW) on random data at a config's sizes, with
the engine's AMP and compile settings on GPU; generation rows time KV-cached against uncached decoding.
Later stages add their rows to ROWS.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from omni.config import load_config  # noqa: E402
from omni.models.thinker import Thinker, generate  # noqa: E402
from omni.train.dist import resolve_device  # noqa: E402
from omni.train.engine import autocast_context  # noqa: E402
from omni.train.optim import build_optimizer  # noqa: E402
from train_text import TextConfig  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int, iters: int) -> float:
    """Seconds per call of fn, after warmup calls (compile, allocator)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def thinker_train(config: str, device, batch_size: int | None = None, steps: int = 5) -> dict:
    cfg = load_config(TextConfig, config)
    torch.manual_seed(0)
    model = Thinker(cfg.model).to(device).train()
    fwd = torch.compile(model) if cfg.use_compile and device.type == "cuda" else model
    opt = build_optimizer(model, cfg.lr, cfg.wd, device)
    B, T = batch_size or cfg.batch_size, cfg.model.ctx_len
    x = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=device)

    def step():
        with autocast_context(device, cfg.use_amp):
            loss = fwd(x[:, :-1], targets=x[:, 1:])["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sec = timed(step, device, warmup=2, iters=steps)
    row = {"tokens/s": B * T / sec, "batch": B, "ctx_len": T,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def thinker_generate(config: str, device, new_tokens: int = 128) -> dict:
    cfg = load_config(TextConfig, config)
    torch.manual_seed(0)
    model = Thinker(cfg.model).to(device).eval()
    prompt = torch.randint(0, cfg.model.vocab_size, (1, 16), device=device)
    row = {}
    for name, cache in (("cached", True), ("uncached", False)):
        sec = timed(lambda: generate(model, prompt, new_tokens, temperature=0, use_cache=cache), device, 2, 3)
        row[f"{name} tok/s"] = new_tokens / sec
    row["speed-up"] = row["cached tok/s"] / row["uncached tok/s"]
    return row


ROWS = {
    "thinker train (demo)": lambda d: thinker_train("configs/demo/thinker.json", d),
    "thinker train (tiny)": lambda d: thinker_train("configs/thinker_tiny.json", d,
                                                    batch_size=None if d.type == "cuda" else 4, steps=3),
    "thinker generate (demo)": lambda d: thinker_generate("configs/demo/thinker.json", d),
    "thinker generate (tiny)": lambda d: thinker_generate("configs/thinker_tiny.json", d),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run rows whose name contains this")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/benchmark.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    results = {}
    for name, fn in ROWS.items():
        if args.only and args.only not in name:
            continue
        results[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in fn(device).items()}
        print(f"{name:<28} " + "  ".join(f"{k} {v:,}" for k, v in results[name].items()), flush=True)
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": info, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
