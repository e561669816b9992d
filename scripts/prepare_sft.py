#!/usr/bin/env python
"""Prepared image and speech manifests -> one SFT JSONL of caption and transcription rows (a real SFT mix).

    python scripts/prepare_sft.py --images data/coco/train.jsonl --speech data/librispeech/train.csv \
        --speech data/ljspeech/train.csv --out data/sft/train.jsonl [--max-per-source 20000] [--seed 0]

Reads image-caption JSONL ({"image", "caption"}, as prepare_coco.py writes; --images, repeatable) and speech CSV
(wav,text[,speaker], as prepare_librispeech.py / prepare_ljspeech.py write; --speech, repeatable) and writes:

    {"prompt": <one of CAPTION_PROMPTS>, "answer": caption, "image": path, "task": "caption"}
    {"prompt": TRANSCRIBE_PROMPT, "answer": text, "audio": path, "task": "transcribe"[, "speaker": speaker]}

with the prompts of omni.builtin.sft and paths relative to OUT's folder. --max-per-source N keeps a random N
rows of each manifest (0: all); the caption prompts, those subsets and the order of all rows (shuffled) follow
--seed. Skipped, counted and reported per manifest: rows whose media file is missing (files are not decoded)
and speech rows with an empty transcript.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert_common import ConversionError, Skips, relative_to_manifest, run, write_jsonl  # noqa: E402
from omni.builtin.sft import CAPTION_PROMPTS, TRANSCRIBE_PROMPT  # noqa: E402
from omni.data import images as image_data, speech as speech_data  # noqa: E402
from omni.errors import UserError  # noqa: E402


def _read(reader, path: Path) -> list:
    try:
        return reader(path)
    except (FileNotFoundError, UserError) as e:
        raise ConversionError(str(e)) from None


def _caption_rows(path: Path, out: Path, rng: random.Random, skips: Skips) -> list[dict]:
    rows = []
    for n, (image, caption) in enumerate(_read(image_data.read_manifest, path), 1):
        if not image.is_file():
            skips.add("missing image", f"{path}: row {n}", str(image))
            continue
        rows.append({"prompt": rng.choice(CAPTION_PROMPTS), "answer": caption,
                     "image": relative_to_manifest(image, out), "task": "caption"})
    return rows


def _transcribe_rows(path: Path, out: Path, skips: Skips) -> list[dict]:
    rows = []
    for n, u in enumerate(_read(speech_data.read_manifest, path), 1):
        where = f"{path}: row {n}"
        if not u.text:
            skips.add("empty transcript", where)
        elif not Path(u.wav).is_file():
            skips.add("missing audio", where, u.wav)
        else:
            rows.append({"prompt": TRANSCRIBE_PROMPT, "answer": u.text, "audio": relative_to_manifest(Path(u.wav), out),
                         "task": "transcribe"} | ({"speaker": u.speaker} if u.speaker else {}))
    return rows


def convert(out: Path, images: list[Path] = (), speech: list[Path] = (), max_per_source: int = 0, seed: int = 0,
            max_skip_fraction: float = 0.01) -> dict:
    if not images and not speech:
        raise ConversionError("nothing to convert: give at least one --images JSONL or --speech CSV")
    rng, rows, skipped = random.Random(seed), [], 0
    sources = [(p, "caption") for p in images] + [(p, "transcribe") for p in speech]
    for path, task in sources:
        skips = Skips()
        got = (_caption_rows(Path(path), out, rng, skips) if task == "caption"
               else _transcribe_rows(Path(path), out, skips))
        skips.report(len(got))
        skips.check(len(got), max_skip_fraction)
        if max_per_source and len(got) > max_per_source:
            got = [got[i] for i in sorted(rng.sample(range(len(got)), max_per_source))]
        rows += got
        skipped += skips.total
    rng.shuffle(rows)
    write_jsonl(out, rows)
    return {"rows": len(rows), "caption": sum(r["task"] == "caption" for r in rows),
            "transcribe": sum(r["task"] == "transcribe" for r in rows), "skipped": skipped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", action="append", default=[], type=Path, help="an image-caption JSONL (repeatable)")
    p.add_argument("--speech", action="append", default=[], type=Path, help="a wav,text[,speaker] CSV (repeatable)")
    p.add_argument("--out", required=True, type=Path, help="the JSONL to write")
    p.add_argument("--max-per-source", type=int, default=0, help="a random subset of each manifest (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    args = p.parse_args(argv)
    s = convert(args.out, args.images, args.speech, args.max_per_source, args.seed, args.max_skip_fraction)
    print(f"wrote {args.out}: {s['rows']} rows ({s['caption']} caption, {s['transcribe']} transcribe), "
          f"{s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
