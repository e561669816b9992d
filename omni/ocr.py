"""`python -m omni.ocr --ckpt ocr.pt a.png b.jpg ...`: read text lines in images (omni.infer.ocr)."""
import sys

from omni.infer.ocr import main

if __name__ == "__main__":
    sys.exit(main())
