"""Reading lines with a trained OCR model: batched greedy decoding (KV-cached), evaluation, and the command
line `python -m omni.ocr --ckpt ocr.pt a.png b.jpg` (prints `path<TAB>text` per image)."""
from __future__ import annotations

import argparse
import sys
import numpy as np
import torch
from PIL import Image

from omni.artifacts import load_artifact
from omni.data.ocr import batch_lines, line_pixels, load_line
from omni.device import resolve_device
from omni.errors import UserError, exit_on_user_error
from omni.infer.asr import ctc_greedy
from omni.metrics import cer, wer
from omni.models.ocr import OCRModel
from omni.vocab import CharVocab


def _lines(images: list, height: int) -> list:
    """Paths, PIL images or uint8 lines (line_pixels) → uint8 lines; an unreadable file is an error naming it."""
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            out.append(im)
            continue
        a = line_pixels(im, height) if isinstance(im, Image.Image) else load_line(str(im), height)
        if a is None:
            raise UserError(f"cannot read image {im} (missing, or not an image)")
        out.append(a)
    return out


@torch.no_grad()
def read_lines(model: OCRModel, vocab: CharVocab, images: list, batch_size: int = 32, device="cpu",
               ctc: bool = False) -> list[str] | tuple[list[str], list[str]]:
    """The text of each line image (paths, PIL images or line_pixels arrays), in input order: the decoder's greedy reading; with
    `ctc`, also the CTC head's best path, as (decoder texts, CTC texts)."""
    lines = _lines(images, model.cfg.image_height)
    order = sorted(range(len(lines)), key=lambda i: lines[i].shape[1])   # similar widths: little padding
    texts, ctc_texts = [""] * len(lines), [""] * len(lines)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        pixels, widths = batch_lines([lines[i] for i in idx])
        pixels, widths = pixels.to(device), widths.to(device)
        for i, ids in zip(idx, model.generate(pixels, widths)):
            texts[i] = vocab.decode(ids)
        if ctc:
            memory, mask = model.encode(pixels, widths)
            for i, ids in zip(idx, ctc_greedy(model.ctc_head(memory), mask.sum(1))):
                ctc_texts[i] = vocab.decode(ids)
    return (texts, ctc_texts) if ctc else texts


def evaluate_lines(model: OCRModel, vocab: CharVocab, images: list, texts: list[str], batch_size: int = 64,
                   device="cpu", ctc: bool = False) -> tuple[dict, list[str]]:
    """CER, WER and line accuracy (exact match) of the decoder's readings (and `ctc_cer` of the CTC head's).
    Unreadable images are skipped and counted in `skipped`. Returns (metrics, readings in input order)."""
    h = model.cfg.image_height
    lines = [line_pixels(im, h) if isinstance(im, Image.Image) else load_line(str(im), h) for im in images]
    keep = [i for i, a in enumerate(lines) if a is not None]
    refs = [texts[i] for i in keep]
    out = read_lines(model, vocab, [lines[i] for i in keep], batch_size, device, ctc)
    hyps = out[0] if ctc else out
    m = {"cer": cer(refs, hyps), "wer": wer(refs, hyps),
         "line_acc": sum(r == h for r, h in zip(refs, hyps)) / max(len(refs), 1), "n": len(refs),
         "skipped": len(images) - len(refs)}
    if ctc:
        m["ctc_cer"] = cer(refs, out[1])
    return m, hyps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Read text lines in images with a trained OCR model.")
    p.add_argument("--ckpt", required=True, help="final ocr.pt (or the folder that holds it)")
    p.add_argument("images", nargs="+", help="line images: PNG, JPEG, ... of one line of text each")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    args = p.parse_args(argv)
    with exit_on_user_error():
        device = resolve_device(args.device)
        a = load_artifact(args.ckpt, "ocr", device)
        texts = read_lines(a.model, a.vocab, args.images, args.batch_size, device)
    for path, text in zip(args.images, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
