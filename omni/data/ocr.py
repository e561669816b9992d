"""OCR manifests (CSV `image,text`), the one line preprocessing, and a width-bucketed stream of line batches.

Lines are converted to grey and resized to the model's height with their width in proportion (never squashed
to a square); a batch pads them on the right, and the model masks the padding.
"""
from __future__ import annotations

import csv
import multiprocessing
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from omni.data.base import BadSample, LengthBucketed
from omni.data.hints import data_hint
from omni.errors import UserError


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """[(image path, text)] of an OCR CSV; paths relative to the CSV's folder unless absolute. The text is
    kept exactly (spaces inside a line are characters to read); an empty text is an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OCR manifest not found: {path}; {data_hint(path, 'ocr')}")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "text"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {sorted(missing)}; expected header image,text")
        for n, r in enumerate(reader, 2):
            text = (r["text"] or "").strip()
            if not text or not r["image"]:
                raise UserError(f"{path}:{n}: empty image path or text")
            image = Path(r["image"])
            rows.append((str(image if image.is_absolute() else path.parent / image), text))
    if not rows:
        raise UserError(f"{path} holds no lines")
    return rows


def line_width(width: int, height: int, target_height: int) -> int:
    """Columns of a width x height line resized to target_height, its width in proportion (at least 8)."""
    return max(8, round(width * target_height / max(height, 1)))


def line_pixels(image: Image.Image, height: int) -> np.ndarray:
    """A PIL image → uint8 [height x width] grey, its width scaled with its height (at least 8 columns).
    The one resize rule for training, evaluation and `python -m omni.ocr`."""
    image = image.convert("L")
    width = line_width(image.width, image.height, height)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BOX if image.height >= height else Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_line(path: str, height: int) -> np.ndarray | None:
    """line_pixels of the file, or None when it is missing or unreadable."""
    try:
        with Image.open(path) as im:
            return line_pixels(im, height)
    except Exception:  # PIL raises many types for truncated or foreign files; the sample is unusable either way
        return None


def _load(job):
    return load_line(*job)


def load_lines(paths: list[str], height: int, workers: int = 2, show_progress: bool = True) -> list:
    """load_line of every path, on `workers` processes; None for the unreadable ones."""
    jobs = [(p, height) for p in paths]
    if workers <= 1 or len(jobs) < 256:
        return [_load(j) for j in tqdm(jobs, desc="lines", disable=not show_progress, leave=False)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(tqdm(pool.imap(_load, jobs, chunksize=128), total=len(jobs), desc="lines",
                         disable=not show_progress, leave=False))


def batch_lines(lines: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 lines [H x W_i] → (pixels Tensor[B x 1 x H x max W] in [-1, 1], zero on the right padding;
    widths Tensor[B])."""
    widths = torch.tensor([a.shape[1] for a in lines])
    pixels = torch.zeros(len(lines), 1, lines[0].shape[0], int(widths.max()))
    for i, a in enumerate(lines):
        pixels[i, 0, :, :a.shape[1]] = torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0)
    return pixels, widths


def target_ids(labels: list[list[int]], bos: int, eos: int) -> torch.Tensor:
    """Character ids per line → Tensor[B x (max len + 2)]: BOS, the characters, EOS, then padding 0."""
    out = torch.zeros(len(labels), max(len(l) for l in labels) + 2, dtype=torch.long)
    for i, lab in enumerate(labels):
        out[i, :len(lab) + 2] = torch.tensor([bos, *lab, eos])
    return out


class LineBatches(LengthBucketed):
    """Training lines in batches of similar width. `cache` holds the preprocessed lines (load_lines) or is
    None: then each is decoded in the data workers."""

    def __init__(self, paths, labels, widths, height, bos, eos, batch_size, seed, bucket=50, cache=None):
        super().__init__(widths, batch_size, seed, bucket)
        self.paths, self.labels, self.height, self.bos, self.eos, self.cache = paths, labels, height, bos, eos, cache

    def load(self, index, rng):
        a = self.cache[index] if self.cache is not None else load_line(self.paths[index], self.height)
        if a is None:
            raise BadSample(f"unreadable image {self.paths[index]}")
        return a, self.labels[index]

    def collate(self, samples):
        pixels, widths = batch_lines([a for a, _ in samples])
        labels = [lab for _, lab in samples]
        return {"pixels": pixels, "widths": widths, "targets": target_ids(labels, self.bos, self.eos),
                "labels": labels, "lines": len(samples)}
