#!/usr/bin/env python
"""LLaVA-Instruct conversations -> SFT JSONL (multi-turn "messages" rows), referencing the images where they are.

    python scripts/prepare_llava.py --json data/llava/llava_instruct_150k.json --images data/coco/train2017 \
        --out data/llava/train.jsonl [--limit 20000]

Reads a JSON list of {"id", "image": "<file under --images>" (optional), "conversations": [{"from": "human" |
"gpt" | "system", "value"}, ...]} and writes one row per conversation:

    {"messages": [{"role": "user", "content": "...", "image": "<path relative to OUT's folder>"},
                  {"role": "assistant", "content": "..."}, ...], "task": "llava", "id": "<its id>"}

Roles: human -> user, gpt -> assistant, system -> system (only as the first turn). The "<image>" placeholder
(LLaVA puts it at the start or end of a human turn, with a newline) is removed and the image attached to that
user turn; an entry with an image but no placeholder gets it on its first user turn; an entry without "image"
becomes a text-only conversation. Texts are stripped, otherwise kept (multi-line answers stay multi-line).
--limit N stops after N written rows. Skipped, counted and reported: malformed entries, turns not alternating
human/gpt, empty turns, a conversation not ending with gpt, "<image>" more than once, outside a human turn or
without an "image" key, missing or unreadable images (each image file is checked once).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_common import ConversionError, Skips, check_image, relative_to_manifest, run, write_jsonl  # noqa: E402

PLACEHOLDER = "<image>"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def _load(path: Path) -> list:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} not found (expected a LLaVA-Instruct JSON, e.g. llava_instruct_150k.json)") \
            from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise ConversionError(f"{path}: not a JSON list of conversations: is it a LLaVA-Instruct file?")
    return data


def _messages(entry) -> tuple[list[dict], int | None, str]:
    """(messages, index of the user turn the image belongs to or None, '') or ([], None, reason to skip)."""
    turns = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return [], None, "malformed entry"
    messages, where_image = [], []
    for t in turns:
        role, value = ROLES.get(t.get("from")), t.get("value")
        if not isinstance(value, str):
            return [], None, "malformed entry"
        expected = ("system", "user") if not messages else ("assistant" if messages[-1]["role"] == "user" else "user",)
        if role not in expected:
            return [], None, "turns not alternating human/gpt"
        if PLACEHOLDER in value:
            where_image += [len(messages)] * value.count(PLACEHOLDER)
        text = value.replace(PLACEHOLDER, "").strip()
        if not text:
            return [], None, "empty turn"
        messages.append({"role": role, "content": text})
    if not messages or messages[-1]["role"] != "assistant":
        return [], None, "conversation not ending with gpt"
    if len(where_image) > 1:
        return [], None, "<image> more than once"
    if where_image and messages[where_image[0]]["role"] != "user":
        return [], None, "<image> outside a human turn"
    if not entry.get("image"):
        return (([], None, "<image> without an image") if where_image else (messages, None, ""))
    first_user = 1 if messages[0]["role"] == "system" else 0
    return messages, (where_image[0] if where_image else first_user), ""


def convert(json_path: Path, images: Path, out: Path, limit: int = 0, max_skip_fraction: float = 0.01,
            check_images: bool = True) -> dict:
    data = _load(json_path)
    images, skips, rows, status = Path(images), Skips(), [], {}
    if not images.is_dir():
        raise ConversionError(f"{images} is not a folder (expected the images the JSON's 'image' names)")
    for k, entry in enumerate(data):
        if limit and len(rows) >= limit:
            break
        where = f"{json_path}: [{k}]"
        messages, turn, why = _messages(entry)
        if why:
            skips.add(why, where, str(entry.get("id", "")) if isinstance(entry, dict) else "")
            continue
        if turn is not None:
            path = images / str(entry["image"])
            if path not in status:  # open each image once, however many conversations use it
                status[path] = check_image(path) if check_images else ("" if path.is_file() else "missing image")
            if status[path]:
                skips.add(status[path], where, str(path))
                continue
            messages[turn]["image"] = relative_to_manifest(path, out)
        row = {"messages": messages, "task": "llava"}
        if entry.get("id") is not None:
            row["id"] = str(entry["id"])
        rows.append(row)
    skips.report(len(rows))
    skips.check(len(rows), max_skip_fraction)
    write_jsonl(out, rows)
    return {"rows": len(rows), "with_image": sum(any("image" in m for m in r["messages"]) for r in rows),
            "skipped": skips.total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, type=Path, help="a LLaVA-Instruct JSON, e.g. llava_instruct_150k.json")
    p.add_argument("--images", required=True, type=Path, help="the folder the entries' 'image' paths are under")
    p.add_argument("--out", required=True, type=Path, help="the JSONL to write")
    p.add_argument("--limit", type=int, default=0, help="stop after this many rows (0: all)")
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    p.add_argument("--no-check-images", action="store_true", help="only test that image files exist (faster)")
    args = p.parse_args(argv)
    s = convert(args.json, args.images, args.out, args.limit, args.max_skip_fraction, not args.no_check_images)
    print(f"wrote {args.out}: {s['rows']} conversations ({s['with_image']} with an image), {s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
