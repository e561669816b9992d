"""Rendered text lines of the built-in dataset, for OCR.

data/demo/ocr/
    train.csv                     lines of training sentences in every training family, clean and degraded
    val_clean.csv, val_degraded.csv, val_long.csv, val_font.csv     held-out sentences: to choose configs on
    test_clean.csv, test_degraded.csv, test_long.csv, test_font.csv other held-out sentences: only reported
    lines/*.png
CSV `image,text`. Lines are runs of whole words cut from world sentences, real English (the text corpus's
held-out rule decides the side) and generated strings with digits and symbols (numbers, prices, times, codes),
so every printable ASCII character occurs; sentences shorter than a line's length are joined with others of
their kind. Lengths (line_length): one line in five is a word or two (up to 12 characters), the rest are
spread evenly over 13-64 characters; `*_long` hold only lines of LONG_CHARS (40-64), clean. `*_font` are set
in a family no other split uses: VAL_FAMILY (a slab serif) for val_font, TEST_FAMILY (a book serif) for
test_font, neither a near twin of a training family. The two held-out halves (val / test) are split by a hash
of the sentence, so no sentence is in both.
"""
from __future__ import annotations

import csv
import hashlib
import io
import multiprocessing
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from omni.builtin import world
from omni.builtin.sentences import english_pools
from omni.builtin.text import MissingSource
from omni.metrics import LINE_BUCKETS

