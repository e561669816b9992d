"""Step checkpoints: newest-valid discovery, pruning, and RNG state capture; atomic writes come
from omni.artifacts.

A step checkpoint is `<name>_step_<N>.pt` and loads with `torch.load(weights_only=True)`: every field is a
tensor, number, string or container of them (numpy's RNG state is stored as a tensor for that reason).
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from omni.artifacts import atomic_save, read_checkpoint  # noqa: F401  (the engine saves through this module)
from omni.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A save_dir whose checkpoints cannot be used: the run stops with this one line, not a traceback."""


def step_checkpoints(save_dir: str | Path, name: str) -> list[tuple[int, Path]]:
    """(step, path) of `<name>_step_<N>.pt` in save_dir, newest first."""
    pattern = re.compile(rf"^{re.escape(name)}_step_(\d+)\.pt$")
    found = []
    for p in Path(save_dir).glob(f"{name}_step_*.pt"):
        m = pattern.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def load_newest_valid(save_dir: str | Path, name: str, log=print) -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads; unreadable newer ones are reported and passed over. (None, None) when
    there is none; when there are some and none of them loads, an error: starting again at step 0 would
    silently throw the run away."""
    found = step_checkpoints(save_dir, name)
    for step, path in found:
        try:
            state = read_checkpoint(path)
            missing = [k for k in ("model", "step", "optimizers", "schedulers", "rng") if k not in state]
            if missing:
                raise RuntimeError(f"checkpoint {path} lacks the entries {missing} (written by another version?)")
            return state, path
        except Exception as e:
            log(f"WARNING: {e}; falling back to an older checkpoint")
    if found:
        raise CheckpointError(f"none of the {len(found)} step checkpoints in {save_dir} could be read "
                           f"({', '.join(p.name for _, p in found)}); move them away to keep them, or rerun "
                           f"with --fresh to start over")
    return None, None


def prune(save_dir: str | Path, name: str, keep: int) -> None:
    if keep <= 0:
        return
    for _, path in step_checkpoints(save_dir, name)[keep:]:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
