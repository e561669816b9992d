"""The Thinker: shapes, KV-cached generation parity, sampling, MoE, and strict loading."""
from __future__ import annotations

import pytest
import torch

from omni.infer.generate import generate
from omni.models.decoder import sample_next
from omni.models.layers import use_sdpa
from omni.models.thinker import Thinker, ThinkerConfig


def tiny(**kw) -> Thinker:
    torch.manual_seed(0)
    cfg = ThinkerConfig(vocab_size=97, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, ctx_len=64, **kw)
    return Thinker(cfg).eval()


def test_shapes_hidden_and_embeddings_input():
    m = tiny()
    ids = torch.randint(0, 97, (3, 10))
    out = m(ids, targets=ids, return_hidden=True)
    assert out["logits"].shape == (3, 10, 97) and out["hidden"].shape == (3, 10, 64)
    assert out["loss"].ndim == 0
    same = m(inputs_embeds=m.embed(ids))["logits"]
    assert torch.allclose(same, out["logits"])


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_on_the_target_positions_only_equals_the_full_loss(weighted):
    """return_logits=False projects only the target tokens (SFT's answers): same loss, same gradients."""
    m = tiny().train()
    ids = torch.randint(0, 97, (3, 12))
    targets = torch.full_like(ids, -100)
    targets[0, 8:], targets[1, 3:5], targets[2, 11] = ids[0, 8:], ids[1, 3:5], ids[2, 11]
    w = torch.rand(3, 12) if weighted else None
    losses, grads = [], []
    for full in (True, False):
        m.zero_grad()
        loss = m(ids, targets=targets, loss_weights=w, return_logits=full)["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append(m.embed.weight.grad.clone())
    assert torch.allclose(*losses, atol=1e-6) and torch.allclose(*grads, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"n_experts": 4}, {"tie_embeddings": False}], ids=["dense", "moe", "untied"])
def test_kv_cached_generation_matches_uncached_logits(kw):
    m = tiny(**kw)
    prompt = torch.randint(0, 97, (2, 12))
    out = generate(m, prompt, max_new_tokens=32, temperature=0)
    assert out.shape == (2, 44)
    # logits for every new token, once through the cache (prompt, then one token at a time) and once full
    cache = m.new_cache(2)
    cached = [m(prompt, cache=cache)["logits"][:, -1]]
    for t in range(12, 43):
        cached.append(m(out[:, t:t + 1], cache=cache)["logits"][:, -1])
    full = m(out[:, :43])["logits"][:, 11:]
    assert (torch.stack(cached, 1) - full).abs().max().item() < 1e-4
    assert torch.equal(out, generate(m, prompt, max_new_tokens=32, temperature=0, use_cache=False))


def test_static_cache_steps_match_the_growing_cache():
    """The compiled decode path's static cache (whole-buffer attention under a mask, tensor position) gives
    the logits of the ordinary cache, step by step."""
    from omni.models.layers import StaticKVCache
    m = tiny()
    ids = torch.randint(0, 97, (2, 20))
    grow, fixed = m.new_cache(2), m.new_cache(2)
    with torch.no_grad():
        m(ids[:, :8], cache=grow)
        m(ids[:, :8], cache=fixed)
        static = StaticKVCache(fixed)
        for t in range(8, 20):
            a = m(ids[:, t:t + 1], cache=grow)["logits"]
            b = m(ids[:, t:t + 1], cache=static)["logits"]
            assert (a - b).abs().max().item() < 1e-5
    assert int(static.pos) == grow.pos == 20


def test_compiled_generation_gives_the_same_tokens():
    """generate(compile=True): one graph for every step, whatever the prompt's length; the same greedy tokens
    and the same stop at eos as eager decoding."""
    m = tiny(tie_embeddings=False)
    for T in (5, 11):
        prompt = torch.randint(0, 97, (2, T))
        eager = generate(m, prompt, max_new_tokens=24, temperature=0)
        assert torch.equal(generate(m, prompt, max_new_tokens=24, temperature=0, compile=True), eager)
    eos = int(eager[0, T + 3])
    assert torch.equal(generate(m, prompt, max_new_tokens=24, temperature=0, eos_id=eos, compile=True),
                       generate(m, prompt, max_new_tokens=24, temperature=0, eos_id=eos))


