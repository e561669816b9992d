#!/usr/bin/env python
"""Build the built-in dataset offline from installed packages.

    python scripts/make_demo_data.py --out data/demo [--size small|full] [--seed N] [--only text,...]

Parts (one folder each under --out): text, asr, tts, images, sft, ocr; see
README "Data" for their splits. Deterministic for a given seed and size (each part draws from its own
generator, so --only gives the same data as a full build); a rerun with the same arguments finds each
part's stamp file and does nothing. Speech is synthesized on both cores. The summary table (items, hours of
audio and voices per split) is printed and written to <out>/summary.md (and summary.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.builtin import world  # noqa: E402
from omni.builtin.images import build_images  # noqa: E402
from omni.builtin.ocr import build_ocr  # noqa: E402
from omni.builtin.sft import build_sft  # noqa: E402
from omni.builtin.spoken import build_asr, build_tts  # noqa: E402
from omni.builtin.text import MissingSource, build_text  # noqa: E402

SIZES = {
    # wordnet_docs caps the dictionary so it does not drown the Bible and the fortunes (~1/3 of its synsets);
    # world_docs: scene documents (caption + questions + answers) added to the text corpus (~10% of its bytes:
    # enough for world perplexity far below 10, little enough to leave real English its bits per byte)
    "small": {"wordnet_docs": 3000, "world_docs": 1000, "world_val_docs": 100},
    "full": {"wordnet_docs": 40000, "world_docs": 6000, "world_val_docs": 500},
}
WORKERS = 2  # speech synthesis processes: both cores of the demo machine
# Part of every part's stamp: bump a part's number when its builder's output changes, so old builds are redone.
# asr/sft 4: flite voices really get a fifth of the utterances (one draw per utterance), at varied tempo.
# asr/sft 5: repeatable sox dither (-R): two builds of one seed now write the same wav bytes.
# asr/sft 6: val_voices (espeak variants held out of training in every accent): asr val_voices_{world,english};
#   sft val spoken by them and a new sft test by the test voices.
# sft 7: dialogue rows in the multi-turn "messages" form; transcribe rows say their "source" (world / english).
# sft 8: training transcribes 2000 sentences (3/4 world, was 600, 1/2) and every question recording.
# images 4: test_world, other held-out scenes (Stage C now reports on them, and chooses on val_world).
# ocr 1: rendered lines in 8 font families (Lato held out for test_font).
# sft 9: val and test ask about 300 scenes (was 60) and hold 400 spoken questions (was 100): ~80 rows a task.
# images 7: a third hard negative per training scene with two shapes or more: two objects' shapes swapped.
# asr/sft 7: val_voices are a whole accent (Scottish) held out of training and test, as the test accent is.
# ocr 2: lines of 1-64 characters (was 28) in 16 families with their styles; val_long / test_long (40-64),
#   val_font (Roboto Slab) and test_font (Charis SIL), neither a near twin of a training family (Lato now trains).
PART_VERSIONS = {"text": 3, "asr": 7, "tts": 5, "images": 7, "sft": 10, "ocr": 2}


def part_rng(seed: int, part: str) -> np.random.Generator:
    """One generator per part, so building one part alone (--only) gives the same data as a full build."""
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def build_text_part(out: Path, size: str, seed: int) -> dict:
    """KJV, WordNet, fortunes + world documents of training scenes; held-out scenes -> world_val.txt."""
    rng, sz = part_rng(seed, "text"), SIZES[size]
    train = [world.document(world.sample_split_scene(rng, False), rng) for _ in range(sz["world_docs"])]
    val = [world.document(world.sample_split_scene(rng, True), rng) for _ in range(sz["world_val_docs"])]
    summary = build_text(out / "text", max_wordnet=sz["wordnet_docs"], extra_train=train)
    (out / "text" / "world_val.txt").write_text("".join(d + "\n" for d in val), encoding="utf-8")
    summary["world"] = {"train": len(train), "val": len(val)}
    return summary


def build_asr_part(out: Path, size: str, seed: int) -> dict:
    return build_asr(out / "asr", size, part_rng(seed, "asr"), workers=WORKERS)


def build_tts_part(out: Path, size: str, seed: int) -> dict:
    return build_tts(out / "tts", size, part_rng(seed, "tts"), workers=WORKERS)


def build_images_part(out: Path, size: str, seed: int) -> dict:
    return build_images(out / "images", size, part_rng(seed, "images"))


def build_sft_part(out: Path, size: str, seed: int) -> dict:
    return build_sft(out / "sft", size, part_rng(seed, "sft"), workers=WORKERS)


def build_ocr_part(out: Path, size: str, seed: int) -> dict:
    return build_ocr(out / "ocr", size, part_rng(seed, "ocr"), workers=WORKERS)


# Each part writes data/demo/<part>/ and returns {split: {column: value}} for the summary table.
BUILDERS = {
    "text": build_text_part,
    "asr": build_asr_part,
    "tts": build_tts_part,
    "images": build_images_part,
    "sft": build_sft_part,
    "ocr": build_ocr_part,
}


def summary_markdown(summary: dict, seconds: dict) -> str:
    """One table per part: a row per split, a column per counter (items, hours of audio, voices, ...)."""
    lines = ["# Built-in dataset summary", ""]
    for part, rows in summary.items():
        cols = []
        for row in rows.values():
            cols += [k for k in row if k not in cols]
        took = f" (built in {seconds[part]:.0f} s)" if seconds.get(part) is not None else ""
        lines += [f"## {part}{took}", "", "| split | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for name, row in rows.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/demo")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help=f"comma-separated parts of {','.join(BUILDERS)}")
    p.add_argument("--force", action="store_true", help="rebuild even when the stamp says it is done")
    args = p.parse_args(argv)
    out = Path(args.out)
    parts = [s for s in args.only.split(",") if s] or list(BUILDERS)
    unknown = [s for s in parts if s not in BUILDERS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {list(BUILDERS)}")
    summary, seconds = {}, {}
    for part in BUILDERS:  # parts not asked for keep their lines in the summary
        stamp = out / part / ".done.json"
        if part not in parts and stamp.exists():
            done = json.loads(stamp.read_text())
            summary[part], seconds[part] = done["summary"], done.get("seconds")
    for part in parts:
        stamp = out / part / ".done.json"
        key = {"size": args.size, "seed": args.seed, "version": PART_VERSIONS[part]}
        if not args.force and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
            print(f"{part}: up to date ({stamp})")
            done = json.loads(stamp.read_text())
            summary[part], seconds[part] = done["summary"], done.get("seconds")
            continue
        t0 = time.time()
        (out / part).mkdir(parents=True, exist_ok=True)
        try:
            summary[part] = BUILDERS[part](out, args.size, args.seed)
        except MissingSource as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        seconds[part] = time.time() - t0
        stamp.write_text(json.dumps({"key": key, "summary": summary[part], "seconds": seconds[part]}))
        print(f"{part}: built in {seconds[part]:.1f}s")
    summary = {part: summary[part] for part in BUILDERS if part in summary}  # in building order
    seconds = {part: seconds.get(part) for part in summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = summary_markdown(summary, seconds)
    (out / "summary.md").write_text(table, encoding="utf-8")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
