"""Real English text for the built-in corpus: the King James Bible, WordNet glosses and examples, fortunes.

Every source is read from a Debian package installed by scripts/setup_system.sh; a missing one is an
error naming the package. Documents are one per line; a stable hash holds out whole documents of every
source for validation.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from omni.errors import UserError

WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ["fortunes", "literature", "riddles"]  # fortunes-min: the mild files


class MissingSource(UserError, RuntimeError):
    """A system package the built-in dataset reads from is not installed; the message names it."""


def _need(ok: bool, what: str, package: str) -> None:
    if not ok:
        raise MissingSource(f"{what} not found: install it with `sudo apt-get install -y {package}` "
                            f"(or run `bash scripts/setup_system.sh`)")


def kjv_documents(verses_per_doc: int = 6) -> list[str]:
    """Chapters cut into documents of a few consecutive verses."""
    _need(shutil.which("bible") is not None, "the `bible` program (King James Bible)", "bible-kjv")
    out = subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], capture_output=True, text=True, check=True).stdout
    docs, cur = [], []
    for line in out.splitlines():
        m = re.match(r"^\s+\d+\s+(.*)$", line)
        if m:
            cur.append(m.group(1).strip())
            if len(cur) == verses_per_doc:
                docs.append(" ".join(cur))
                cur = []
        elif line.strip() and cur:  # a chapter heading ends the running document
            docs.append(" ".join(cur))
            cur = []
    if cur:
        docs.append(" ".join(cur))
    return docs


def wordnet_entries() -> list[tuple[str, str, str, list[str]]]:
    """(word, part of speech, gloss, example sentences) for every synset's first word."""
    _need((WORDNET / "data.noun").exists(), "WordNet data files", "wordnet-base")
    pos_name = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
    entries = []
    for pos, name in pos_name.items():
        with open(WORDNET / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                word = re.sub(r"\(.*\)$", "", fields[4]).replace("_", " ")
                examples = re.findall(r'"([^"]+)"', gloss)
                definition = re.sub(r'"[^"]*"', "", gloss).strip().strip(";").strip()
                definition = re.sub(r"\s*;\s*;+", ";", definition).strip("; ")
                if definition:
                    entries.append((word, name, definition, [e.strip() for e in examples if e.strip()]))
    return entries


def wordnet_documents() -> list[str]:
    docs = []
    for word, pos, definition, examples in wordnet_entries():
        doc = f"{word} ({pos}): {definition}."
        if examples:
            doc += " For example: " + " ".join(e if e[-1] in ".!?" else e + "." for e in examples)
        docs.append(doc)
    return docs


def fortune_documents() -> list[str]:
    _need((FORTUNES / "fortunes").exists(), "fortune files", "fortunes-min")
    docs = []
    for name in FORTUNE_FILES:
        path = FORTUNES / name
        if not path.exists():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = " ".join(entry.split())
            if text and text != "%":
                docs.append(text)
    return docs


def is_held_out(doc: str, percent: float) -> bool:
    h = int(hashlib.sha256(doc.encode()).hexdigest()[:8], 16)
    return h % 10000 < percent * 100


def build_text(out_dir: Path, val_percent: float = 2.0, extra_train: list[str] = (),
               max_wordnet: int | None = None) -> dict:
    """Write out_dir/train.txt and out_dir/val.txt; return counts per source and split."""
    sources = {"kjv": kjv_documents(), "wordnet": wordnet_documents(), "fortunes": fortune_documents()}
    if max_wordnet is not None:  # a hash-chosen subset spans every part of speech and topic
        keep = set(sorted(sources["wordnet"], key=lambda d: hashlib.md5(d.encode()).digest())[:max_wordnet])
        sources["wordnet"] = [d for d in sources["wordnet"] if d in keep]
    train, val, summary, seen = [], [], {}, set()
    for name, docs in sources.items():
        n_train = n_val = 0
        for doc in docs:
            if doc in seen:
                continue
            seen.add(doc)
            if is_held_out(doc, val_percent):
                val.append(doc)
                n_val += 1
            else:
                train.append(doc)
                n_train += 1
        summary[name] = {"train": n_train, "val": n_val}
    train.extend(extra_train)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_lines(out_dir / "train.txt", train)
    _write_lines(out_dir / "val.txt", val)
    return summary


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(l.replace("\n", " ") + "\n" for l in lines), encoding="utf-8")
    tmp.replace(path)
