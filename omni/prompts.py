"""The task prompts the SFT data is written with (omni.builtin.sft, scripts/prepare_sft.py), which chat inference
also asks with when the user gives media and no words: the model answers best the question it was trained on.
Plain strings, so the dataset builder and inference share them without importing each other.
"""
from __future__ import annotations

CAPTION_PROMPTS = ("describe the image.", "what is in the picture?", "caption this image.")
SPOKEN_PROMPT = "answer the spoken question about the picture."
TRANSCRIBE_PROMPT = "transcribe the audio."
