#!/usr/bin/env python
"""Ask an exported μOmni one example of every chat mode through infer_chat.py, from a copy of the export in
another folder (only the export and the `omni` package are used), and save what it answered.

    python scripts/demo_chat.py --export runs/demo/export --sft data/demo/sft/test.jsonl \\
        [--ocr data/demo/ocr/test_clean.csv] --out runs/demo/chat

The examples are the first held-out rows of each kind: a text question (define), an image question, a spoken
question about a picture, a transcription, a spoken reply (the image question answered aloud, then that wav
transcribed by the model itself) and, with --ocr, a line read by the OCR model. Writes <out>/chat.json (a list
of records: mode, command, expected answer, infer_chat's JSON) and the wavs; scripts/report.py shows them.
A mode that fails stops the script with infer_chat's error.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first(rows: list[dict], task: str) -> dict:
    row = next((r for r in rows if r.get("task") == task), None)
    if row is None:
        raise SystemExit(f"error: no {task!r} row in the SFT file")
    return row


def ask(export: Path, args: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "infer_chat.py"), "--ckpt_dir", str(export), "--json", *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"error: infer_chat.py {' '.join(args)} failed:\n{p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True, help="export.py's output folder")
    ap.add_argument("--sft", required=True, help="Stage E rows to take examples from (test.jsonl)")
    ap.add_argument("--ocr", help="an OCR csv (image,text) to take a line from")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sft = Path(a.sft)
    rows = [json.loads(line) for line in sft.read_text().splitlines() if line.strip()]

    def media(rel: str) -> str:
        return str((sft.parent / rel).resolve())
    define, img, spoken, trans = (first(rows, t) for t in ("define", "colour", "spoken_shape", "transcribe"))
    reply_wav = str(out / "spoken_reply.wav")
    modes = [
        ("text", [define["prompt"]], define["answer"]),
        ("image question", ["--image", media(img["image"]), img["prompt"]], img["answer"]),
        ("spoken question", ["--image", media(spoken["image"]), "--audio_in", media(spoken["audio"])],
         spoken["answer"]),
        ("transcription", ["--audio_in", media(trans["audio"])], trans["answer"]),
        ("spoken reply", ["--image", media(img["image"]), img["prompt"], "--audio_out", reply_wav], img["answer"]),
        ("spoken reply, transcribed by the model", ["--audio_in", reply_wav], None),  # what the reply says
    ]
    if a.ocr:
        with open(a.ocr, newline="") as f:
            line = next(csv.DictReader(f))
        modes.append(("OCR", ["--image", str((Path(a.ocr).parent / line["image"]).resolve()), "--ocr"], line["text"]))

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "μomni_export"   # the export, moved away from where it was made
        shutil.copytree(a.export, copy)
        for mode, args, expected in modes:
            rec = ask(copy, args)
            if mode.startswith("spoken reply, transcribed"):
                expected = records[-1]["result"]["reply"]
            shown = [x if not x.startswith(str(ROOT)) else str(Path(x).relative_to(ROOT)) for x in args]
            records.append({"mode": mode, "args": shown, "expected": expected, "result": rec})
            print(f"[{mode}] {rec['reply']!r} (expected {expected!r}; first token {rec['time_to_first_token_s']} s)")
    (out / "chat.json").write_text(json.dumps(records, indent=1))
    print(f"wrote {out / 'chat.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
