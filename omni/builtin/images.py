"""Captioned images of the built-in dataset: world scenes and colour emoji.

data/demo/images/
    train.jsonl       world scenes (training side of the held-out rule) + every emoji, rendered twice
    val_world.jsonl   held-out scenes (their captions never occur in any training split): to choose configs on
    val_emoji.jsonl   unseen renderings (background, scale, offset) of emoji, one per emoji of a subset
    test_world.jsonl  other held-out scenes, drawn the same way as val_world: only reported
    world/*.png  emoji/*.png
Rows: {"image": <path relative to this folder>, "caption": ...} plus "scene" (world.Scene.to_dict(), so a
later stage can ask exact questions about the picture) or "emoji" (the character); training world rows also
"negatives": the caption with one shape and with one colour wrong (world.hard_negatives), for Stage C.
"""
from __future__ import annotations

import json
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omni.builtin import world
from omni.builtin.text import MissingSource

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_FONT_SIZE = 109  # the only size the bitmap font carries (136 x 128 glyph cells)
EMOJI_RANGES = [(0x1F300, 0x1FB00), (0x2600, 0x27C0)]
_SKIP_NAMES = ("emoji modifier", "regional indicator", "emoji component")


@dataclass(frozen=True)
class ImageSizes:
    train_world: int
    val_world: int
    emoji_renders: int  # training renderings per emoji
    val_emoji: int
    test_world: int


SIZES = {"small": ImageSizes(200, 32, 1, 32, 32), "full": ImageSizes(6000, 500, 2, 300, 500)}


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    if not EMOJI_FONT.exists():
        raise MissingSource(f"{EMOJI_FONT} not found: install it with `sudo apt-get install -y "
                            f"fonts-noto-color-emoji` (or run `bash scripts/setup_system.sh`)")
    return ImageFont.truetype(str(EMOJI_FONT), EMOJI_FONT_SIZE)


def _glyph(ch: str) -> Image.Image:
    """The emoji as RGBA on a transparent 136 x 128 canvas."""
    im = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((0, 0), ch, font=_font(), embedded_color=True)
    return im


def emoji_list() -> list[tuple[str, str]]:
    """[(character, caption)] for every single-code-point emoji the font draws, in code-point order;
    caption = unicodedata name, lower-cased ("watermelon", "bear face")."""
    out = []
    for lo, hi in EMOJI_RANGES:
        for cp in range(lo, hi):
            ch = chr(cp)
            name = unicodedata.name(ch, "").lower()
            if not name or name.startswith(_SKIP_NAMES):
                continue
            if _glyph(ch).getbbox() is not None:  # no glyph -> nothing drawn
                out.append((ch, name))
    return out


def render_emoji(ch: str, size: int, rng: np.random.Generator) -> Image.Image:
    """RGB size x size: the glyph at a random scale (60–90% of the side) and offset on a random light
    background, so every rendering is a new image of the same thing."""
    g = _glyph(ch)
    g = g.crop(g.getbbox())
    scale = rng.uniform(0.6, 0.9) * size / max(g.size)
    g = g.resize((max(1, round(g.width * scale)), max(1, round(g.height * scale))), Image.LANCZOS)
    bg = tuple(int(c) for c in rng.integers(170, 256, size=3))
    img = Image.new("RGB", (size, size), bg)
    x = int(rng.integers(0, size - g.width + 1))
    y = int(rng.integers(0, size - g.height + 1))
    img.paste(g, (x, y), g)
    return img


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def build_images(out_dir: Path, size: str, rng: np.random.Generator, image_size: int = 64) -> dict:
    sz = SIZES[size]
    (out_dir / "world").mkdir(parents=True, exist_ok=True)
    (out_dir / "emoji").mkdir(parents=True, exist_ok=True)

    def scenes(split: str, n: int, held_out: bool, avoid: frozenset[world.Scene] = frozenset()) -> list[dict]:
        rows = []
        for i in range(n):
            s = world.sample_split_scene(rng, held_out)
            while s in avoid:
                s = world.sample_split_scene(rng, held_out)
            rel = f"world/{split}_{i:05d}.png"
            world.render(s, image_size).save(out_dir / rel)
            row = {"image": rel, "caption": world.caption(s), "scene": s.to_dict()}
            if not held_out:  # hard negatives for Stage C (drawn from their own generator: the scenes stay)
                row["negatives"] = world.hard_negatives(s, np.random.default_rng(zlib.crc32(rel.encode())))
            rows.append(row)
        return rows

    train = scenes("train", sz.train_world, False)
    val_world = scenes("val", sz.val_world, True)

    emoji = emoji_list()
    if size == "small":  # a spread of the list keeps small builds fast
        emoji = emoji[:: max(1, len(emoji) // max(sz.val_emoji * 2, 1))]
    for k in range(sz.emoji_renders):
        for i, (ch, name) in enumerate(emoji):
            rel = f"emoji/train_{i:04d}_{k}.png"
            render_emoji(ch, image_size, rng).save(out_dir / rel)
            train.append({"image": rel, "caption": name, "emoji": ch})
    val_emoji = []
    for i in sorted(rng.permutation(len(emoji))[:sz.val_emoji]):
        ch, name = emoji[i]
        rel = f"emoji/val_{i:04d}.png"
        render_emoji(ch, image_size, rng).save(out_dir / rel)
        val_emoji.append({"image": rel, "caption": name, "emoji": ch})

    train = [train[i] for i in rng.permutation(len(train))]
    # Drawn last, so the splits above are what they were before it existed. The world has one held-out pool
    # (world.is_held_out on the caption), so test scenes come from the same pool as val_world's: every test
    # row is another scene (another drawing, never one of val's), but captions can repeat between val and
    # test. Mostly one-object scenes: the held-out pool has only ~50 one-object captions, so val_world's
    # ~170 one-object scenes already show most of them; two- and three-object captions rarely repeat.
    val_scenes = frozenset(world.Scene.from_dict(r["scene"]) for r in val_world)
    test_world = scenes("test", sz.test_world, True, avoid=val_scenes)
    splits = {"train": train, "val_world": val_world, "val_emoji": val_emoji, "test_world": test_world}
    for name, rows in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    return {name: {"items": len(rows), "world": sum("scene" in r for r in rows),
                   "emoji": sum("emoji" in r for r in rows)} for name, rows in splits.items()}
