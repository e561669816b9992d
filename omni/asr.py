"""`python -m omni.asr --ckpt audio_enc.pt a.wav ...`: transcribe audio files (omni.infer.asr)."""
import sys

from omni.infer.asr import main

if __name__ == "__main__":
    sys.exit(main())
