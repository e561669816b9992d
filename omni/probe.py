"""Linear probes of what frozen image features hold about a world scene: the shape and the colour at each of
the five places, and how many objects there are. Trained in a second on a few hundred training scenes and
scored on held-out ones, they tell whether a vision encoder's tokens carry the placed facts Stage E must read
before any SFT run is spent on it. With few training scenes on the pooled tokens Stage E uses (a probe over
every token with thousands of scenes reads shape even from random features).

    labels = scene_labels(captions)            # world captions → targets (None for a caption that is not one)
    probe_accuracy(train_x, train_labels, val_x, val_labels)   # → {"shape": .., "colour": .., "count": ..}
    probe_images(encode, train_pixels, train_labels, val_pixels, val_labels)   # the same from uint8 images
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from omni.builtin.world import COLOURS, POSITIONS, SHAPES, parse_caption

# place targets: the index of the shape (colour) at each place, or one more for an empty place
TARGETS = {"shape": (SHAPES, "shape"), "colour": (tuple(COLOURS), "colour")}


def scene_labels(captions: list[str]) -> dict[str, np.ndarray] | None:
    """{"shape": Int[N x 5], "colour": Int[N x 5], "count": Int[N] (objects - 1)} of canonical world captions,
    or None if any caption is not one."""
    out = {name: np.zeros((len(captions), len(POSITIONS)), dtype=np.int64) for name in TARGETS}
    out["count"] = np.zeros(len(captions), dtype=np.int64)
    for i, text in enumerate(captions):
        objs = parse_caption(text)
        if objs is None:
            return None
        for name, (values, attr) in TARGETS.items():
            out[name][i] = len(values)
            for o in objs:
                out[name][i, POSITIONS.index(o.position)] = values.index(getattr(o, attr))
        out["count"][i] = len(objs) - 1
    return out


def pick_scenes(keys: list, captions: list[str], n: int) -> list[int]:
    """Indices of the first `n` rows with a world caption and a key (image) not picked before."""
    picked, seen = [], set()
    for i, (key, text) in enumerate(zip(keys, captions)):
        if len(picked) == n:
            break
        if key not in seen and parse_caption(text) is not None:
            seen.add(key)
            picked.append(i)
    return picked


@torch.no_grad()
def probe_images(encode, train_pixels: np.ndarray, train_y: dict, val_pixels: np.ndarray, val_y: dict,
                 batch: int = 256, device: torch.device | str = "cpu") -> dict[str, float]:
    """probe_accuracy of `encode` (Tensor[B x 3 x S x S] in [0, 1] → Tensor[B x D]) on uint8 images
    [N x 3 x S x S]."""
    def features(pixels):
        return torch.cat([encode(torch.from_numpy(np.asarray(pixels[i:i + batch])).to(device).float() / 255.0)
                          .float().cpu() for i in range(0, len(pixels), batch)])
    return probe_accuracy(features(train_pixels), train_y, features(val_pixels), val_y)


def probe_accuracy(train_x: torch.Tensor, train_y: dict, val_x: torch.Tensor, val_y: dict, steps: int = 300,
                   l2: float = 1e-3) -> dict[str, float]:
    """Fit one linear probe per target on train_x: Tensor[N x D] (standardised with the training rows'
    statistics; full-batch Adam from zero weights, so no random draw is made) and score it on val_x.
    Place targets are scored on the occupied places only (an empty place is easy to tell)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-4)
    xt, xv = (train_x - mean) / std, (val_x - mean) / std
    out = {}
    for name, yt in train_y.items():
        yt, yv = torch.as_tensor(yt), torch.as_tensor(val_y[name])
        places = yt.shape[1] if yt.ndim == 2 else 1
        n_cls = len(TARGETS[name][0]) + 1 if name in TARGETS else int(max(yt.max(), yv.max())) + 1
        w = torch.zeros(xt.shape[1], places * n_cls, requires_grad=True)
        b = torch.zeros(places * n_cls, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=1e-2)
        with torch.enable_grad():
            for _ in range(steps):
                logits = (xt @ w + b).view(len(xt), places, n_cls)
                loss = F.cross_entropy(logits.flatten(0, 1), yt.reshape(-1)) + l2 * w.square().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = (xv @ w + b).view(len(xv), places, n_cls).argmax(-1).view_as(yv)
        real = yv < n_cls - 1 if name in TARGETS else torch.ones_like(yv, dtype=torch.bool)
        out[name] = float((pred == yv)[real].float().mean())
    return out
