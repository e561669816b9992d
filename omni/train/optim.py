"""AdamW with parameter groups and the warmup + cosine schedule."""
from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """Decay only matrices of Linear/Conv layers. Biases, norms, embeddings and temperatures
    (anything 0/1-D, or registered under an Embedding) are not regularised toward zero."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in no_decay_ids or "temperature" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, wd: float, device: torch.device,
                    betas=(0.9, 0.95)) -> torch.optim.AdamW:
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=betas, fused=fused)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Multiplier on the base lr: linear warmup to 1, then cosine to min_ratio at `total`."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_scheduler(opt, warmup: int, total: int, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total, min_ratio))
