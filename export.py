"""Export a trained μOmni to safetensors: one folder that infer_chat.py loads with the `omni` package alone.

    python export.py --omni_ckpt runs/demo/omni_sft --output_dir merged_model \\
        [--talker_ckpt runs/demo/talker] [--vocoder_ckpt runs/demo/vocoder] [--ocr_ckpt runs/demo/ocr] \\
        [--dtype float32|bfloat16|float16]

The omni artifact (Stage E) already holds the tuned Thinker, both projectors and the encoders it was trained
with; --thinker_ckpt / --vision_ckpt / --audio_ckpt only check that they are the artifacts it was trained
from (by sha256: a different file is an error). Speech output needs a Talker (Stage D's save_dir: talker.pt +
rvq_codec.pt) and reading text an OCR model: without their flags, the ones in the omni run's runs folder are
taken (a Talker trained on another Thinker's reading is passed over; the vocoder is the one beside the Talker
or the one trained on its codec), and what was taken from where is printed; --only_given takes only the
parts the flags name.
The layout (omni/export.py): manifest.json (every file's sha256, the sources), tokenizer.model,
chat_template.json, and a folder per component (omni, talker, rvq_codec, vocoder, ocr) with model.safetensors
and config.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from omni.artifacts import KINDS, check_entries, check_talker_codec, read_checkpoint
from omni.chat import ChatTemplate
from omni.errors import ArtifactError, UserError, exit_on_user_error
from omni.export import DTYPES, file_sha256, write_component, write_manifest
from omni.models.omni import OmniConfig


def _artifact_file(path: str, kind: str) -> Path:
    p = Path(path)
    return p / KINDS[kind].filename if p.is_dir() else p


def _read(path: Path, kind: str, flag: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{flag}: {path} not found")
    state = read_checkpoint(path)
    check_entries(state, path)
    if state["kind"] != kind:
        raise ArtifactError(f"{flag}: {path} is a {state['kind']} artifact, not a {kind} ({KINDS[kind].filename})")
    return state


def _recorded(path: Path, key: str) -> Path | None:
    """The artifact path an artifact's training config recorded under `key` (a file, or the folder's artifact
    file), resolved from the current folder; None when it recorded none."""
    given = (read_checkpoint(path).get("config") or {}).get(key) or ""
    return Path(given).resolve() if given else None


def _same(recorded: Path | None, target: Path) -> bool:
    return recorded is not None and target.resolve() in (recorded, recorded / target.name)


def find_parts(omni_file: Path, args) -> dict[str, tuple[Path, str]]:
    """The Talker (with its codec), vocoder and OCR model the runs folder of `omni_file` holds beside it, for
    the parts no flag names: {kind: (path, why)}. A Talker trained on another Thinker's reading is passed over
    (its conditioning would not match), a vocoder must voice the found codec's mels, and where two candidates
    fit equally, none is taken and the flag to give is said."""
    root, found = omni_file.resolve().parent.parent, {}

    def candidates(kind):
        return sorted(root.glob(f"*/{KINDS[kind].filename}"))

    if not args.talker_ckpt:
        fits = []
        for t in candidates("talker"):
            thinker = _recorded(t, "thinker_ckpt")
            if (t.parent / KINDS["rvq_codec"].filename).exists() and (thinker is None or _same(thinker, omni_file)):
                fits.append(t)
        if len(fits) == 1:
            found["talker"] = (fits[0], "found beside the omni run")
        elif fits:
            print(f"several Talkers fit {omni_file} ({', '.join(map(str, fits))}): give --talker_ckpt",
                  file=sys.stderr)
    talker = _artifact_file(args.talker_ckpt, "talker") if args.talker_ckpt else found.get("talker", (None,))[0]
    if not args.vocoder_ckpt and talker is not None:
        codec = talker.parent / KINDS["rvq_codec"].filename
        beside = talker.parent / KINDS["vocoder"].filename
        fits = [beside] if beside.exists() else [v for v in candidates("vocoder")
                                                   if _same(_recorded(v, "codec_ckpt"), codec)]
        if len(fits) == 1:
            found["vocoder"] = (fits[0], "found: it voices that Talker's codec")
        elif fits:
            print(f"several vocoders voice {codec} ({', '.join(map(str, fits))}): give --vocoder_ckpt",
                  file=sys.stderr)
    if not args.ocr_ckpt:
        fits = candidates("ocr")
        if len(fits) == 1:
            found["ocr"] = (fits[0], "found beside the omni run")
        elif fits:
            print(f"several OCR models beside {omni_file} ({', '.join(map(str, fits))}): give --ocr_ckpt",
                  file=sys.stderr)
    return found


def export(args) -> dict:
    out = Path(args.output_dir)
    parts: dict[str, Path] = {"omni": _artifact_file(args.omni_ckpt, "omni")}
    why = {kind: "given" for kind in ("omni", "talker", "vocoder", "ocr") if getattr(args, f"{kind}_ckpt")}
    if parts["omni"].exists() and not args.only_given:
        for kind, (path, reason) in find_parts(parts["omni"], args).items():
            setattr(args, f"{kind}_ckpt", str(path))
            why[kind] = reason
    if args.talker_ckpt:
        parts["talker"] = _artifact_file(args.talker_ckpt, "talker")
        parts["rvq_codec"] = parts["talker"].parent / KINDS["rvq_codec"].filename
        beside = parts["talker"].parent / KINDS["vocoder"].filename
        if not args.vocoder_ckpt and beside.exists():
            parts["vocoder"] = beside
    if args.vocoder_ckpt:
        if not args.talker_ckpt:
            raise UserError("--vocoder_ckpt voices the Talker's speech: give --talker_ckpt too")
        parts["vocoder"] = _artifact_file(args.vocoder_ckpt, "vocoder")
    if args.ocr_ckpt:
        parts["ocr"] = _artifact_file(args.ocr_ckpt, "ocr")
    flag = {"omni": "--omni_ckpt", "talker": "--talker_ckpt", "rvq_codec": "--talker_ckpt (its rvq_codec.pt)",
            "vocoder": "--vocoder_ckpt", "ocr": "--ocr_ckpt"}
    states = {kind: _read(p, kind, flag[kind]) for kind, p in parts.items()}
    for kind, p in parts.items():
        print(f"{kind}: {p} ({why.get(kind, 'beside the Talker')})", file=sys.stderr)

    recorded = states["omni"]["sources"]   # what Stage E started from: checked, never replaced
    for given, kind in ((args.thinker_ckpt, "thinker"), (args.vision_ckpt, "vision"), (args.audio_ckpt, "audio_enc")):
        if given:
            f = _artifact_file(given, kind)
            if kind not in recorded:
                raise UserError(f"{parts['omni']} was trained without a {kind} part; drop the flag for {f}")
            if file_sha256(f) != recorded[kind]["sha256"]:
                raise UserError(f"{f} is not the {kind} artifact {parts['omni']} was trained from "
                                 f"({recorded[kind]['path']}); its weights are inside the omni artifact already")
    if "talker" in states:
        check_talker_codec(states["talker"]["codec_config"], states["rvq_codec"]["model_config"], parts["talker"],
                           parts["rvq_codec"])

    if out.exists() and not (out.is_dir() and ((out / "manifest.json").exists() or not any(out.iterdir()))):
        raise UserError(f"{out} exists and is not an export; choose another --output_dir")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for kind, state in states.items():
        write_component(state, tmp / kind, args.dtype)
    from omni.tokenizer import Tokenizer
    tok = Tokenizer(model_proto=states["omni"]["tokenizer"].numpy().tobytes())
    layout = states["omni"]["model_config"].get("chat_layout", OmniConfig.chat_layout)  # older artifacts: none
    (tmp / "chat_template.json").write_text(json.dumps(ChatTemplate(tok, layout).describe(), indent=1))
    sources = {kind: {"path": str(p), "sha256": file_sha256(p)} for kind, p in parts.items()}
    sources["omni"]["trained_from"] = recorded
    manifest = write_manifest(tmp, args.dtype, sources)
    # the new folder appears whole or not at all; an earlier export is set aside until it has
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export a trained μOmni to safetensors (a folder for infer_chat.py).")
    p.add_argument("--omni_ckpt", required=True, help="Stage E's save_dir or omni_final.pt")
    p.add_argument("--output_dir", required=True, help="the export folder to write (replaced if it is an export)")
    p.add_argument("--talker_ckpt", help="Stage D's save_dir (talker.pt + rvq_codec.pt): spoken replies")
    p.add_argument("--vocoder_ckpt", help="hifigan.pt or its folder (default: the one beside the Talker, if any)")
    p.add_argument("--ocr_ckpt", help="ocr.pt or its folder: reading text in images (infer_chat --ocr)")
    p.add_argument("--thinker_ckpt", help="check: the Stage A artifact the omni model was trained from")
    p.add_argument("--vision_ckpt", help="check: the Stage C artifact the omni model was trained from")
    p.add_argument("--audio_ckpt", help="check: the Stage B artifact the omni model was trained from")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--only_given", action="store_true",
                   help="export only the parts named by flags (default: also the Talker, vocoder and OCR model "
                        "found beside the omni run)")
    args = p.parse_args(argv)
    with exit_on_user_error():
        manifest = export(args)
    size = sum((Path(args.output_dir) / f).stat().st_size for f in manifest["files"])
    kinds = manifest["sources"]
    modes = ["text", "image", "speech in"] + (["speech out (" + ("vocoder" if "vocoder" in kinds else
                                                                "Griffin-Lim") + ")"] if "talker" in kinds else [])
    modes += ["OCR"] if "ocr" in kinds else []
    print(f"exported {', '.join(kinds)} to {args.output_dir} ({len(manifest['files'])} files, "
          f"{size / 1e6:.1f} MB, {args.dtype}); modes: {', '.join(modes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
