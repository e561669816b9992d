"""Strict JSON configs loaded into typed dataclasses.

Every stage declares a dataclass that extends `TrainConfig`; nested dataclasses (a model's dimensions, say)
become nested JSON objects. An unknown key, a wrong type or a malformed `--set` is an error that names the
key, the file and the nearest valid key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from omni.errors import UserError


class ConfigError(UserError):
    """A config file, key or --set override that is wrong; the message names the file and the key."""


@dataclass
class TrainConfig:
    """Keys every stage shares. Stage configs subclass this and add their own."""
    save_dir: str = "checkpoints/run"
    seed: int = 1337
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    batch_size: int = 16                # per rank, per micro-batch
    gradient_accumulation_steps: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1           # cosine decays to lr * min_lr_ratio
    wd: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 0                  # optimizer steps; 0 = derive from max_epochs
    max_epochs: int = 0                 # 0 = no epoch limit (max_steps must be set)
    max_grad_norm: float = 1.0          # 0 disables clipping
    use_amp: bool = True                # bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing)
    cpu_amp: bool = False               # with use_amp, bf16 autocast on CPU too, where the CPU has native bf16
                                        # (AVX512-BF16, AMX: ~10% faster steps on the demo's Stage B); else fp32
    use_compile: bool = True            # torch.compile on CUDA only; compile time does not pay off on CPU
    compile_backend: str = "inductor"   # torch.compile's backend; "aot_eager" traces the graphs and their backward
                                        # as inductor does, without generating kernels (the tests' GPU-path check)
    gpu_path: bool = False              # on the CPU, train as on a GPU: bf16 autocast (native or emulated) and
                                        # torch.compile, to check the GPU code path (scripts/gpu_check.sh --cpu)
    use_flash: bool = True              # attention via SDPA (flash / memory-efficient kernels); False = explicit math
    num_workers: int = 0
    print_freq: int = 50
    val_freq: int = 500
    checkpoint_freq: int = 1000
    keep_checkpoints: int = 3
    val_split: float = 0.0              # fraction held out when no explicit validation file is given
    max_bad_fraction: float = 0.01      # bad samples tolerated before a stage stops with an error
    max_nonfinite_steps: int = 10       # consecutive non-finite losses before training stops


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str, where: str):
    """Check `value` (parsed JSON) against annotation `tp`; return the converted value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' expects an object, got {value!r}")
        return from_dict(tp, value, where, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' expects a list, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (typing.Any,)
        return [_coerce(v, arg, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' expects an object, got {value!r}")
        return dict(value)
    if tp is typing.Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown(key: str, valid: list[str], where: str, prefix: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}: unknown config key '{prefix}{key}'{hint}")


def from_dict(cls, data: dict, where: str = "<config>", prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(key, names, where, prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    return cls(**kwargs)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings need no quotes: --set save_dir=runs/x


def apply_overrides(data: dict, cls, overrides: list[str], where: str = "--set") -> dict:
    """Apply `a.b=value` overrides to the raw dict, checking every path component against `cls`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: expected key=value, got '{item}'")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        node, node_cls = data, cls
        for i, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(node_cls)]
            if part not in names:
                raise _unknown(part, names, where, ".".join(parts[:i]) + ("." if i else ""))
            if i == len(parts) - 1:
                node[part] = _parse_value(raw)
            else:
                sub = typing.get_type_hints(node_cls)[part]
                if not dataclasses.is_dataclass(sub):
                    raise ConfigError(f"{where}: key '{'.'.join(parts[:i + 1])}' is not an object")
                node = node.setdefault(part, {})
                node_cls = sub
    return data


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    """Read JSON `path` (or start from defaults when None), apply overrides and build `cls` strictly."""
    data, where = {}, "<defaults>"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a JSON object")
    data = apply_overrides(data, cls, list(overrides), where=f"{where} (--set)" if path else "--set")
    # Drop the keys that document a file for humans ("_comment": ...), nothing else.
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return from_dict(cls, data, where)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
