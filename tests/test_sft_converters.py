"""SFT converters (scripts/prepare_llava.py, scripts/prepare_sft.py) on tiny fixture folders in the real layouts.

The fixtures are written here (a few PNGs, a few short WAVs): nothing is downloaded.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import load_script

llava, sft = load_script("prepare_llava"), load_script("prepare_sft")
ConversionError = sys.modules["convert_common"].ConversionError  # the class the scripts raise


def _png(path: Path, colour=(200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), colour).save(path)


def _wav(path: Path, sr: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.2 * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), sr)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _turns(*pairs) -> list[dict]:
    return [{"from": f, "value": v} for f, v in pairs]


# ---------------------------------------------------------------- LLaVA-Instruct

@pytest.fixture
def llavadir(tmp_path) -> tuple[Path, Path]:
    """llava/llava_instruct.json and coco/train2017/ with 3 images: (json, image folder)."""
    images = tmp_path / "coco" / "train2017"
    for i in range(1, 4):
        _png(images / f"{i:012d}.png", (60 * i, 90, 200))
    entries = [
        {"id": "a", "image": f"{1:012d}.png", "conversations": _turns(
            ("human", "<image>\nWhat colour is the bus?"), ("gpt", "The bus is red."),
            ("human", "Is it moving?"), ("gpt", "No,\nit is parked."))},
        {"id": "b", "image": f"{2:012d}.png", "conversations": _turns(
            ("human", "Hello."), ("gpt", "Hi!"), ("human", "What is shown here?\n<image>"), ("gpt", "A square."))},
        {"id": "c", "conversations": _turns(("human", "Tell me a joke."), ("gpt", "Knock knock."))},
        {"id": 7, "image": f"{3:012d}.png", "conversations": _turns(
            ("system", "Be brief."), ("human", "Describe it."), ("gpt", "Blue."))},
    ]
    path = tmp_path / "llava" / "llava_instruct.json"
    path.parent.mkdir()
    path.write_text(json.dumps(entries))
    return path, images


def test_llava_multi_turn_with_the_image_on_its_turn(llavadir, tmp_path):
    js, images = llavadir
    out = tmp_path / "sft" / "llava.jsonl"
    s = llava.convert(js, images, out)
    rows = _jsonl(out)
    assert s == {"rows": 4, "with_image": 3, "skipped": 0}
    assert all(r["task"] == "llava" for r in rows) and [r["id"] for r in rows] == ["a", "b", "c", "7"]
    a, b, c, d = (r["messages"] for r in rows)
    assert [m["role"] for m in a] == ["user", "assistant", "user", "assistant"]
    assert a[0]["content"] == "What colour is the bus?" and a[3]["content"] == "No,\nit is parked."
    assert [("image" in m) for m in a] == [True, False, False, False]
    assert [("image" in m) for m in b] == [False, False, True, False] and b[2]["content"] == "What is shown here?"
    assert not any("<image>" in m["content"] for r in rows for m in r["messages"])
    assert c == [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Knock knock."}]
    # an image without a placeholder goes to the first user turn (after the system turn)
    assert [m["role"] for m in d] == ["system", "user", "assistant"] and "image" in d[1] and "image" not in d[0]
    for m, colour in [(a[0], (60, 90, 200)), (b[2], (120, 90, 200)), (d[1], (180, 90, 200))]:
        assert not Path(m["image"]).is_absolute()  # relative to the JSONL's folder, resolving to the real file
        assert Image.open(out.parent / m["image"]).getpixel((0, 0)) == colour


def test_llava_counts_bad_images_and_broken_conversations(llavadir, tmp_path, capsys):
    js, images = llavadir
    entries = json.loads(js.read_text())
    ok = _turns(("human", "<image>\nWhat is it?"), ("gpt", "A thing."))
    entries += [
        {"id": "missing", "image": "nowhere.png", "conversations": ok},
        {"id": "twice", "image": f"{1:012d}.png",
         "conversations": _turns(("human", "<image>\nA?"), ("gpt", "B."), ("human", "<image> C?"), ("gpt", "D."))},
        {"id": "order", "conversations": _turns(("human", "A?"), ("human", "B?"), ("gpt", "C."))},
        {"id": "empty", "conversations": _turns(("human", "A?"), ("gpt", "  "))},
        {"id": "open", "conversations": _turns(("human", "A?"), ("gpt", "B."), ("human", "C?"))},
        {"id": "broken", "image": "broken.png", "conversations": ok},
    ]
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    js.write_text(json.dumps(entries))
    out = tmp_path / "llava.jsonl"
    with pytest.raises(ConversionError, match="more than --max-skip-fraction"):
        llava.convert(js, images, out)
    assert not out.exists()
    s = llava.convert(js, images, out, max_skip_fraction=0.7)
    assert s == {"rows": 4, "with_image": 3, "skipped": 6}
    err = capsys.readouterr().err
    for reason in ["missing image", "<image> more than once", "turns not alternating human/gpt", "empty turn",
                   "conversation not ending with gpt", "unreadable image"]:
        assert reason in err
    assert f"{js}: [4]: missing image" in err  # the bad entry is named by file and index
    assert llava.convert(js, images, out, limit=2, max_skip_fraction=0.7)["rows"] == 2


def test_llava_cli_summary_and_wrong_paths(llavadir, tmp_path, capsys):
    js, images = llavadir
    out = tmp_path / "o.jsonl"
    assert llava.main(["--json", str(js), "--images", str(images), "--out", str(out), "--limit", "3"]) == 0
    assert "3 conversations (2 with an image), 0 skipped" in capsys.readouterr().out
    for argv, msg in [(["--json", str(tmp_path / "no.json"), "--images", str(images)], "no.json not found"),
                      (["--json", str(js), "--images", str(tmp_path / "noimg")], "noimg is not a folder")]:
        with pytest.raises(SystemExit) as e:
            llava.run(lambda: llava.main(argv + ["--out", str(out)]))
        assert e.value.code == 1 and msg in capsys.readouterr().err


# ---------------------------------------------------------------- prepared manifests -> SFT rows

@pytest.fixture
def manifests(tmp_path) -> tuple[Path, Path, Path]:
    """coco/val.jsonl (5 captions), librispeech/dev.csv (4, with speakers), lj/train.csv (3, no speaker column)."""
    coco = tmp_path / "coco" / "val.jsonl"
    for i in range(5):
        _png(coco.parent / "val2017" / f"{i}.png", (40 * i, 0, 0))
    coco.write_text("".join(json.dumps({"image": f"val2017/{i}.png", "caption": f"picture {i}"}) + "\n"
                            for i in range(5)))
    libri = tmp_path / "librispeech" / "dev.csv"
    for i in range(4):
        _wav(libri.parent / "wavs" / f"u{i}.wav")
    libri.write_text("wav,text,speaker\n" + "".join(f"wavs/u{i}.wav,words {i},librispeech:{i}\n" for i in range(4)))
    lj = tmp_path / "lj" / "train.csv"
    for i in range(3):
        _wav(lj.parent / "wavs" / f"lj{i}.wav", sr=22050)
    lj.write_text("wav,text\n" + "".join(f"wavs/lj{i}.wav,spoken {i}\n" for i in range(3)))
    return coco, libri, lj


def test_sft_rows_from_caption_and_speech_manifests(manifests, tmp_path):
    coco, libri, lj = manifests
    out = tmp_path / "mix" / "sft" / "train.jsonl"
    s = sft.convert(out, [coco], [libri, lj])
    rows = _jsonl(out)
    assert s == {"rows": 12, "caption": 5, "transcribe": 7, "skipped": 0}
    caps = [r for r in rows if r["task"] == "caption"]
    asr = [r for r in rows if r["task"] == "transcribe"]
    for r in caps:
        assert set(r) == {"prompt", "answer", "image", "task"} and r["prompt"] in sft.CAPTION_PROMPTS
        assert Image.open(out.parent / r["image"]).getpixel((0, 0)) == (40 * int(r["answer"][-1]), 0, 0)
    for r in asr:
        assert r["prompt"] == sft.TRANSCRIBE_PROMPT and "image" not in r
        assert sf.info(out.parent / r["audio"]).frames > 0
        assert r.get("speaker") == ("librispeech:" + r["answer"][-1] if r["answer"].startswith("words") else None)
    assert sorted(r["answer"] for r in asr) == [f"spoken {i}" for i in range(3)] + [f"words {i}" for i in range(4)]


def test_sft_subset_and_seed(manifests, tmp_path):
    coco, libri, lj = manifests
    outs = [tmp_path / f"o{k}" / "sft.jsonl" for k in range(3)]
    for out, seed in zip(outs, [3, 3, 4]):
        assert sft.main(["--images", str(coco), "--speech", str(libri), "--speech", str(lj), "--out", str(out),
                         "--max-per-source", "2", "--seed", str(seed)]) == 0
    rows = _jsonl(outs[0])
    assert [sum(r["answer"].startswith(p) for r in rows) for p in ["picture", "words", "spoken"]] == [2, 2, 2]
    assert outs[0].read_text() == outs[1].read_text()  # same seed, same rows in the same order
    assert outs[0].read_text() != outs[2].read_text()


def test_sft_counts_missing_media_and_reports_wrong_paths(manifests, tmp_path, capsys):
    coco, libri, lj = manifests
    (coco.parent / "val2017" / "2.png").unlink()
    (libri.parent / "wavs" / "u1.wav").unlink()
    out = tmp_path / "sft.jsonl"
    with pytest.raises(ConversionError, match="more than --max-skip-fraction"):
        sft.convert(out, [coco], [libri])
    s = sft.convert(out, [coco], [libri], max_skip_fraction=0.3)
    assert s == {"rows": 7, "caption": 4, "transcribe": 3, "skipped": 2}
    err = capsys.readouterr().err
    assert f"{coco}: row 3: missing image" in err and f"{libri}: row 2: missing audio" in err
    for argv, msg in [(["--images", str(tmp_path / "nope.jsonl")], "image manifest not found"),
                      (["--speech", str(coco)], "missing column(s)"), ([], "nothing to convert")]:
        with pytest.raises(SystemExit) as e:
            sft.run(lambda: sft.main(argv + ["--out", str(out)]))
        assert e.value.code == 1 and msg in capsys.readouterr().err
