"""Perceptual speech measures for judging a vocoder the way listeners would: wideband PESQ (ITU-T P.862.2,
1.0–4.64) and STOI (short-time objective intelligibility, 0–1), through the `pesq` and `pystoi` packages of
requirements-eval.txt (evaluation only; `make setup` installs them).

    perceptual_scores(reference, degraded, sample_rate)   # → {"pesq_wb": .., "stoi": ..}
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio.functional as AF

PESQ_RATE = 16_000   # wideband PESQ is defined at 16 kHz


def available() -> bool:
    """Whether the packages are installed."""
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
    except ImportError:
        return False
    return True


def perceptual_scores(reference: torch.Tensor, degraded: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """Wideband PESQ and STOI of `degraded` against `reference` (1-D waveforms at `sample_rate`, cut to the
    shorter of the two)."""
    try:
        from pesq import pesq
        from pystoi import stoi
    except ImportError as e:
        raise ImportError(f"PESQ / STOI need the evaluation packages ({e.name} is missing): "
                          f"pip install -r requirements-eval.txt") from None
    n = min(reference.numel(), degraded.numel())
    ref, deg = reference.reshape(-1)[:n].float().cpu(), degraded.reshape(-1)[:n].float().cpu()
    if sample_rate != PESQ_RATE:
        ref, deg = (AF.resample(x, sample_rate, PESQ_RATE) for x in (ref, deg))
    ref, deg = ref.numpy().astype(np.float64), deg.numpy().astype(np.float64)
    return {"pesq_wb": float(pesq(PESQ_RATE, ref, deg, "wb")), "stoi": float(stoi(ref, deg, PESQ_RATE))}
