"""Device names as configs and command lines give them ("auto", "cpu", "cuda", "cuda:1")."""
from __future__ import annotations

import torch

from omni.errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" is CUDA when available, else the CPU; "cuda" is this process's GPU (its local rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:   # torch's message lists its two dozen device types; name the ones used here
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but CUDA is not available; use auto or cpu")
    return device
