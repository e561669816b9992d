"""`python -m omni.tts --ckpt_dir DIR --text ... --out x.wav`: speak text (omni.infer.tts)."""
import sys

from omni.infer.tts import main

if __name__ == "__main__":
    sys.exit(main())
