"""Rendered text lines of the built-in dataset, for OCR.

data/demo/ocr/
    train.csv                     lines of training sentences in every training font, clean and degraded
    val_clean.csv, val_degraded.csv     held-out sentences: to choose configs on
    test_clean.csv, test_degraded.csv   other held-out sentences: only reported
    test_font.csv                 held-out sentences in a font family no training line uses (TEST_FAMILY)
    lines/*.png
CSV `image,text`. Lines are short runs of words (at most MAX_CHARS characters) cut from world
sentences, real English (the text corpus's held-out rule decides the side) and generated strings with digits
and symbols (numbers, prices, times, codes), so every printable ASCII character occurs. The two held-out
halves (val / test) are split by a hash of the sentence, so no sentence is in both.
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

FONT_ROOTS = [Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts")]
# Font families by file-name prefix, with the Debian package that installs them. Faces that are not text
# (symbols, dingbats, maths, scripts) or too thin to read at 32 px are dropped by SKIP_FACES.
FAMILIES = {
    "dejavu": (("DejaVu",), "fonts-dejavu-core"),
    "liberation": (("Liberation",), "fonts-liberation2"),
    "freefont": (("Free",), "fonts-freefont-ttf"),
    "urw": (("NimbusSans", "NimbusRoman", "NimbusMono", "C059", "P052", "URWBookman", "URWGothic"),
            "fonts-urw-base35"),
    "texgyre": (("texgyre",), "fonts-texgyre"),
    "roboto": (("Roboto",), "fonts-roboto-unhinted"),
    "opensans": (("OpenSans",), "fonts-open-sans"),
    "lato": (("Lato",), "fonts-lato"),
}
TEST_FAMILY = "lato"  # never rendered in a training or validation line: test_font only
SKIP_FACES = re.compile(r"(?i)math|chorus|hairline|thin|extralight|symbol|dingbat")
MAX_CHARS = 28  # the demo's line length: longer lines learn far slower on 2 cores (issue 17's calibration)
MAX_HEIGHT = 48  # stored lines are at most this high (smaller files; the demo model reads them at 32)
PRINTABLE = "".join(chr(c) for c in range(32, 127))


@dataclass(frozen=True)
class OCRSizes:
    train: int
    val: int    # per val split (clean, degraded)
    test: int   # per test split (clean, degraded, font)


SIZES = {"small": OCRSizes(400, 24, 24), "full": OCRSizes(24000, 300, 400)}


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


def cut_line(sentence: str, rng: np.random.Generator, max_chars: int = MAX_CHARS) -> str:
    """A run of whole words of the sentence, of a random length up to max_chars: from a random start among
    those whose run reaches most of that length (one word longer than max_chars is cut)."""
    words = sentence.split()
    target = int(rng.integers(min(10, max_chars), max_chars + 1))
    runs = []
    for start in range(len(words)):
        line = words[start][:max_chars]
        for w in words[start + 1:]:
            if len(line) + 1 + len(w) > target:
                break
            line += " " + w
        runs.append(line)
    good = [r for r in runs if len(r) >= 0.6 * target] or [max(runs, key=len)]
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
    return templates[r(0, len(templates))]()[:MAX_CHARS].strip()


def sentences(rng: np.random.Generator, n: int, side: str) -> list[str]:
    """n lines on one side ('train', 'val' or 'test'): ~45% real English, 30% world, 25% symbol strings.
    Held-out sides draw only held-out sentences (text corpus / world rules), their half by held_half."""
    pools = english_pools()
    held = side != "train"
    eng = [s for src in sorted(pools) for s in pools[src]["held" if held else "train"]]
    out = []
    while len(out) < n:
        kind = rng.choice(3, p=[0.45, 0.30, 0.25])
        if kind == 0:
            s = eng[int(rng.integers(len(eng)))]
        elif kind == 1:
            s = world.caption(world.sample_split_scene(rng, held))
        else:
            s = symbol_line(rng)
            if _held_symbol(s) != held:
                continue
        if held and held_half(s) != side:
            continue
        line = s if kind == 2 else cut_line(s, rng)
        if line.strip():
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
    render_line(text, Path(font), np.random.default_rng(seed), degraded).save(path)


def build_ocr(out_dir: Path, size: str, rng: np.random.Generator, workers: int = 2) -> dict:
    sz = SIZES[size]
    fonts = font_files()
    train_families = sorted(f for f in fonts if f != TEST_FAMILY)
    (out_dir / "lines").mkdir(parents=True, exist_ok=True)
    plan = {"train": (sz.train, "train", train_families, None), "val_clean": (sz.val, "val", train_families, False),
            "val_degraded": (sz.val, "val", train_families, True), "test_clean": (sz.test, "test", train_families, False),
            "test_degraded": (sz.test, "test", train_families, True), "test_font": (sz.test, "test", [TEST_FAMILY], None)}
    summary, jobs = {}, []
    for split, (n, side, families, degraded) in plan.items():
        rows, n_degraded, used = [], 0, set()
        for i, text in enumerate(sentences(rng, n, side)):
            family = families[int(rng.integers(len(families)))]
            font = fonts[family][int(rng.integers(len(fonts[family])))]
            d = bool(rng.random() < 0.5) if degraded is None else degraded
            rel = f"lines/{split}_{i:05d}.png"
            jobs.append((text, str(font), int(rng.integers(2**63)), d, str(out_dir / rel)))
            rows.append((rel, text))
            n_degraded += d
            used.add(family)
        write_csv(out_dir / f"{split}.csv", rows)
        summary[split] = {"lines": len(rows), "degraded": n_degraded, "families": len(used),
                          "chars": len(set("".join(t for _, t in rows)))}
    with multiprocessing.get_context("fork").Pool(workers) as pool:  # each line draws from its own seed
        for _ in tqdm(pool.imap_unordered(_render_job, jobs, chunksize=64), total=len(jobs), desc="ocr lines",
                      leave=False):
            pass
    return summary
