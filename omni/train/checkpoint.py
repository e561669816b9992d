"""Atomic checkpoints, newest-valid discovery, pruning, and RNG state capture (SPEC §5).

A step checkpoint is `<name>_step_<N>.pt` and loads with `torch.load(weights_only=True)`: every field is a
tensor, number, string or container of them (numpy's RNG state is stored as a tensor for that reason).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def step_checkpoints(save_dir: str | Path, name: str) -> list[tuple[int, Path]]:
    """(step, path) of `<name>_step_<N>.pt` in save_dir, newest first."""
    pattern = re.compile(rf"^{re.escape(name)}_step_(\d+)\.pt$")
    found = []
    for p in Path(save_dir).glob(f"{name}_step_*.pt"):
        m = pattern.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint or raise an error that names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torn, truncated or foreign file
        raise RuntimeError(f"checkpoint {path} is unreadable or corrupt: {type(e).__name__}: {e}") from None


def load_newest_valid(save_dir: str | Path, name: str, log=print) -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads; unreadable newer ones are reported and passed over."""
    for step, path in step_checkpoints(save_dir, name):
        try:
            state = load_checkpoint(path)
            if "model" not in state or "step" not in state:
                raise RuntimeError(f"checkpoint {path} lacks model/step entries")
            return state, path
        except Exception as e:
            log(f"WARNING: {e}; falling back to an older checkpoint")
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


def load_artifact(path: str | Path, kind: str, final_name: str, keys: tuple[str, ...]) -> dict:
    """A stage's final artifact (e.g. kind "Thinker", final_name "thinker.pt") holding `keys`, or an error
    naming the file."""
    state = load_checkpoint(path)
    for key in keys:
        if key not in state:
            raise ValueError(f"{path} is not a {kind} artifact (no '{key}' entry); step checkpoints hold "
                             f"training state, the final {final_name} is what loads here")
    return state


def load_weights(model: torch.nn.Module, weights: dict, path: str | Path) -> None:
    """Strict load: weights that do not fit the model rebuilt from the stored config are an error naming the file."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise RuntimeError(f"{path}: weights do not match the stored model config: {e}") from None