def test_generation_from_embeddings_equals_generation_from_ids():
    """SFT and chat prompt with embeddings: the same prompt as ids or as their embeddings gives the same
    tokens (embeddings return only the new ones), cached and uncached."""
    m = tiny(tie_embeddings=False)
    prompt = torch.randint(0, 97, (2, 9))
    from_ids = generate(m, prompt, max_new_tokens=12, temperature=0)
    with torch.no_grad():
        embeds = m.embed(prompt)
    for use_cache in (True, False):
        new = generate(m, inputs_embeds=embeds, max_new_tokens=12, temperature=0, use_cache=use_cache)
        assert torch.equal(new, from_ids[:, 9:])
    with pytest.raises(ValueError, match="exactly one"):
        generate(m, prompt, inputs_embeds=embeds)


def test_chunked_prefill_with_cache_is_causal():
    m = tiny()
    ids = torch.randint(0, 97, (1, 20))
    cache = m.new_cache(1)
    a = m(ids[:, :8], cache=cache)["logits"]
    b = m(ids[:, 8:], cache=cache)["logits"]
    assert (torch.cat([a, b], 1) - m(ids)["logits"]).abs().max().item() < 1e-4


def test_sdpa_and_explicit_attention_agree():
    ids = torch.randint(0, 97, (2, 16))
    a = tiny()(ids)["logits"]
    b = use_sdpa(tiny(), False)(ids)["logits"]
    assert (a - b).abs().max().item() < 1e-5


def test_cpu_bf16_training_takes_the_explicit_path_with_the_same_gradients():
    # under CPU bf16 autocast, training attention runs the explicit math (SDPA's CPU backward is slow there)
    from unittest import mock
    sdpa = "omni.models.layers.F.scaled_dot_product_attention"
    ids = torch.randint(0, 97, (2, 16))
    grads = []
    for model in (use_sdpa(tiny(), False), tiny()):   # the same seed: the same weights
        with torch.autocast("cpu", torch.bfloat16), mock.patch(sdpa, side_effect=AssertionError("SDPA called")):
            model(ids, targets=ids)["loss"].backward()
        grads.append(model.embed.weight.grad)
    assert torch.equal(grads[0], grads[1])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), mock.patch(
            sdpa, wraps=torch.nn.functional.scaled_dot_product_attention) as f:   # inference keeps SDPA
        tiny()(ids)
    assert f.called


def test_generation_stops_at_eos_and_pads_finished_rows():
    m = tiny(tie_embeddings=False)  # (tied, the random model only repeats the prompt's last token)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(m, prompts, max_new_tokens=20, temperature=0)
    # call EOS a token row 0 first emits after two or more new tokens (and before its last) and row 1 never
    # emits: row 0 ends there and is padded, row 1 runs on
    new0, new1 = free[0, 3:].tolist(), set(free[1, 3:].tolist())
    at = next((i for i, t in enumerate(new0[:-1]) if i >= 2 and t not in new1 and t not in new0[:i]), None)
    assert at is not None, f"no token of row 0's greedy continuation {new0} fits (row 1: {sorted(new1)})"
    eos, end = new0[at], 3 + at + 1
    out = generate(m, prompts, max_new_tokens=20, temperature=0, eos_id=eos)
    assert out.shape == (2, 23)  # row 1 never ends, so generation runs to max_new_tokens
    assert torch.equal(out[0, :end], free[0, :end]) and (out[0, end:] == eos).all()  # row 0: padded with EOS
    assert torch.equal(out[1], free[1])
    # once every row has ended, generation stops
    alone = generate(m, prompts[:1], max_new_tokens=20, temperature=0, eos_id=eos)
    assert torch.equal(alone, free[:1, :end])


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert picks == {0, 1}
    picks = {int(sample_next(logits, 1.0, top_p=0.5, generator=g)) for _ in range(200)}
    assert picks == {0}  # token 0 alone holds over half the mass
    assert int(sample_next(logits, 0.0)) == 0


def test_moe_balancing_loss_is_part_of_the_loss():
    m = tiny(n_experts=4).train()
    ids = torch.randint(0, 97, (2, 16))
    out = m(ids, targets=ids)
    assert out["aux_loss"].item() >= 0.99  # n_experts * Σ f_i P_i ≥ 1, with equality when balanced
    assert torch.allclose(out["loss"], out["ce"] + 0.01 * out["aux_loss"])
    out["loss"].backward()
    assert m.decoder.blocks[0].mlp.router.weight.grad is not None
