"""`python -m omni.vocode --ckpt hifigan.pt a.wav ... --out_dir D`: copy synthesis through a vocoder
(omni.infer.vocoder)."""
import sys

from omni.infer.vocoder import main

if __name__ == "__main__":
    sys.exit(main())
