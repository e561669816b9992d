"""Captioned images: reading JSONL manifests, a decoded-pixel cache built once, caption-safe augmentation,
and the resumable stream of (image, caption) batches.

Decoding and resizing PNGs costs more than a tiny ViT's step on CPU, so every manifest is decoded once at
the model's image size into a uint8 array (save_dir/cache, keyed by the manifest, its images' sizes and
mtimes, and the size) and memory-mapped after.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omni.data.base import BatchStream

BUILD_HINT = "build the built-in images with `python scripts/make_demo_data.py --out data/demo --only images`"


def read_manifest(path: str | Path) -> list[tuple[Path, str]]:
    """[(image path, caption)] of a JSONL manifest of {"image", "caption"} rows; relative image paths are
    relative to the manifest's folder (SPEC §9). Rows with an empty caption are an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image manifest not found: {path}; {BUILD_HINT}, or convert your own "
                                f"(scripts/prepare_coco.py)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, caption = row["image"], " ".join(str(row["caption"]).split())
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON object with 'image' and 'caption' ({e})") from None
            if not caption:
                raise ValueError(f"{path}:{n}: empty caption")
            image = Path(image)
            rows.append((image if image.is_absolute() else path.parent / image, caption))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """A PIL image → uint8 [3 x size x size] RGB; downsizing averages areas (no aliasing on thin shapes).
    The one resize rule for training, evaluation and every later stage that feeds the ViT."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BOX if image.width >= size else Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_image(path: Path, size: int) -> np.ndarray | None:
    """to_pixels of the file, or None when it is unreadable."""
    try:
        with Image.open(path) as im:
            return to_pixels(im, size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def pixel_cache(manifest: str | Path, size: int, cache_dir: str | Path, log=print) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [N x 3 x size x size] memory-mapped, ok Bool[N]) for the manifest's rows in order.
    Unreadable images get ok=False (the stream skips and counts them) and are named in the log once."""
    rows = read_manifest(manifest)
    h = hashlib.sha256(Path(manifest).read_bytes())
    for p, _ in rows:  # any changed image file rebuilds the cache
        st = p.stat() if p.exists() else None
        h.update(f"{p}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}".encode())
    key = h.hexdigest()[:16]
    cache_dir = Path(cache_dir)
    path = cache_dir / f"pixels_{Path(manifest).stem}_{size}_{key}.npy"
    ok_path = path.with_suffix(".ok.npy")
    if not (path.exists() and ok_path.exists()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((len(rows), 3, size, size), dtype=np.uint8)
        ok = np.zeros(len(rows), dtype=bool)
        for i, (p, _) in enumerate(rows):
            img = decode_image(p, size)
            if img is None:
                log(f"WARNING: unreadable image {p} ({manifest} row {i + 1}); it is skipped")
            else:
                pixels[i], ok[i] = img, True
        for arr, dst in ((pixels, path), (ok, ok_path)):
            tmp = dst.with_name(dst.name + f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, dst)
    return np.load(path, mmap_mode="r"), np.load(ok_path)


@dataclass
class AugmentConfig:
    """Augmentations that keep a caption true. No hue change (captions name colours) and no horizontal flip
    by default (captions name left and right); small zoom/shift keeps "large" vs "small" and positions."""
    enabled: bool = True
    scale: float = 0.08          # zoom factor drawn from [1 - scale, 1 + scale]
    translate: float = 0.05      # shift drawn from ±translate of the image side, per axis
    brightness: float = 0.08     # all channels times one factor from [1 - b, 1 + b]: hue is unchanged
    noise: float = 0.02          # Gaussian pixel noise (std, on [0, 1] pixels)
    hflip: bool = False          # only for captions without left/right


def augment(img: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """img: Tensor[3 x S x S] float in [0, 1] → the same, jittered with draws from `rng` only (so a resumed
    run augments identically). Uncovered borders repeat the edge pixels (the background)."""
    if not cfg.enabled:
        return img
    s = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * 2  # affine_grid spans [-1, 1]
    flip = -1.0 if cfg.hflip and rng.random() < 0.5 else 1.0
    theta = torch.tensor([[flip / s, 0.0, tx], [0.0, 1.0 / s, ty]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
    img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    img = img * (1.0 + rng.uniform(-cfg.brightness, cfg.brightness))
    if cfg.noise > 0:
        img = img + torch.from_numpy(rng.standard_normal(img.shape, dtype=np.float32)) * cfg.noise
    return img.clamp(0.0, 1.0)


class CaptionedImages(BatchStream):
    """(image, caption) pairs from a pixel cache. Captions are given as token ids (pre-tokenized, with
    `caption_ids` telling which rows share a caption) and, for the frozen-Thinker text side, optionally as
    cached hidden states. A row whose image is unreadable or whose caption is too long is bad: skipped and
    counted by the engine."""

    def __init__(self, pixels: np.ndarray, ok: np.ndarray, tokens: list[list[int]], caption_ids: np.ndarray,
                 batch_size: int, seed: int = 0, augment_cfg: AugmentConfig | None = None,
                 features: torch.Tensor | None = None, shuffle: bool = True):
        super().__init__(batch_size, seed, shuffle)
        self.pixels, self.ok, self.tokens, self.caption_ids = pixels, ok, tokens, caption_ids
        self.augment_cfg = augment_cfg or AugmentConfig(enabled=False)
        self.features = features  # [n_captions x T x d] cached Thinker states, indexed by caption id

    def __len__(self) -> int:
        return len(self.pixels)

    def load(self, index, rng):
        if not self.ok[index] or self.tokens[index] is None:
            return None
        img = torch.from_numpy(np.asarray(self.pixels[index], dtype=np.float32) / 255.0)
        return augment(img, rng, self.augment_cfg), self.tokens[index], int(self.caption_ids[index])

    def collate(self, samples):
        images = torch.stack([s[0] for s in samples])
        T = max(len(s[1]) for s in samples)
        ids = torch.zeros(len(samples), T, dtype=torch.long)
        mask = torch.zeros(len(samples), T, dtype=torch.bool)
        for i, (_, toks, _) in enumerate(samples):
            ids[i, :len(toks)] = torch.tensor(toks)
            mask[i, :len(toks)] = True
        cap = torch.tensor([s[2] for s in samples])
        batch = {"images": images, "ids": ids, "mask": mask, "caption_ids": cap}
        if self.features is not None:
            batch["features"] = self.features[cap, :T]
        return batch
