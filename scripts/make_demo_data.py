#!/usr/bin/env python
"""Build the built-in dataset offline from installed packages (SPEC §9).

    python scripts/make_demo_data.py --out data/demo [--size small|full] [--seed N] [--only text,...]

Deterministic for a given seed and size; a rerun with the same arguments finds the stamp file and does
nothing. Writes one folder per modality and a summary table beside the data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.builtin.text import MissingSource, build_text  # noqa: E402

SIZES = {
    # wordnet_docs caps the dictionary so it does not drown the Bible and the fortunes (~1/3 of its synsets)
    "small": {"wordnet_docs": 3000},
    "full": {"wordnet_docs": 40000},
}


def build_text_part(out: Path, size: str, seed: int) -> dict:
    return build_text(out / "text", max_wordnet=SIZES[size]["wordnet_docs"])


BUILDERS = {"text": build_text_part}


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
    summary = {}
    for part in parts:
        stamp = out / part / ".done.json"
        key = {"size": args.size, "seed": args.seed}
        if not args.force and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
            print(f"{part}: up to date ({stamp})")
            summary[part] = json.loads(stamp.read_text())["summary"]
            continue
        t0 = time.time()
        try:
            summary[part] = BUILDERS[part](out, args.size, args.seed)
        except MissingSource as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        stamp.write_text(json.dumps({"key": key, "summary": summary[part], "seconds": time.time() - t0}))
        print(f"{part}: built in {time.time() - t0:.1f}s")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for part, s in summary.items():
        print(f"\n[{part}]")
        for name, row in s.items():
            print(f"  {name:<12} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
