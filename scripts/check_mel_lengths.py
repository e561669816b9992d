#!/usr/bin/env python
"""Length distribution of an ASR/TTS manifest in log-mel frames, and the max_mel_length to set (SPEC §3).

    python scripts/check_mel_lengths.py --csv data/demo/asr/train.csv [--csv more.csv] [--limit 2048]

Reads only the file headers. Frames are at the audio front end's rate (100/s: 10 ms hop; resampling to
16 kHz included). Also counts the utterances CTC could not align at 4x and 8x downsampling (fewer encoder
frames than characters plus repeated neighbours), which Stage B skips.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from omni.asr import CharVocab, ctc_frames_needed  # noqa: E402
from omni.audio import MelConfig  # noqa: E402
from omni.data.speech import measure, read_manifest  # noqa: E402
from omni.models.audio_encoder import encoder_frames  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", action="append", required=True, help="manifest(s) with header wav,text[,speaker]")
    p.add_argument("--limit", type=int, default=2048, help="the max_mel_length to check against")
    p.add_argument("--round", type=int, default=64, help="round the suggestion up to a multiple of this")
    args = p.parse_args(argv)
    cfg = MelConfig()
    try:
        utts = [u for path in args.csv for u in measure(read_manifest(path), cfg)]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    bad = [u for u in utts if u.frames < 0]
    good = [u for u in utts if u.frames >= 0]
    if not good:
        print(f"error: none of the {len(utts)} audio files could be read", file=sys.stderr)
        return 1
    frames = np.array([u.frames for u in good])
    fps = cfg.sample_rate / cfg.hop_length
    print(f"{len(good)} utterances, {frames.sum() / fps / 3600:.2f} h" +
          (f"; {len(bad)} unreadable (e.g. {bad[0].wav})" if bad else ""))
    print(f"{'':>8} {'frames':>8} {'seconds':>8}")
    for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100)):
        v = float(np.percentile(frames, q))
        print(f"{name:>8} {v:>8.0f} {v / fps:>8.2f}")
    over = int((frames > args.limit).sum())
    print(f"over max_mel_length {args.limit}: {over} ({over / len(frames):.2%}), skipped in training")
    vocab = CharVocab.from_texts(u.text for u in good)
    for ds in (4, 8):
        n = sum(ctc_frames_needed(vocab.encode(u.text)) > encoder_frames(u.frames, ds) for u in good)
        print(f"CTC cannot align at {ds}x downsampling ({fps / ds:g} frames/s): {n} ({n / len(good):.2%})")
    suggestion = int(math.ceil(frames.max() / args.round) * args.round)
    print(f"max_mel_length to keep every utterance: {suggestion}  (--set max_mel_length={suggestion})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
