"""The built-in *world*: scenes of 1–3 coloured shapes, their pictures, and the language about them.

Every modality of the demo is grounded here: a scene is drawn from a numpy Generator, rendered
with Pillow, described by a caption, and questioned with exact answers. The language is about a hundred
words, so a CPU model learns it in minutes, yet it has many thousands of distinct sentences, so held-out
sentences and scenes test composition rather than memory.

    rng = np.random.default_rng(0)
    scene = sample_scene(rng)                 # Scene(objects=(Obj(...), ...), background=(r, g, b))
    image = render(scene, size=64)            # PIL.Image RGB, size x size
    caption(scene)                            # "a large red circle on the left and a small blue star at the top"
    for q in questions(scene, rng): q.text, q.answer, q.task, q.statement
    answer(scene, "what colour is the star")  # "blue" — parses the question, so it checks any generator

Held-out rule: `is_held_out(sentence)` picks ~10% of the descriptive sentences (captions and statements) by
a stable hash; a scene is held out when its caption is. Builders put held-out sentences and scenes only in
val/test splits. Questions form a closed set of ~150 templates and are never held out: a held-out SFT example
is an unseen scene (or voice) asked a known question.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
COLOURS = {  # saturated and far apart, so colour is unambiguous after downsampling to 32 px
    "red": (220, 35, 35), "green": (30, 165, 60), "blue": (35, 75, 225), "yellow": (245, 215, 30),
    "purple": (140, 50, 185), "orange": (250, 135, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}
SIZES = ("small", "large")
POSITIONS = ("left", "top", "centre", "bottom", "right")  # reading order of canonical captions
POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top",
                   "bottom": "at the bottom", "centre": "in the centre"}
POSITION_XY = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8),
               "centre": (0.5, 0.5)}  # object centres as fractions of the image side
RADIUS = {"small": 0.09, "large": 0.15}  # fraction of the image side; large shapes at adjacent slots just miss
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TASKS = ("colour", "count", "position", "shape", "yesno")
BACKGROUNDS = [  # muted mid-tones: every object colour, white and black included, stands out on them
    (128, 128, 128), (96, 116, 136), (150, 132, 104), (92, 128, 108), (136, 126, 116), (110, 110, 90),
    (140, 110, 110), (100, 130, 140),
]
HELD_OUT_PERCENT = 10.0
_QUESTION_START = ("what ", "how ", "where ", "is there ")


@dataclass(frozen=True)
class Obj:
    """One shape; (dx, dy) is a small offset from its slot, as a fraction of the image side."""
    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0


@dataclass(frozen=True)
class Scene:
    """1–3 objects at distinct positions on a plain background (RGB)."""
    objects: tuple[Obj, ...]
    background: tuple[int, int, int] = (128, 128, 128)

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": list(self.background)}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(tuple(Obj(**o) for o in d["objects"]), tuple(d["background"]))


@dataclass(frozen=True)
class Question:
    """A question with its exact answer, the task it tests, and the same fact as a declarative sentence."""
    text: str
    answer: str
    task: str
    statement: str


# ---------------------------------------------------------------- sampling

def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Draw a scene: 1–3 objects (uniform) with distinct positions, random shape/colour/size, jittered slots."""
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    if not 1 <= n <= len(POSITIONS):
        raise ValueError(f"n_objects must be in 1..{len(POSITIONS)}, got {n}")
    slots = rng.choice(len(POSITIONS), size=n, replace=False)
    objects = []
    for s in slots:
        dx, dy = rng.uniform(-0.03, 0.03, size=2)
        objects.append(Obj(shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
                           size=SIZES[rng.integers(2)], position=POSITIONS[s],
                           dx=round(float(dx), 3), dy=round(float(dy), 3)))  # rounded: exact JSON round trip
    base = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    jitter = rng.integers(-12, 13, size=3)
    background = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(base, jitter))
    return Scene(tuple(objects), background)


# ---------------------------------------------------------------- rendering

def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.68, cy), (cx, cy + r), (cx - r * 0.68, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "heart":  # the classic parametric heart, scaled into the radius
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x * r / 17, cy - y * r / 17 - r * 0.05))
        return pts
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """Draw the scene as an RGB image of size x size; drawn `supersample` times larger, then downsampled
    (antialiased edges: a small ViT should see shapes, not staircase artefacts)."""
    big = size * supersample
    img = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fx, fy = POSITION_XY[o.position]
        cx, cy, r = (fx + o.dx) * big, (fy + o.dy) * big, RADIUS[o.size] * big
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=colour)
    return img.resize((size, size), Image.LANCZOS) if supersample > 1 else img


# ---------------------------------------------------------------- language

def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(o: Obj) -> str:
    """"a large red circle on the left"."""
    return f"{article(o.size)} {o.size} {o.colour} {o.shape} {POSITION_PHRASE[o.position]}"


def caption(scene: Scene) -> str:
    """Canonical caption: objects in reading order (left, top, centre, bottom, right) joined by "and";
    one caption per arrangement, so it also serves as the scene's key for held-out splits."""
    objs = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
    return " and ".join(object_phrase(o) for o in objs)


