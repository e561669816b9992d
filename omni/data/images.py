"""Captioned images: reading JSONL manifests, a decoded-pixel cache built once, caption-safe augmentation,
and the resumable stream of (image, caption) batches.

Decoding and resizing PNGs costs more than a tiny ViT's step on CPU, so the distinct images of a manifest
are decoded once at the model's image size into a uint8 array (save_dir/cache, keyed by the paths, the
files' sizes and mtimes, and the size) and memory-mapped after.
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

from omni.data.base import BadSample, BatchStream
from omni.data.hints import data_hint
from omni.errors import UserError


def read_manifest(path: str | Path, negatives: bool = False) -> list[tuple]:
    """[(image path, caption)] of a JSONL manifest of {"image", "caption"} rows; relative image paths are
    relative to the manifest's folder. Rows with an empty caption are an error naming the line.
    negatives: [(image path, caption, [hard negative captions])], from the rows' optional "negatives" (captions
    that almost describe the image: one detail wrong)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image manifest not found: {path}; {data_hint(path, 'images')}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, caption = row["image"], " ".join(str(row["caption"]).split())
                negs = [" ".join(str(c).split()) for c in row.get("negatives", [])]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{path}:{n}: expected a JSON object with 'image' and 'caption' ({e})") from None
            if not caption:
                raise UserError(f"{path}:{n}: empty caption")
            if not isinstance(row.get("negatives", []), list) or not all(negs):
                raise UserError(f"{path}:{n}: 'negatives' must be a list of non-empty captions")
            image = Path(image)
            image = image if image.is_absolute() else path.parent / image
            rows.append((image, caption, [c for c in negs if c != caption]) if negatives else (image, caption))
    if not rows:
        raise UserError(f"{path} holds no rows")
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


def pixel_cache(paths: list[Path], size: int, cache_dir: str | Path, name: str,
                log=print) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [N x 3 x size x size] memory-mapped, ok Bool[N]) for `paths` in order, decoded once
    and reused while the list and every file's size and mtime stay the same. Unreadable images get
    ok=False (the stream skips and counts them) and are named in the log once."""
    h = hashlib.sha256(str(size).encode())
    for p in paths:
        st = p.stat() if p.exists() else None
        h.update(f"{p}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    cache_dir = Path(cache_dir)
    path = cache_dir / f"pixels_{name}_{size}_{h.hexdigest()[:16]}.npy"
    ok_path = path.with_suffix(".ok.npy")
    if not (path.exists() and ok_path.exists()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
        ok = np.zeros(len(paths), dtype=bool)
        for i, p in enumerate(paths):
            img = decode_image(p, size)
            if img is None:
                log(f"WARNING: unreadable image {p}; it is skipped")
            else:
                pixels[i], ok[i] = img, True
        for arr, dst in ((pixels, path), (ok, ok_path)):
            tmp = dst.with_name(dst.name + f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, dst)
    return np.load(path, mmap_mode="r"), np.load(ok_path)


class ImageSource:
    """The distinct images of a manifest by index: from the pixel cache (`cached`), or decoded from the
    files each time (for sets too big to cache, e.g. COCO; DataLoader workers then share the decoding)."""

    def __init__(self, paths: list[Path], size: int, cache_dir: str | Path, name: str, cached: bool = True,
                 log=print):
        self.paths, self.size = paths, size
        self.pixels, self.ok = pixel_cache(paths, size, cache_dir, name, log) if cached else (None, None)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray | None:
        """uint8 [3 x S x S], or None when the image is unreadable."""
        if self.pixels is None:
            return decode_image(self.paths[i], self.size)
        return np.asarray(self.pixels[i]) if self.ok[i] else None


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
    """(image, caption) rows: row i shows image `image_index[i]` of `images` and caption `caption_ids[i]`,
    given as token ids (`tokens[i]`, None when too long) and, for the frozen-Thinker text side, optionally
    as cached hidden states (`features[caption_id]`). A row whose image is unreadable or whose caption is too
    long is bad: skipped and counted by the engine."""

    def __init__(self, images: ImageSource, image_index: np.ndarray, tokens: list, caption_ids: np.ndarray,
                 batch_size: int, seed: int = 0, augment_cfg: AugmentConfig | None = None,
                 features: torch.Tensor | None = None, shuffle: bool = True, negatives: list | None = None,
                 caption_tokens: list | None = None):
        """negatives[i]: caption ids of row i's hard negatives (caption_tokens[id] their token ids); one of
        them, drawn at random, comes with the row ("neg_*" in the batch, "has_neg" False where a row has none)."""
        super().__init__(batch_size, seed, shuffle)
        self.images, self.image_index, self.tokens, self.caption_ids = images, image_index, tokens, caption_ids
        self.augment_cfg = augment_cfg or AugmentConfig(enabled=False)
        self.features = features  # [n_captions x T x d]
        self.negatives, self.caption_tokens = negatives, caption_tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def load(self, index, rng):
        if self.tokens[index] is None:
            raise BadSample(f"row {index}: caption over the text side's max_len tokens")
        pixels = self.images.get(int(self.image_index[index]))
        if pixels is None:
            raise BadSample(f"row {index}: unreadable image {self.images.paths[int(self.image_index[index])]}")
        img = torch.from_numpy(pixels.astype(np.float32) / 255.0)
        neg = -1
        if self.negatives is not None and self.negatives[index]:
            neg = int(self.negatives[index][rng.integers(len(self.negatives[index]))])
        return augment(img, rng, self.augment_cfg), self.tokens[index], int(self.caption_ids[index]), neg

    def _texts(self, toks: list, cap: torch.Tensor, prefix: str = "") -> dict:
        T = max(len(t) for t in toks)
        ids = torch.zeros(len(toks), T, dtype=torch.long)
        mask = torch.zeros(len(toks), T, dtype=torch.bool)
        for i, t in enumerate(toks):
            ids[i, :len(t)] = torch.tensor(t)
            mask[i, :len(t)] = True
        out = {f"{prefix}ids": ids, f"{prefix}mask": mask}
        if self.features is not None:
            out[f"{prefix}features"] = self.features[cap, :T]
        return out

    def collate(self, samples):
        cap = torch.tensor([s[2] for s in samples])
        batch = {"images": torch.stack([s[0] for s in samples]), "caption_ids": cap,
                 **self._texts([s[1] for s in samples], cap)}
        negs = torch.tensor([s[3] for s in samples])
        if bool((negs >= 0).any()):
            batch["has_neg"] = negs >= 0
            negs = negs[negs >= 0]
            batch.update(self._texts([self.caption_tokens[int(c)] for c in negs], negs, "neg_"))
        return batch
