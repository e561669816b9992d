"""Text generation with the Thinker: KV-cached sampling from token ids or from input embeddings.

    out = generate(thinker, ids, max_new_tokens=64, temperature=0.8, top_k=50, eos_id=tok.eos_id)
    new = generate(thinker, inputs_embeds=embeds, max_new_tokens=64, eos_id=tok.eos_id)   # SFT, chat

Embeddings are how SFT and chat prompt the Thinker with images and speech: the prompt's token embeddings
with projected media embeddings spliced in; they are prefilled in one forward, then tokens follow.

At these sizes a decode step costs what PyTorch spends dispatching its ~100 small operations, not arithmetic.
`compile=True` runs every step after the prefill as one torch.compile graph over a static cache (fixed
shapes: the cache spans the Thinker's whole context and the position is a tensor), built on the first call
for a model, batch size and dtype and reused after (see scripts/benchmark.py --only generate).
"""
from __future__ import annotations

import functools
from typing import Iterator

import torch

from omni.models.decoder import sample_next
from omni.models.layers import StaticKVCache
from omni.models.thinker import Thinker


def generate_stream(model: Thinker, inputs_embeds: torch.Tensor, max_new_tokens: int = 64,
                    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    stop_ids: tuple[int, ...] = (), use_cache: bool = True,
                    generator: torch.Generator | None = None, compile: bool = False) -> Iterator[torch.Tensor]:
    """Yields each step's new tokens Long[B] for the prompt inputs_embeds: Tensor[B x T x d_model] (rows share
    one prompt length), until every row has produced one of `stop_ids` (a finished row repeats its stop id)
    or max_new_tokens / ctx_len. The prompt is prefilled in one forward; with the KV cache each later step
    feeds one token (through the compiled step with `compile`)."""
    x = inputs_embeds
    B, T = x.shape[:2]
    limit = min(max_new_tokens, model.cfg.ctx_len - T)
    compile = compile and use_cache
    cache = model.new_cache(B, model.cfg.ctx_len if compile else T + limit) if use_cache else None
    step = _compiled_step(x.device.type) if compile else _step
    stops, done, last = set(stop_ids), [False] * B, [0] * B
    step_input = x
    with torch.no_grad():
        for i in range(limit):
            logits = (_step if i == 0 else step)(model, step_input, cache)
            if i == 0 and compile:
                cache = StaticKVCache(cache)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            tokens = nxt.tolist()   # the bookkeeping in Python: one sync instead of a few tensor operations
            if any(done):           # a finished row repeats its stop id
                tokens = [last[b] if done[b] else t for b, t in enumerate(tokens)]
                nxt = torch.tensor(tokens, dtype=torch.long, device=x.device)
            done = [d or t in stops for d, t in zip(done, tokens)]
            last = tokens
            yield nxt
            if all(done):
                break
            if use_cache:   # the next step takes the token ids (embedded inside the compiled graph)
                step_input = nxt[:, None]
            else:           # the whole sequence again
                step_input = torch.cat([step_input, model.embed(nxt[:, None]).to(x.dtype)], dim=1)


def _step(model: Thinker, x: torch.Tensor, cache) -> torch.Tensor:
    """The last position's logits Tensor[B x V] for inputs x (embeddings [B x T x d], or token ids [B x T]),
    continuing the cache."""
    if x.dtype == torch.long:
        return model(input_ids=x, cache=cache)["logits"][:, -1]
    return model(inputs_embeds=x, cache=cache)["logits"][:, -1]


@functools.cache
def _compiled_step(device_type: str):
    """_step as one graph per model, batch size and dtype; a new prompt length needs none (the cache spans the
    context). On the CPU the graph's wrapper is C++ (cpp_wrapper): no Python between its ~40 kernels (with the
    token-id loop, demo Thinker on 2 Zen 4 cores: 2,700-3,000 -> 2,900-3,700 tokens/s; scripts/benchmark.py
    --only generate). Made on first use: torch.compile imports torch._dynamo (~1 s)."""
    options = {"cpp_wrapper": True} if device_type == "cpu" else None
    return torch.compile(_step, fullgraph=True, dynamic=False, options=options)


@torch.no_grad()
def generate(model: Thinker, prompt: torch.Tensor | None = None, max_new_tokens: int = 64,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             inputs_embeds: torch.Tensor | None = None, compile: bool = False) -> torch.Tensor:
    """prompt: Long[B x T] → Long[B x T'] (the prompt followed by the new tokens); or inputs_embeds:
    Tensor[B x T x d_model] → Long[B x N] (the new tokens only). Stops when every row has emitted eos_id
    (rows that finished early are padded with eos_id) or at max_new_tokens / ctx_len. Rows of a batch share
    one prompt length (no padding inside a prompt)."""
    if (prompt is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of prompt (token ids) and inputs_embeds")
    x = model.embed(prompt) if inputs_embeds is None else inputs_embeds
    steps = list(generate_stream(model, x, max_new_tokens, temperature, top_k, top_p,
                                 () if eos_id is None else (eos_id,), use_cache, generator, compile))
    new = torch.stack(steps, dim=1) if steps else torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
    return new if prompt is None else torch.cat([prompt, new], dim=1)