FONT_ROOTS = [Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts")]
# Font families by file-name prefix, with the Debian packages that install them: sans, serif book faces,
# monospace, condensed (DejaVu Condensed, Liberation Sans Narrow, Nimbus Sans Narrow), small caps (Go
# Smallcaps), each with its italics and bold where the family has them. Faces that are not text (symbols,
# dingbats, maths, keyboard keys) or too thin to read at 32 px are dropped by SKIP_FACES. Roboto is left out:
# Roboto Slab (VAL_FAMILY) is drawn on its skeleton.
FAMILIES = {
    "dejavu": (("DejaVu",), "fonts-dejavu-core fonts-dejavu-extra"),
    "liberation": (("Liberation",), "fonts-liberation fonts-liberation2"),
    "freefont": (("Free",), "fonts-freefont-ttf"),
    "urw": (("NimbusSans", "NimbusRoman", "NimbusMono", "C059", "P052", "URWBookman", "URWGothic"),
            "fonts-urw-base35"),
    "texgyre": (("texgyre",), "fonts-texgyre"),
    "opensans": (("OpenSans",), "fonts-open-sans"),
    "lato": (("Lato",), "fonts-lato"),
    "go": (("Go-",), "fonts-go"),
    "libertine": (("LinLibertine", "LinBiolinum"), "fonts-linuxlibertine"),
    "ebgaramond": (("EBGaramond",), "fonts-ebgaramond"),
    "inconsolata": (("Inconsolata",), "fonts-inconsolata"),
    "cantarell": (("Cantarell",), "fonts-cantarell"),
    "crosextra": (("Caladea", "Carlito"), "fonts-crosextra-caladea fonts-crosextra-carlito"),
    "courierprime": (("Courier Prime",), "fonts-courier-prime"),
    "robotoslab": (("RobotoSlab",), "fonts-roboto-slab"),
    "charis": (("CharisSIL",), "fonts-sil-charis"),
}
VAL_FAMILY = "robotoslab"   # a slab serif: val_font only
TEST_FAMILY = "charis"      # a book serif (Charter's design): test_font only
SKIP_FACES = re.compile(r"(?i)math|chorus|hairline|thin|extralight|symbol|dingbat|biolinum_k")
MAX_CHARS = 64          # a book line
WORD_CHARS = 12         # the short lines: a word or two
LONG_CHARS = (40, 64)   # the *_long splits
MAX_HEIGHT = 48  # stored lines are at most this high (smaller files; the demo model reads them at 32)
PRINTABLE = "".join(chr(c) for c in range(32, 127))


@dataclass(frozen=True)
class OCRSizes:
    train: int
    val: int    # per val split (clean, degraded, long, font)
    test: int   # per test split (clean, degraded, long, font)


SIZES = {"small": OCRSizes(400, 16, 16), "full": OCRSizes(24000, 300, 400)}


def font_files() -> dict[str, list[Path]]:
    """{family: [font files]} of every family in FAMILIES that is installed and draws all printable ASCII."""
    files = sorted({p for root in FONT_ROOTS if root.exists() for ext in ("ttf", "otf") for p in root.rglob(f"*.{ext}")})
    out = {}
    for family, (prefixes, package) in FAMILIES.items():
        faces = [p for p in files if p.name.startswith(prefixes) and not SKIP_FACES.search(p.name)
                 and covers_ascii(p)]
        if not faces:
            raise MissingSource(f"no fonts of the {family} family found: install them with `sudo apt-get install "
                                f"-y {package}` (or run `bash scripts/setup_system.sh`)")
        out[family] = faces
    return out


@lru_cache(maxsize=None)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def covers_ascii(path: Path) -> bool:
    """True when the font draws every printable ASCII character as its own glyph (not the missing-glyph box)."""
    font = _font(path, 24)
    missing = bytes(font.getmask("\ue000"))
    for ch in PRINTABLE[1:]:  # space draws nothing by design
        mask = font.getmask(ch)
        if mask.getbbox() is None or bytes(mask) == missing:
            return False
    return True


def held_half(sentence: str) -> str:
    """Which held-out split a held-out sentence belongs to: 'val' or 'test', by a stable hash."""
    return "val" if hashlib.sha256(("ocr:" + sentence).encode()).digest()[0] % 2 == 0 else "test"


def line_length(rng: np.random.Generator, lo: int = 1, hi: int = MAX_CHARS) -> int:
    """A line's target length in characters: one in five a word or two (up to WORD_CHARS), the rest even over
    WORD_CHARS + 1 .. hi; with lo > WORD_CHARS, even over lo .. hi."""
    if lo <= WORD_CHARS and rng.random() < 0.2:
        return int(rng.integers(lo, WORD_CHARS + 1))
    return int(rng.integers(max(lo, WORD_CHARS + 1), hi + 1))


def cut_line(text: str, rng: np.random.Generator, target: int, max_chars: int = MAX_CHARS) -> str:
    """A run of whole words of the text of about `target` characters: from a random start among those whose run
    (words added while it stays within target) comes within a word of it (at least 0.6 x target); one word
    longer than max_chars is cut."""
    words = text.split()
    runs = []
    for start in range(len(words)):
        line = words[start][:max_chars]
        for w in words[start + 1:]:
            if len(line) + 1 + len(w) > target:
                break
            line += " " + w
        runs.append(line)
    good = [r for r in runs if len(r) >= max(0.6 * target, target - 8)] or [max(runs, key=len)]
    return good[int(rng.integers(len(good)))]


_WORDS = ["total", "room", "page", "item", "order", "call", "open", "fig", "no", "ref", "net", "box", "key",
          "code", "unit", "Apt", "Route", "Vol", "ID", "Tel", "USD", "EUR", "Sale", "Price", "Qty", "Fax"]


def symbol_line(rng: np.random.Generator) -> str:
    """A generated string of digits, symbols and words (prices, times, dates, codes, sums, tags)."""
    r = lambda lo, hi: int(rng.integers(lo, hi))  # noqa: E731
    w = lambda: _WORDS[r(0, len(_WORDS))]  # noqa: E731
    templates = [
        lambda: f"{w()} ${r(0, 999)}.{r(0, 100):02d}",
        lambda: f"{r(0, 24):02d}:{r(0, 60):02d} {['am', 'pm', 'AM', 'PM'][r(0, 4)]}",
        lambda: f"{r(1, 29)}/{r(1, 13)}/{r(1900, 2100)}",
        lambda: f"({r(100, 1000)}) {r(100, 1000)}-{r(0, 10000):04d}",
        lambda: f"{w()} #{r(1, 9999)}",
        lambda: f"{r(0, 100)}% of {r(1, 1000)}",
        lambda: f"x = ({r(0, 99)} + {r(0, 99)}) * {r(0, 9)};",
        lambda: f"{w().lower()}@{w().lower()}.{['com', 'org', 'net'][r(0, 3)]}",
        lambda: f"[{w()}] {r(0, 999)} {{{w()}}}",
        lambda: f"<{w().lower()}> & '{w()}' | \"{r(0, 99)}\"",
        lambda: f"{w().upper()}-{r(0, 999):03d}_{''.join(rng.choice(list(string.ascii_uppercase), 3))}",
        lambda: f"{r(1, 99)}^{r(2, 9)} ~ {r(0, 9)}.{r(0, 999)} \\ {w()}",
        lambda: f"!{w()}? `{w().lower()}` +{r(0, 99)}",
    ]
    return templates[r(0, len(templates))]().strip()


def sentences(rng: np.random.Generator, n: int, side: str, lengths: tuple[int, int] = (1, MAX_CHARS)) -> list[str]:
    """n lines on one side ('train', 'val' or 'test') of line_length(*lengths) characters, each cut from one kind
    of text: ~45% real English, 30% world, 25% symbol strings; a text shorter than the line is joined with more
    of its kind. Held-out sides draw only held-out texts (text corpus / world rules), their half by held_half."""
    pools = english_pools()
    held = side != "train"
    eng = [s for src in sorted(pools) for s in pools[src]["held" if held else "train"]]

    def piece(kind: int) -> str | None:
        if kind == 0:
            s = eng[int(rng.integers(len(eng)))]
        elif kind == 1:
            s = world.caption(world.sample_split_scene(rng, held))
        else:
            s = symbol_line(rng)
            if _held_symbol(s) != held:
                return None
        return None if held and held_half(s) != side else s

    out = []
    while len(out) < n:
        kind, target = rng.choice(3, p=[0.45, 0.30, 0.25]), line_length(rng, *lengths)
        text = ""
        while len(text) < target + (10 if kind != 2 else 0):   # room to start a run anywhere but the end
            s = piece(kind)
            if s is not None:
                text = f"{text} {s}".strip()
        line = cut_line(text, rng, target) if kind != 2 or len(text) > target else text
        if lengths[0] <= len(line) <= lengths[1] and line.strip():
            out.append(line)
    return out


def _held_symbol(s: str) -> bool:
    """Generated strings: one in five is held out (by hash), the rest train."""
    return hashlib.sha256(("sym:" + s).encode()).digest()[1] % 5 == 0


def _colours(rng: np.random.Generator, low_contrast: bool) -> tuple[tuple, tuple]:
    """(ink, background) RGB with a luminance gap of at least 90 (45 when low_contrast); one in five light on
    dark."""
    gap = 45 if low_contrast else 90
    while True:
        ink, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        lum = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
        if abs(lum(ink) - lum(bg)) >= gap and (lum(ink) < lum(bg)) == (rng.random() > 0.2):
            return tuple(int(c) for c in ink), tuple(int(c) for c in bg)


def render_line(text: str, font: Path, rng: np.random.Generator, degraded: bool) -> Image.Image:
    """The line drawn in `font` at a random size, in the font's line box (ascent to descent, so letter sizes keep
    their proportion to the line) with a margin; `degraded` adds a random few of: blur, noise, JPEG, rotation
    (±2°), low contrast, uneven light, low resolution."""
    size = int(rng.integers(22, 44))
    f = _font(font, size)
    low_contrast = degraded and rng.random() < 0.3
    ink, bg = _colours(rng, low_contrast)
    x0, _, x1, _ = f.getbbox(text)
    ascent, descent = f.getmetrics()   # the font's line box, not the ink's: "ooo" stays small beside "OOO"
    pad_x, pad_y = int(rng.integers(2, size // 2 + 3)), int(rng.integers(1, size // 6 + 2))
    img = Image.new("RGB", (x1 - x0 + 2 * pad_x, ascent + descent + 2 * pad_y), bg)
    ImageDraw.Draw(img).text((pad_x - x0, pad_y), text, font=f, fill=ink)
    if img.height > MAX_HEIGHT:  # big glyphs drawn, then stored at a height a reader downsizes to anyway
        img = img.resize((max(1, round(img.width * MAX_HEIGHT / img.height)), MAX_HEIGHT), Image.BOX)
    if not degraded:
        return img
    if rng.random() < 0.5:
        img = img.rotate(float(rng.uniform(-2, 2)), resample=Image.BICUBIC, expand=True, fillcolor=bg)
    if rng.random() < 0.4:  # uneven light: a left-to-right or top-to-bottom brightness ramp
        a = np.asarray(img, dtype=np.float32)
        ramp = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.3), a.shape[1] if rng.random() < 0.5 else a.shape[0])
        a = a * (ramp[None, :, None] if ramp.size == a.shape[1] else ramp[:, None, None])
        img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        s = rng.uniform(0.5, 0.75)
        small = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
        img = small.resize(img.size, Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.2))))
    if rng.random() < 0.5:
        a = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(4, 18), (img.height, img.width, 1))
        img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(15, 50)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        w.writerows(rows)
    tmp.replace(path)


