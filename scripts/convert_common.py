"""What the dataset converters (scripts/prepare_*.py) share: skip accounting and atomic manifest writers.

A converter never drops a sample silently: every skip is counted by reason, the first few are shown with
their file (and line), and more than `max_skip_fraction` of the input stops the conversion with an error,
because a dataset that is mostly unreadable is a wrong path or a broken download, not noise.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the omni package, for every converter

from omni.errors import UserError, exit_on_user_error  # noqa: E402


class ConversionError(UserError, RuntimeError):
    """Input a converter cannot use: a wrong folder, a missing file, a dataset mostly unreadable."""


class Skips:
    """Counts skipped samples by reason; keeps a few examples ("<file>:<line>: <why>") for the report."""

    def __init__(self, show: int = 5):
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.show = show

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.show:
            self.examples.append(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, kept: int, out=None) -> None:
        if not self.total:
            return
        out = out or sys.stderr  # looked up at call time, so a redirected stderr is honoured
        reasons = ", ".join(f"{n} {r}" for r, n in self.counts.most_common())
        print(f"skipped {self.total} of {kept + self.total} samples: {reasons}", file=out)
        for e in self.examples:
            print(f"  e.g. {e}", file=out)

    def check(self, kept: int, max_fraction: float) -> None:
        """Raise when the skipped share exceeds max_fraction (or nothing at all was kept)."""
        seen = kept + self.total
        if kept == 0:
            raise ConversionError(f"no usable samples ({self.total} skipped: {dict(self.counts)}); "
                                  f"first problems: {self.examples}")
        if self.total / seen > max_fraction:
            raise ConversionError(f"{self.total} of {seen} samples skipped ({dict(self.counts)}), more than "
                                  f"--max-skip-fraction {max_fraction}; first problems: {self.examples}")


def check_image(path: Path) -> str:
    """'' when the image file opens, else the reason to skip it ("missing image", "unreadable image")."""
    from PIL import Image
    if not Path(path).is_file():
        return "missing image"
    try:
        with Image.open(path) as im:
            im.verify()
        return ""
    except Exception:  # PIL raises several types for broken files
        return "unreadable image"


def relative_to_manifest(path: Path, manifest: Path) -> str:
    """Paths in a manifest are relative to its folder, so the data can move with it."""
    return os.path.relpath(Path(path).resolve(), Path(manifest).resolve().parent)


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run(main) -> None:
    """Entry point: a user error (a ConversionError, a missing file) is a one-line error and exit status 1,
    not a traceback; any other exception keeps its traceback."""
    with exit_on_user_error():
        sys.exit(main())
