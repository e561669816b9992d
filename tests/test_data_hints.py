"""A missing data file's error names the command that makes that file (omni/data/hints.py)."""
from __future__ import annotations

import pytest

from omni.data import images, speech, text
from omni.data.hints import data_hint


def error(reader, path) -> str:
    with pytest.raises(FileNotFoundError) as e:
        reader(path)
    assert str(path) in str(e.value)
    return str(e.value)


def test_missing_demo_part_names_that_part(tmp_path):
    demo = tmp_path / "data" / "demo"
    msg = error(speech.read_manifest, demo / "asr" / "train.csv")
    assert f"scripts/make_demo_data.py --out {demo} --only asr`" in msg
    assert "--only tts`" in error(speech.read_manifest, demo / "tts" / "val_world.csv")
    assert "--only images`" in error(images.read_manifest, demo / "images" / "train.jsonl")
    assert "--only text`" in error(text.read_documents, demo / "text" / "world_val.txt")
    assert "--only sft`" in data_hint("data/demo/sft/train.jsonl")
    assert data_hint("data/demo/asr/train.csv") == \
        "build it with `python scripts/make_demo_data.py --out data/demo --only asr`"


def test_missing_public_dataset_names_its_converter(tmp_path):
    msg = error(speech.read_manifest, tmp_path / "data" / "librispeech" / "train.csv")
    assert "scripts/prepare_librispeech.py --root" in msg and "make_demo_data" not in msg
    assert f"--out {tmp_path / 'data' / 'librispeech' / 'train.csv'}" in msg
    msg = error(speech.read_manifest, tmp_path / "data" / "ljspeech" / "val.csv")
    assert "scripts/prepare_ljspeech.py --root" in msg and f"--out {tmp_path / 'data' / 'ljspeech'}`" in msg
    for folder in ("coco", "images"):
        msg = error(images.read_manifest, tmp_path / "data" / folder / "val.jsonl")
        assert "scripts/prepare_coco.py --captions" in msg
    msg = error(text.read_documents, tmp_path / "data" / "text" / "train.txt")
    assert "scripts/prepare_text.py --inputs" in msg and f"--out {tmp_path / 'data' / 'text'}`" in msg


def test_anywhere_else_the_readers_kind_picks_the_suggestions(tmp_path):
    msg = error(speech.read_manifest, tmp_path / "mine.csv")
    assert "--only asr`" in msg and "prepare_librispeech.py" in msg and "prepare_ljspeech.py" in msg
    assert "prepare_coco.py" not in msg
    msg = error(text.read_documents, tmp_path / "corpus.txt")
    assert "--only text`" in msg and "prepare_text.py" in msg and "prepare_librispeech.py" not in msg
    msg = error(images.read_manifest, tmp_path / "caps.jsonl")
    assert "--only images`" in msg and "prepare_coco.py" in msg
    generic = data_hint(tmp_path / "x.csv")
    assert all(s in generic for s in ("make_demo_data.py", "prepare_text.py", "prepare_librispeech.py",
                                      "prepare_ljspeech.py", "prepare_coco.py"))
