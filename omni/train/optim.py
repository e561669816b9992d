"""AdamW with parameter groups, the warmup + cosine schedule, and `OptimizerSpec`, the way a stage declares
each of its optimizers (one for most stages; a GAN's generator and discriminators; SFT's projectors at their
own learning rate beside the backbone)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OptimizerSpec:
    """One optimizer of a stage. `params`: (module, learning rate) pairs, each module's trainable parameters a
    parameter group at its own rate (a parameter may appear under one module only); a third element, a step
    count, holds that group at lr 0 for so many steps before its own warmup and schedule begin (SFT trains
    its projectors alone first). Unset fields take the config's value (warmup_steps, min_lr_ratio,
    max_grad_norm, wd) or the run's optimizer steps (total_steps)."""
    params: list[tuple]
    warmup_steps: int | None = None
    total_steps: int | None = None
    min_lr_ratio: float | None = None
    max_grad_norm: float | None = None
    wd: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)


def param_groups(model: torch.nn.Module, wd: float, lr: float | None = None, seen: set | None = None,
                 delay: int = 0) -> list[dict]:
    """Decay only matrices of Linear/Conv layers. Biases, norms, embeddings and temperatures
    (anything 0/1-D, or registered under an Embedding) are not regularised toward zero. Frozen parameters
    are left out; `seen` (ids) guards against a parameter in two groups."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    seen = set() if seen is None else seen
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in seen:
            raise ValueError(f"parameter {name} is in two parameter groups of one optimizer or in two optimizers")
        seen.add(id(p))
        if p.ndim < 2 or id(p) in no_decay_ids or "temperature" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    extra = ({} if lr is None else {"lr": lr}) | ({"delay": delay} if delay else {})
    groups = ({"params": decay, "weight_decay": wd, **extra}, {"params": no_decay, "weight_decay": 0.0, **extra})
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, lr: float, wd: float, device: torch.device,
                    betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """One AdamW over every trainable parameter of `model` (the benchmark's; stages declare OptimizerSpecs)."""
    return build_from_spec(OptimizerSpec([(model, lr)], betas=betas), wd, device)


def build_from_spec(spec: OptimizerSpec, wd: float, device: torch.device,
                    seen: set | None = None) -> torch.optim.AdamW:
    """`seen` (parameter ids) is shared by the optimizers of one stage: a parameter in two of them is an error."""
    seen = set() if seen is None else seen
    groups = [g for module, lr, *delay in spec.params for g in param_groups(module, wd, lr, seen, *delay)]
    if not groups:
        raise ValueError("an optimizer was declared over modules with no trainable parameters")
    return torch.optim.AdamW(groups, lr=spec.params[0][1], betas=spec.betas, fused=device.type == "cuda")


def lr_lambda(warmup: int, total: int, min_ratio: float, delay: int = 0):
    """Multiplier on the base lr: 0 for `delay` steps, then linear warmup to 1, then cosine to min_ratio at
    `total`."""
    def f(step: int) -> float:
        if step < delay:
            return 0.0
        step, total_ = step - delay, total - delay
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_ - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_scheduler(opt, warmup: int, total: int, min_ratio: float):
    """Warmup + cosine for every parameter group, each after its own `delay` (0 for most)."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, [lr_lambda(warmup, total, min_ratio, g.get("delay", 0)) for g in opt.param_groups])
