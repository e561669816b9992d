#!/usr/bin/env python
"""LibriSpeech -> ASR manifest (CSV wav,text,speaker), referencing the FLAC files where they are.

    python scripts/prepare_librispeech.py --root data/LibriSpeech/train-clean-100 --out data/librispeech/train.csv

Layout read (as downloaded from https://www.openslr.org/12): <root>/<speaker>/<chapter>/ holding
<speaker>-<chapter>.trans.txt ("<utterance-id> <TRANSCRIPT>" per line) and <utterance-id>.flac (16 kHz).
--root may also be the LibriSpeech folder above several subsets. Transcripts are lower-cased to letters,
apostrophe and space. Skipped, counted and reported: a transcript line without text or without its audio,
an unreadable FLAC, audio without a transcript line.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert_common import ConversionError, Skips, relative_to_manifest, run, write_csv  # noqa: E402
from omni.builtin.speech import normalize_transcript  # noqa: E402


def convert(root: Path, out: Path, max_skip_fraction: float = 0.01, check_audio: bool = True) -> dict:
    root, skips, rows = Path(root), Skips(), []
    if not root.is_dir():
        raise ConversionError(f"{root} is not a folder (expected LibriSpeech/<subset>/<speaker>/<chapter>/)")
    trans_files = sorted(root.rglob("*.trans.txt"))
    if not trans_files:
        raise ConversionError(f"no *.trans.txt transcript files under {root}: is it a LibriSpeech subset?")
    for trans in trans_files:
        listed = set()
        for n, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            listed.add(uid)
            where = f"{trans}:{n}"
            text = normalize_transcript(text)
            audio = trans.parent / f"{uid}.flac"
            if not re.fullmatch(r"\d+-\d+-\d+", uid):
                skips.add("malformed line", where, line[:60])
            elif not text:
                skips.add("empty transcript", where, uid)
            elif not audio.exists():
                skips.add("missing audio", where, audio.name)
            else:
                if check_audio:
                    try:
                        if sf.info(audio).frames == 0:
                            raise RuntimeError("no samples")
                    except Exception as e:  # soundfile raises several types for broken files
                        skips.add("unreadable audio", str(audio), str(e).splitlines()[0][:80])
                        continue
                rows.append({"wav": relative_to_manifest(audio, out), "text": text,
                             "speaker": "librispeech:" + uid.split("-")[0]})
        for flac in sorted(trans.parent.glob("*.flac")):
            if flac.stem not in listed:
                skips.add("no transcript", str(flac))
    skips.report(len(rows))
    skips.check(len(rows), max_skip_fraction)
    write_csv(out, rows, ["wav", "text", "speaker"])
    return {"rows": len(rows), "skipped": skips.total, "speakers": len({r["speaker"] for r in rows})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path, help="a LibriSpeech subset folder (or LibriSpeech/)")
    p.add_argument("--out", required=True, type=Path, help="the CSV to write")
    p.add_argument("--max-skip-fraction", type=float, default=0.01)
    p.add_argument("--no-check-audio", action="store_true", help="skip opening every FLAC (faster)")
    args = p.parse_args(argv)
    s = convert(args.root, args.out, args.max_skip_fraction, not args.no_check_audio)
    print(f"wrote {args.out}: {s['rows']} utterances, {s['speakers']} speakers, {s['skipped']} skipped")
    return 0


if __name__ == "__main__":
    run(main)