def hard_negatives(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Captions of the scene with one thing wrong (NegCLIP's hard negatives): one object's shape replaced by
    another shape, one object's colour by another colour, and (with two shapes or more) two objects' shapes
    swapped. A contrastive image encoder must tell them from the true caption, which in-batch captions rarely
    ask of it. Only training-side captions: a held-out one (`is_held_out`) is never drawn, so the text tower
    meets no val or test caption in training."""
    out = []
    for attr, values in (("shape", SHAPES), ("colour", tuple(COLOURS))):
        k = int(rng.integers(len(scene.objects)))
        other = [v for v in values if v != getattr(scene.objects[k], attr)]
        for i in rng.permutation(len(other)):
            objs = list(scene.objects)
            objs[k] = replace(objs[k], **{attr: other[int(i)]})
            text = caption(Scene(tuple(objs), scene.background))
            if not is_held_out(text):
                out.append(text)
                break
    pairs = [(i, j) for i in range(len(scene.objects)) for j in range(i + 1, len(scene.objects))
             if scene.objects[i].shape != scene.objects[j].shape]
    if pairs:  # two objects' shapes swapped: the same shapes, at the wrong places (binds shape to position)
        i, j = pairs[int(rng.integers(len(pairs)))]
        objs = list(scene.objects)
        objs[i], objs[j] = replace(objs[i], shape=objs[j].shape), replace(objs[j], shape=objs[i].shape)
        text = caption(Scene(tuple(objs), scene.background))
        if not is_held_out(text):
            out.append(text)
    return out


def _plural(shape: str) -> str:
    return shape + "s"


def _count_statement(n: int, what: str) -> str:
    if n == 1:
        return f"there is one {what}"
    return f"there are {NUMBERS[n]} {_plural(what)}"


def questions(scene: Scene, rng: np.random.Generator, per_task: int = 1) -> list[Question]:
    """Up to `per_task` questions of every task in TASKS (fewer where the scene allows fewer), each with
    its exact answer. Objects are named so that the reference is unique in the scene."""
    objs = list(scene.objects)
    shape_count = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    out: dict[str, list[Question]] = {t: [] for t in TASKS}

    for o in objs:  # colour
        ref = o.shape if shape_count[o.shape] == 1 else f"{o.shape} {POSITION_PHRASE[o.position]}"
        out["colour"].append(Question(f"what colour is the {ref}", o.colour, "colour", f"the {ref} is {o.colour}"))

    n = len(objs)  # count: all shapes, one shape kind, one colour
    out["count"].append(Question("how many shapes are there", NUMBERS[n], "count", _count_statement(n, "shape")))
    s = SHAPES[rng.integers(len(SHAPES))] if rng.random() < 0.3 else objs[rng.integers(n)].shape
    k = shape_count[s]
    out["count"].append(Question(f"how many {_plural(s)} are there", NUMBERS[k], "count",
                                 _count_statement(k, s) if k else f"there are no {_plural(s)}"))
    c = objs[rng.integers(n)].colour
    k = sum(o.colour == c for o in objs)
    out["count"].append(Question(f"how many {c} shapes are there", NUMBERS[k], "count",
                                 _count_statement(k, f"{c} shape")))

    for o in objs:  # position: only objects whose colour+shape is unique
        if sum((p.colour, p.shape) == (o.colour, o.shape) for p in objs) == 1:
            where = POSITION_PHRASE[o.position]
            out["position"].append(Question(f"where is the {o.colour} {o.shape}", where, "position",
                                            f"the {o.colour} {o.shape} is {where}"))

    for o in objs:  # shape
        where = POSITION_PHRASE[o.position]
        out["shape"].append(Question(f"what shape is {where}", o.shape, "shape",
                                     f"the shape {where} is {article(o.shape)} {o.shape}"))

    for _ in range(2 * per_task):  # yes/no: half about objects that are there
        if rng.random() < 0.5:
            o = objs[rng.integers(n)]
            c, s = o.colour, o.shape
        else:
            c, s = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        yes = any((o.colour, o.shape) == (c, s) for o in objs)
        out["yesno"].append(Question(f"is there {article(c)} {c} {s}", "yes" if yes else "no", "yesno",
                                     f"yes there is {article(c)} {c} {s}" if yes else f"no there is no {c} {s}"))

    picked = []
    for t in TASKS:
        qs = out[t]
        idx = rng.permutation(len(qs))[:per_task]
        picked.extend(qs[i] for i in sorted(idx))
    return picked


def all_questions() -> list[str]:
    """The closed set of question texts `questions` can produce (~150), e.g. to record each once per voice."""
    qs = [f"what colour is the {s}" for s in SHAPES]
    qs += [f"what colour is the {s} {POSITION_PHRASE[p]}" for s in SHAPES for p in POSITIONS]
    qs += ["how many shapes are there"] + [f"how many {_plural(s)} are there" for s in SHAPES]
    qs += [f"how many {c} shapes are there" for c in COLOURS]
    qs += [f"where is the {c} {s}" for c in COLOURS for s in SHAPES]
    qs += [f"what shape is {POSITION_PHRASE[p]}" for p in POSITIONS]
    qs += [f"is there {article(c)} {c} {s}" for c in COLOURS for s in SHAPES]
    return qs


_PHRASE_POSITION = {v: k for k, v in POSITION_PHRASE.items()}
_POS_RE = "|".join(POSITION_PHRASE.values())


def answer(scene: Scene, question: str) -> str | None:
    """Answer a world question from the scene by parsing its text (independently of `questions`), or None
    when it is not a world question or its reference is ambiguous. Used by tests and SFT evaluation."""
    q = " ".join(question.lower().strip().rstrip("?").split())
    objs = scene.objects
    if m := re.fullmatch(rf"what colour is the (\w+)(?: ({_POS_RE}))?", q):
        hits = [o for o in objs if o.shape == m[1] and (not m[2] or o.position == _PHRASE_POSITION[m[2]])]
        return hits[0].colour if len(hits) == 1 else None
    if q == "how many shapes are there":
        return NUMBERS[len(objs)]
    if m := re.fullmatch(r"how many (\w+) shapes are there", q):
        return NUMBERS[sum(o.colour == m[1] for o in objs)] if m[1] in COLOURS else None
    if m := re.fullmatch(r"how many (\w+)s are there", q):
        return NUMBERS[sum(o.shape == m[1] for o in objs)] if m[1] in SHAPES else None
    if m := re.fullmatch(r"where is the (\w+) (\w+)", q):
        hits = [o for o in objs if (o.colour, o.shape) == (m[1], m[2])]
        return POSITION_PHRASE[hits[0].position] if len(hits) == 1 else None
    if m := re.fullmatch(rf"what shape is ({_POS_RE})", q):
        hits = [o for o in objs if o.position == _PHRASE_POSITION[m[1]]]
        return hits[0].shape if hits else None
    if m := re.fullmatch(r"is there an? (\w+) (\w+)", q):
        return "yes" if any((o.colour, o.shape) == (m[1], m[2]) for o in objs) else "no"
    return None


_OBJECT_RE = re.compile(rf"an? (\w+) (\w+) (\w+) ({_POS_RE})")


def parse_caption(text: str) -> tuple[Obj, ...] | None:
    """The objects a canonical world caption names ("a small red circle on the left and ..."), or None when
    the text is not one (an emoji caption, a COCO caption). The inverse of `caption`, offsets aside."""
    objs = []
    for phrase in text.split(" and "):
        m = _OBJECT_RE.fullmatch(phrase)
        if not m or m[1] not in SIZES or m[2] not in COLOURS or m[3] not in SHAPES:
            return None
        objs.append(Obj(shape=m[3], colour=m[2], size=m[1], position=_PHRASE_POSITION[m[4]]))
    return tuple(objs)


def document(scene: Scene, rng: np.random.Generator, n_questions: int = 3) -> str:
    """A text document grounding questions in a caption: "<caption>. <q>? <a>. ... <statement>."
    (answers-in-context for the text LM: it learns to read the answer off the caption)."""
    qs = questions(scene, rng)
    pick = [qs[i] for i in sorted(rng.permutation(len(qs))[:n_questions])]
    parts = [caption(scene) + "."] + [f"{q.text}? {q.answer}." for q in pick]
    st = qs[rng.integers(len(qs))].statement
    if not is_held_out(st):
        parts.append(st + ".")
    return " ".join(parts)


# ---------------------------------------------------------------- held-out rule

def is_question(sentence: str) -> bool:
    return sentence.startswith(_QUESTION_START)


def is_held_out(sentence: str, percent: float = HELD_OUT_PERCENT) -> bool:
    """True for ~percent% of descriptive sentences (captions, statements), chosen by a stable hash.
    Questions and phrases under 4 words (answers) are a small closed set and never held out."""
    s = " ".join(sentence.lower().split()).rstrip(".?")
    if is_question(s) or len(s.split()) < 4:
        return False
    h = int(hashlib.sha256(("world:" + s).encode()).hexdigest()[:8], 16)
    return h % 10000 < percent * 100


def scene_is_held_out(scene: Scene) -> bool:
    return is_held_out(caption(scene))


def sample_split_scene(rng: np.random.Generator, held_out: bool) -> Scene:
    """Draw scenes until one falls on the requested side of the held-out rule (~10 draws for held-out)."""
    while True:
        s = sample_scene(rng)
        if scene_is_held_out(s) == held_out:
            return s


def vocabulary() -> list[str]:
    """Every word of the world language (~80), sorted; for documentation and tests."""
    words = set()
    for q in all_questions():
        words.update(q.split())
    for parts in (SHAPES, COLOURS, SIZES, NUMBERS, [_plural(s) for s in SHAPES]):
        words.update(parts)
    for p in POSITION_PHRASE.values():
        words.update(p.split())
    words.update("a an and there is are no yes one the shape".split())
    return sorted(words)
