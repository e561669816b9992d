#!/usr/bin/env python
"""Length distribution of an ASR/TTS manifest, and the max_mel_length to set, in the stage's unit.

    python scripts/check_mel_lengths.py --csv data/demo/asr/train.csv [--csv more.csv] [--limit 2048]
    python scripts/check_mel_lengths.py --stage talker --csv data/demo/tts/train.csv [--limit 2048]

Reads only the file headers. Each stage's max_mel_length counts its own frames: Stage B (audio_enc, the
default) log-mel frames of the audio front end (100/s: 10 ms hop; resampling to 16 kHz included); the Talker
(train_talker.py) code frames (12.5/s: frame_ms 80, ceil(log-mel frames / 8)). --limit and the suggestion
are in that unit. For audio_enc it also counts the utterances CTC could not align at 4x and 8x downsampling
(fewer encoder frames than characters plus repeated neighbours), which Stage B skips.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from omni.vocab import CharVocab  # noqa: E402
from omni.audio import MelConfig  # noqa: E402
from omni.data.speech import measure, read_manifest  # noqa: E402
from omni.errors import exit_on_user_error  # noqa: E402
from omni.models.audio_encoder import ctc_frames_needed, encoder_frames  # noqa: E402


STAGES = {"audio_enc": "train_audio_enc.py", "talker": "train_talker.py"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", action="append", required=True, help="manifest(s) with header wav,text[,speaker]")
    p.add_argument("--stage", choices=sorted(STAGES), default="audio_enc",
                   help="whose max_mel_length: audio_enc (log-mel frames, 100/s) or talker (code frames, 12.5/s)")
    p.add_argument("--limit", type=int, default=2048,
                   help="the max_mel_length to check against, in the stage's unit")
    p.add_argument("--round", type=int, default=None,
                   help="round the suggestion up to a multiple of this (default 64 log-mel / 8 code frames)")
    p.add_argument("--frame_ms", type=int, default=80, help="talker: its config's frame_ms (a code frame)")
    args = p.parse_args(argv)
    cfg = MelConfig()
    mel_ms = cfg.hop_length * 1000 / cfg.sample_rate
    if args.stage == "talker" and (args.frame_ms <= 0 or args.frame_ms % mel_ms):
        p.error(f"--frame_ms must be a multiple of the {mel_ms:g} ms mel hop")
    block = int(args.frame_ms // mel_ms) if args.stage == "talker" else 1   # log-mel frames per stage frame
    rounding = args.round or (8 if args.stage == "talker" else 64)
    with exit_on_user_error():
        utts = [u for path in args.csv for u in measure(read_manifest(path), cfg)]
    bad = [u for u in utts if u.frames < 0]
    good = [u for u in utts if u.frames >= 0]
    if not good:
        print(f"error: none of the {len(utts)} audio files could be read", file=sys.stderr)
        return 1
    mel_frames = np.array([u.frames for u in good])
    frames = -(-mel_frames // block)                                        # ceil: a partial block is a frame
    fps = cfg.sample_rate / cfg.hop_length / block
    if args.stage == "talker":
        unit, about = "code frames", f"({args.frame_ms} ms, {fps:g}/s: ceil(log-mel frames / {block}))"
    else:
        unit, about = "log-mel frames", f"({mel_ms:g} ms, {fps:g}/s)"
    print(f"{len(good)} utterances, {mel_frames.sum() * mel_ms / 1000 / 3600:.2f} h" +
          (f"; {len(bad)} unreadable (e.g. {bad[0].wav})" if bad else ""))
    print(f"{args.stage} ({STAGES[args.stage]}): lengths and max_mel_length in {unit} {about}")
    print(f"{'':>8} {unit:>14} {'seconds':>8}")
    for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100)):
        v = float(np.percentile(frames, q))
        print(f"{name:>8} {v:>14.0f} {v / fps:>8.2f}")
    over = int((frames > args.limit).sum())
    print(f"over max_mel_length {args.limit}: {over} ({over / len(frames):.2%}), skipped in training "
          f"({args.limit} {unit} = {args.limit / fps:g} s)")
    if args.stage == "audio_enc":
        vocab = CharVocab.from_texts(u.text for u in good)
        for ds in (4, 8):
            n = sum(ctc_frames_needed(vocab.encode(u.text)) > encoder_frames(u.frames, ds) for u in good)
            print(f"CTC cannot align at {ds}x downsampling ({fps / ds:g} frames/s): {n} ({n / len(good):.2%})")
    suggestion = int(math.ceil(frames.max() / rounding) * rounding)
    print(f"max_mel_length to keep every utterance: {suggestion} {unit} ({suggestion / fps:g} s)  "
          f"(python {STAGES[args.stage]} ... --set max_mel_length={suggestion})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
