#!/usr/bin/env python
"""MJSynth-style word images (Jaderberg et al., the 90k-word "Synth90k" set) -> OCR manifest (CSV image,text).

    python scripts/prepare_mjsynth.py --root data/mjsynth/mnt/ramdisk/max/90kDICT32px \
        --annotation annotation_train.txt --out data/ocr/train.csv [--limit N]

The annotation file lists image paths relative to --root, one per line, optionally followed by a lexicon
index (`./2911/6/77_heretical_35885.jpg 35885`); the word is the file name's middle part, between the first
and the last underscore ("heretical"), with its case kept. Paths in the CSV are relative to its folder.
Skipped, counted and reported: malformed lines, names without a word, missing or unreadable images (MJSynth
has a few zero-byte files). --limit keeps the first N usable rows (a quick subset of the 7M training words).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_common import ConversionError, Skips, check_image, relative_to_manifest, run, write_csv  # noqa: E402


def word_of(name: str) -> str:
    """'77_heretical_35885.jpg' -> 'heretical'; '' when the name has no word between underscores."""
    stem = Path(name).stem
    first, last = stem.find("_"), stem.rfind("_")
    return stem[first + 1:last] if 0 <= first < last else ""


def convert(root: Path, annotation: str, out: Path, limit: int = 0, max_skip_fraction: float = 0.01,
            check_images: bool = True) -> dict:
    root = Path(root)
    ann = Path(annotation) if Path(annotation).is_absolute() else root / annotation
    if not ann.is_file():
        raise ConversionError(f"{ann} not found (expected an MJSynth annotation file such as annotation_train.txt "
                              f"under --root)")
    rows, skips = [], Skips()
    with open(ann, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if limit and len(rows) >= limit:
                break
            fields = line.split()
            if not fields:
                continue
            where = f"{ann}:{n}"
            word = word_of(fields[0])
            if len(fields) > 2 or not word:
                skips.add("malformed line" if len(fields) > 2 else "no word in the file name", where, fields[0])
                continue
            path = root / fields[0]
            why = check_image(path) if check_images else ("" if path.is_file() else "missing image")
            if not why and path.stat().st_size == 0:
                why = "unreadable image"
            if why:
                skips.add(why, where, str(path))
                continue
            rows.append({"image": relative_to_manifest(path, out), "text": word})
    skips.report(len(rows))
    skips.check(len(rows), max_skip_fraction)
    write_csv(out, rows, ["image", "text"])
    return {"rows": len(rows), "skipped": skips.total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path, help="the folder the annotation's paths are relative to")
    p.add_argument("--annotation", default="annotation_train.txt", help="annotation file (relative to --root)")
    p.add_argument("--out", required=True, type=Path, help="the CSV to write")
    p.add_argument("--limit", type=int, default=0, help="keep the first N usable rows (0: all)")
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    p.add_argument("--no-check-images", action="store_true", help="only test that image files exist (faster)")
    args = p.parse_args(argv)
    s = convert(args.root, args.annotation, args.out, args.limit, args.max_skip_fraction, not args.no_check_images)
    print(f"wrote {args.out}: {s['rows']} word images, {s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