def _render_job(job: tuple) -> None:
    text, font, seed, degraded, path = job
    # zlib's fastest level: the noisy lines compress no better at the default and it is half the build's time
    render_line(text, Path(font), np.random.default_rng(seed), degraded).save(path, compress_level=1)


def build_ocr(out_dir: Path, size: str, rng: np.random.Generator, workers: int = 2) -> dict:
    sz = SIZES[size]
    fonts = font_files()
    train_families = sorted(f for f in fonts if f not in (VAL_FAMILY, TEST_FAMILY))
    (out_dir / "lines").mkdir(parents=True, exist_ok=True)
    every, long = (1, MAX_CHARS), LONG_CHARS
    # split: (lines, side, families, degraded (None: half of them), lengths)
    plan = {"train": (sz.train, "train", train_families, None, every)}
    for side, n, font_family in (("val", sz.val, VAL_FAMILY), ("test", sz.test, TEST_FAMILY)):
        plan.update({f"{side}_clean": (n, side, train_families, False, every),
                     f"{side}_degraded": (n, side, train_families, True, every),
                     f"{side}_long": (n, side, train_families, False, long),
                     f"{side}_font": (n, side, [font_family], None, every)})
    summary, jobs = {}, []
    for split, (n, side, families, degraded, lengths) in plan.items():
        rows, n_degraded, used = [], 0, set()
        for i, text in enumerate(sentences(rng, n, side, lengths)):
            family = families[int(rng.integers(len(families)))]
            font = fonts[family][int(rng.integers(len(fonts[family])))]
            d = bool(rng.random() < 0.5) if degraded is None else degraded
            rel = f"lines/{split}_{i:05d}.png"
            jobs.append((text, str(font), int(rng.integers(2**63)), d, str(out_dir / rel)))
            rows.append((rel, text))
            n_degraded += d
            used.add(family)
        write_csv(out_dir / f"{split}.csv", rows)
        lens = [len(t) for _, t in rows]
        summary[split] = {"lines": len(rows), "degraded": n_degraded, "families": len(used),
                          "faces": len({j[1] for j in jobs[-len(rows):]}),
                          "chars": len(set("".join(t for _, t in rows))),
                          "mean length": round(float(np.mean(lens)), 1),
                          **{f"{lo}-{hi} chars": sum(lo <= k <= hi for k in lens) for lo, hi in LINE_BUCKETS}}
    with multiprocessing.get_context("fork").Pool(workers) as pool:  # each line draws from its own seed
        for _ in tqdm(pool.imap_unordered(_render_job, jobs, chunksize=64), total=len(jobs), desc="ocr lines",
                      leave=False):
            pass
    return summary
