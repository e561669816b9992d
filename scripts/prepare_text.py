#!/usr/bin/env python
"""Plain text, JSONL or TinyStories-style text -> a text corpus (train.txt / val.txt, one document per line).

    python scripts/prepare_text.py --inputs data/TinyStoriesV2-GPT4-train.txt --out data/tinystories
    python scripts/prepare_text.py --inputs a.jsonl b.txt --out data/mycorpus [--field text] [--val-percent 2]

Formats (--format auto picks per file): `jsonl` (*.jsonl: one {"text": ...} object per line, --field names
the key), `endoftext` (documents separated by <|endoftext|>, as in TinyStories; chosen when the marker occurs
in the first MiB), `lines` (anything else: one document per non-blank line). Newlines inside a document
become spaces. A stable hash of each document puts --val-percent of them in val.txt, so reruns and added
files never move a document between splits. Streams: files of any size. Skipped, counted and reported
(with file:line): JSONL lines that are not JSON objects or lack the field; empty documents.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert_common import ConversionError, Skips, run  # noqa: E402
from omni.builtin.text import is_held_out  # noqa: E402

EOT = "<|endoftext|>"


def detect_format(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "jsonl"
    with open(path, encoding="utf-8", errors="replace") as f:
        return "endoftext" if EOT in f.read(1 << 20) else "lines"


def documents(path: Path, fmt: str, field: str, skips: Skips) -> Iterator[str]:
    """Yield the documents of one file, each on one line; record skips with their file:line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        if fmt == "lines":
            for line in f:
                if line.strip():
                    yield " ".join(line.split())
        elif fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    skips.add("invalid JSON", f"{path}:{n}", e.msg)
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                    skips.add(f"no string field {field!r}", f"{path}:{n}")
                    continue
                text = " ".join(obj[field].split())
                if text:
                    yield text
                else:
                    skips.add("empty document", f"{path}:{n}")
        elif fmt == "endoftext":
            cur: list[str] = []
            start = 1
            for n, line in enumerate(f, 1):
                while EOT in line:  # the marker may sit on its own line or end a line of text
                    head, line = line.split(EOT, 1)
                    cur.append(head)
                    text = " ".join(" ".join(cur).split())
                    if text:
                        yield text
                    else:
                        skips.add("empty document", f"{path}:{start}")
                    cur, start = [], n
                cur.append(line)
            text = " ".join(" ".join(cur).split())
            if text:
                yield text
        else:
            raise ConversionError(f"unknown format {fmt!r} (choose auto, lines, jsonl or endoftext)")


def convert(inputs: list[Path], out_dir: Path, fmt: str = "auto", field: str = "text", val_percent: float = 2.0,
            max_skip_fraction: float = 0.01) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skips, counts = Skips(), {"train": 0, "val": 0}
    tmp = {s: out_dir / f"{s}.txt.tmp" for s in counts}
    files = {s: open(p, "w", encoding="utf-8") for s, p in tmp.items()}
    try:
        for path in map(Path, inputs):
            if not path.is_file():
                raise ConversionError(f"{path}: no such file")
            for doc in documents(path, detect_format(path) if fmt == "auto" else fmt, field, skips):
                split = "val" if is_held_out(doc, val_percent) else "train"
                files[split].write(doc + "\n")
                counts[split] += 1
    finally:
        for f in files.values():
            f.close()
    kept = counts["train"] + counts["val"]
    skips.report(kept)
    try:
        skips.check(kept, max_skip_fraction)
    except ConversionError:
        for p in tmp.values():
            p.unlink()
        raise
    for s, p in tmp.items():
        p.replace(out_dir / f"{s}.txt")
    return {**counts, "skipped": skips.total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", required=True, nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path, help="folder for train.txt and val.txt")
    p.add_argument("--format", default="auto", choices=["auto", "lines", "jsonl", "endoftext"])
    p.add_argument("--field", default="text", help="the JSONL key holding the text")
    p.add_argument("--val-percent", type=float, default=2.0)
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    args = p.parse_args(argv)
    s = convert(args.inputs, args.out, args.format, args.field, args.val_percent, args.max_skip_fraction)
    print(f"wrote {args.out}/train.txt ({s['train']} documents) and val.txt ({s['val']}); {s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
