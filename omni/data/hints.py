"""What to run to make a missing data file: the hint each reader's FileNotFoundError ends with.

    >>> data_hint("data/demo/asr/train.csv")
    'build it with `python scripts/make_demo_data.py --out data/demo --only asr`'
"""
from __future__ import annotations

from pathlib import Path

# Folders of the built-in dataset: scripts/make_demo_data.py --out D writes D/<part>/. Keep in step with make_demo_data.BUILDERS (not imported: it pulls in every builder).
DEMO_PARTS = ("text", "asr", "tts", "images", "sft", "ocr")

# The converter of each public dataset, by the folder README's "Public datasets" commands write to.
_README = "(README, Data)"


def _librispeech(path: Path) -> str:
    return (f"convert LibriSpeech with `python scripts/prepare_librispeech.py --root data/LibriSpeech/<subset> "
            f"--out {path}` {_README}")


def _ljspeech(path: Path) -> str:
    return (f"convert LJSpeech with `python scripts/prepare_ljspeech.py --root data/LJSpeech-1.1 "
            f"--out {path.parent}` {_README}")


def _coco(path: Path) -> str:
    return (f"convert COCO captions with `python scripts/prepare_coco.py --captions "
            f"data/coco/annotations/captions_<split>2017.json --images data/coco/<split>2017 --out {path}` "
            f"{_README}")


def _text(path: Path) -> str:
    return f"convert a corpus with `python scripts/prepare_text.py --inputs <files> --out {path.parent}` {_README}"


def _mjsynth(path: Path) -> str:
    return (f"convert MJSynth with `python scripts/prepare_mjsynth.py --root data/mjsynth/mnt/ramdisk/max/90kDICT32px "
            f"--annotation annotation_<split>.txt --out {path}` {_README}")


FOLDERS = {"librispeech": _librispeech, "ljspeech": _ljspeech, "coco": _coco, "images": _coco, "text": _text,
           "ocr": _mjsynth, "mjsynth": _mjsynth}
# What a reader of each kind suggests for a path in no known folder.
GENERIC = {
    "text": ("text", "scripts/prepare_text.py"),
    "speech": ("asr", "scripts/prepare_librispeech.py (ASR) or scripts/prepare_ljspeech.py (TTS)"),
    "images": ("images", "scripts/prepare_coco.py"),
    "sft": ("sft", "scripts/prepare_sft.py (caption and transcription rows from prepared manifests) or "
                   "scripts/prepare_llava.py (LLaVA-Instruct)"),
    "ocr": ("ocr", "scripts/prepare_mjsynth.py (MJSynth-style word images)"),
}
CONVERTERS = ("scripts/prepare_text.py (text), scripts/prepare_librispeech.py (ASR), "
              "scripts/prepare_ljspeech.py (TTS) or scripts/prepare_coco.py (images)")


def data_hint(path: str | Path, kind: str | None = None) -> str:
    """The command that makes the file `path`: for the built-in dataset (`<out>/demo/<part>/...`),
    make_demo_data.py building that part alone; for the folders the public datasets are converted into
    (data/librispeech, data/ljspeech, data/coco or data/images, data/text), their converter; else the
    built-in data of the reader's `kind` ("text", "speech", "images") and the converters that fit it."""
    path = Path(path)
    names = [p.lower() for p in path.parts]
    for i in range(len(names) - 1):
        if names[i] == "demo" and names[i + 1] in DEMO_PARTS:
            return (f"build it with `python scripts/make_demo_data.py --out {Path(*path.parts[:i + 1])} "
                    f"--only {names[i + 1]}`")
    for i in range(len(names) - 1):           # data/<dataset>/...
        if names[i] == "data" and names[i + 1] in FOLDERS:
            return FOLDERS[names[i + 1]](path)
    part, converters = GENERIC.get(kind, ("", CONVERTERS))
    only = f" --only {part}" if part else ""
    return (f"build the built-in data with `python scripts/make_demo_data.py --out data/demo{only}`, or convert "
            f"your own with {converters} {_README}")
