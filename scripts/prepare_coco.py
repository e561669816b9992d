#!/usr/bin/env python
"""COCO captions -> image manifest (JSONL {"image", "caption"}), referencing the images where they are.

    python scripts/prepare_coco.py --captions data/coco/annotations/captions_train2017.json \
        --images data/coco/train2017 --out data/coco/train.jsonl [--one-per-image]

Reads the annotation file's "images" ({id, file_name}) and "annotations" ({image_id, caption}). One row per
caption (COCO has ~5 per image), or only the first with --one-per-image. Captions are stripped and
single-spaced; their case is kept. Skipped, counted and reported: empty captions, captions of unknown image
ids, missing or unreadable images (each image file is checked once).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_common import ConversionError, Skips, check_image, relative_to_manifest, run, write_jsonl  # noqa: E402


def _load(path: Path) -> tuple[dict[int, str], list[dict]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} not found (expected annotations/captions_<split>.json)") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ConversionError(f"{path}: no {key!r} list: is it a COCO captions_*.json file?")
    try:
        files = {int(im["id"]): im["file_name"] for im in data["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"{path}: an entry of 'images' lacks id/file_name ({e!r})") from None
    return files, data["annotations"]


def convert(captions: Path, images: Path, out: Path, one_per_image: bool = False, max_skip_fraction: float = 0.01,
            check_images: bool = True) -> dict:
    files, anns = _load(captions)
    images, skips, rows, status, used = Path(images), Skips(), [], {}, set()
    for k, ann in enumerate(anns):
        where = f"{captions}: annotations[{k}]"
        if not isinstance(ann, dict):
            skips.add("malformed annotation", where)
            continue
        image_id, text = ann.get("image_id"), " ".join(str(ann.get("caption") or "").split())
        if not text:
            skips.add("empty caption", where)
            continue
        if image_id not in files:
            skips.add("unknown image id", where, str(image_id))
            continue
        if one_per_image and image_id in used:
            continue
        path = images / files[image_id]
        if path not in status:  # open each image once, however many captions it has
            status[path] = check_image(path) if check_images else ("" if path.exists() else "missing image")
        if status[path]:
            skips.add(status[path], where, str(path))
            continue
        used.add(image_id)
        rows.append({"image": relative_to_manifest(path, out), "caption": text})
    skips.report(len(rows))
    skips.check(len(rows), max_skip_fraction)
    write_jsonl(out, rows)
    return {"rows": len(rows), "images": len(used), "skipped": skips.total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--captions", required=True, type=Path, help="annotations/captions_<split>.json")
    p.add_argument("--images", required=True, type=Path, help="the folder of that split's images")
    p.add_argument("--out", required=True, type=Path, help="the JSONL to write")
    p.add_argument("--one-per-image", action="store_true", help="keep only each image's first caption")
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    p.add_argument("--no-check-images", action="store_true", help="only test that image files exist (faster)")
    args = p.parse_args(argv)
    s = convert(args.captions, args.images, args.out, args.one_per_image, args.max_skip_fraction,
                not args.no_check_images)
    print(f"wrote {args.out}: {s['rows']} captions of {s['images']} images, {s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
