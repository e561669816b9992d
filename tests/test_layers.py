"""The shared layers' CPU fast paths against the torch modules they stand for."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from omni.models.layers import Conv1d, Dropout, attend


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_keeps_its_share_scales_and_passes_gradients_through_the_kept_values(p):
    torch.manual_seed(0)
    drop, x = Dropout(p), torch.randn(64, 50, 32, requires_grad=True)
    y = drop(x)
    kept = y != 0
    share = round(p * 256) / 256                    # the mask's resolution: 1/256
    assert abs(kept.float().mean().item() - (1 - share)) < 0.01
    assert torch.allclose(y[kept], x[kept] / (1 - share))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert not torch.equal(drop(x) != 0, kept)      # a new mask each call
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=15, padding=7, groups=8),
                                dict(kernel_size=3, dilation=3, padding=3), dict(kernel_size=5, padding="same"),
                                dict(kernel_size=4, stride=2, bias=False)])
def test_cpu_conv1d_equals_nn_conv1d_forward_and_backward(kw):
    torch.manual_seed(0)
    ours, ref = Conv1d(8, 16, **kw), nn.Conv1d(8, 16, **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 37, 8).transpose(1, 2).requires_grad_()     # time-major storage, as the models hold it
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, atol=1e-5)
    (y * y_ref.detach()).sum().backward()
    (y_ref * y_ref.detach()).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, atol=1e-4)


@pytest.mark.parametrize("how", ["none", "causal", "key_mask"])
def test_explicit_attention_equals_sdpa_with_gradients(how):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 1, 7) > 0.3 if how == "key_mask" else None
    if mask is not None:
        mask[..., 0] = True                                           # every query sees a key
    outs, grads = [], []
    for fused in (True, False):
        y = attend(q, k, v, mask, causal=how == "causal", fused=fused)
        outs.append(y)
        grads.append(torch.autograd.grad((y * y.detach()).sum(), (q, k, v)))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
