"""Exported models: final artifacts as safetensors + JSON, loadable with the `omni` package alone.

An export folder (export.py writes it):

    merged_model/
      manifest.json            {"format", "dtype", "files": {relative path: sha256}, "sources": {component: ...}}
      tokenizer.model          the Thinker's SentencePiece model (shared by the components that need it)
      chat_template.json       the chat template's markers and turn layout (omni.chat)
      omni/model.safetensors   one folder per component, named by its artifact kind (omni, talker, rvq_codec,
      omni/config.json         vocoder, ocr): the weights, and every other entry of the artifact as JSON
      talker/...

A component folder holds exactly what the artifact (omni.artifacts) held: `read_component` turns it back into
the same dict, so `load_artifact("merged_model/omni")` (or `load_artifact("merged_model", "omni")`) builds
the model through the one loader every stage's artifact goes through. Every file is checked against the
manifest's sha256 before it is used.

Nothing here imports the rest of omni (but its error types): omni.artifacts loads exported components through this module.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omni.errors import ArtifactError, UserError

EXPORT_FORMAT = 1
MANIFEST, WEIGHTS, CONFIG, TOKENIZER = "manifest.json", "model.safetensors", "config.json", "tokenizer.model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (manifests, artifact sources, token caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_component(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def write_component(state: dict, out_dir: Path, dtype: str = "float32") -> list[Path]:
    """An artifact dict (omni.artifacts) → out_dir/model.safetensors + out_dir/config.json (+ the tokenizer,
    as tokenizer.model in out_dir's parent). Floating weights are cast to `dtype`; tied weights are written
    once and recorded. Returns the files written."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, tied, seen = {}, {}, {}
    for name, t in state["model"].items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach().cpu()
        tensors[name] = (t.to(DTYPES[dtype]) if t.is_floating_point() else t).contiguous()
    written = [out_dir / WEIGHTS, out_dir / CONFIG]
    save_file(tensors, str(written[0]), metadata={"format": str(EXPORT_FORMAT), "kind": state["kind"]})
    config = {k: v for k, v in state.items() if k not in ("model", "tokenizer")}
    config["tied"] = tied
    if "tokenizer" in state:
        tok = out_dir.parent / TOKENIZER
        data = state["tokenizer"].numpy().tobytes()
        if tok.exists() and tok.read_bytes() != data:
            raise ArtifactError(f"{tok} already holds another tokenizer than the {state['kind']} artifact's")
        tok.write_bytes(data)
        config["tokenizer"] = f"../{TOKENIZER}"
        written.append(tok)
    written[1].write_text(json.dumps(config, indent=1))
    return written


def read_component(path: Path) -> dict:
    """A component folder back as its artifact dict, after checking its files against the export's manifest."""
    path = Path(path)
    config = json.loads((path / CONFIG).read_text())
    files = [path / WEIGHTS, path / CONFIG] + ([path / config["tokenizer"]] if "tokenizer" in config else [])
    verify(path.parent, files)
    state = dict(config)
    tied = state.pop("tied", {})
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as e:  # a torn or foreign file
        raise ArtifactError(f"{path / WEIGHTS} is unreadable: {type(e).__name__}: {e}") from None
    for name, source in tied.items():
        weights[name] = weights[source]
    state["model"] = weights
    if "tokenizer" in config:
        state["tokenizer"] = torch.frombuffer(bytearray((path / config["tokenizer"]).read_bytes()), dtype=torch.uint8)
    return state


def verify(root: Path, files: list[Path]) -> None:
    """Each file's sha256 must be the one root/manifest.json records: a changed, missing or unlisted file is an
    error naming it."""
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: {root} is not a complete export (export.py writes it)")
    recorded = json.loads(manifest_path.read_text())["files"]
    for f in files:
        rel = f.resolve().relative_to(root.resolve()).as_posix()
        if rel not in recorded:
            raise ArtifactError(f"{f} is not listed in {manifest_path}")
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing from the export {root}")
        if file_sha256(f) != recorded[rel]:
            raise ArtifactError(f"checksum mismatch: {f} is not the file {manifest_path} records (changed or corrupt)")


def write_manifest(root: Path, dtype: str, sources: dict) -> dict:
    """manifest.json over every file under root (except itself)."""
    files = {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = {"format": EXPORT_FORMAT, "dtype": dtype, "files": files, "sources": sources}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
