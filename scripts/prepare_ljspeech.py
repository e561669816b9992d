#!/usr/bin/env python
"""LJSpeech -> TTS manifests (CSV wav,text,speaker), with a held-out validation split.

    python scripts/prepare_ljspeech.py --root data/LJSpeech-1.1 --out data/ljspeech [--val 100]

Layout read (https://keithito.com/LJ-Speech-Dataset/): <root>/metadata.csv, one "id|raw text|normalized
text" line per clip (no header; `|` separated), and <root>/wavs/<id>.wav (22.05 kHz mono; loaders resample). Writes <out>/train.csv and <out>/val.csv (the last --val clips in id order: whole chapters of the
book stay unseen). Text: the normalized column (numbers spelled out), lower-cased to letters, apostrophe and
space. Skipped, counted and reported: malformed lines, empty text, missing or unreadable audio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert_common import ConversionError, Skips, relative_to_manifest, run, write_csv  # noqa: E402
from omni.builtin.speech import normalize_transcript  # noqa: E402


def convert(root: Path, out_dir: Path, val: int = 100, max_skip_fraction: float = 0.01,
            check_audio: bool = True) -> dict:
    root, out_dir, skips, rows = Path(root), Path(out_dir), Skips(), []
    meta = root / "metadata.csv"
    if not meta.exists():
        raise ConversionError(f"{meta} not found: --root must be the LJSpeech-1.1 folder (metadata.csv + wavs/)")
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{meta}:{n}"
        fields = line.split("|")
        if len(fields) < 2:
            skips.add("malformed line", where, line[:60])
            continue
        uid = fields[0].strip()
        text = normalize_transcript(fields[2] if len(fields) > 2 and fields[2].strip() else fields[1])
        audio = root / "wavs" / f"{uid}.wav"
        if not text:
            skips.add("empty text", where, uid)
            continue
        if not audio.exists():
            skips.add("missing audio", where, audio.name)
            continue
        if check_audio:
            try:
                if sf.info(audio).frames == 0:
                    raise RuntimeError("no samples")
            except Exception as e:  # soundfile raises several types for broken files
                skips.add("unreadable audio", where, f"{audio.name}: {str(e).splitlines()[0][:80]}")
                continue
        rows.append({"wav": audio, "text": text, "speaker": "ljspeech"})
    skips.report(len(rows))
    skips.check(len(rows), max_skip_fraction)
    rows.sort(key=lambda r: r["wav"].name)
    n_val = min(val, len(rows) // 2)
    splits = {"train": rows[:len(rows) - n_val], "val": rows[len(rows) - n_val:]}
    for name, rs in splits.items():
        manifest = out_dir / f"{name}.csv"
        write_csv(manifest, [{**r, "wav": relative_to_manifest(r["wav"], manifest)} for r in rs],
                  ["wav", "text", "speaker"])
    return {"train": len(splits["train"]), "val": len(splits["val"]), "skipped": skips.total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path, help="the LJSpeech-1.1 folder")
    p.add_argument("--out", required=True, type=Path, help="folder for train.csv and val.csv")
    p.add_argument("--val", type=int, default=100, help="clips held out for validation")
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    p.add_argument("--no-check-audio", action="store_true", help="skip opening every WAV (faster)")
    args = p.parse_args(argv)
    s = convert(args.root, args.out, args.val, args.max_skip_fraction, not args.no_check_audio)
    print(f"wrote {args.out}/train.csv ({s['train']}) and val.csv ({s['val']}); {s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
