"""Converters of public datasets (scripts/prepare_*.py), each on a tiny fixture folder in the real layout.

The fixtures are written here (a few short tones as FLAC/WAV, a few PNGs): nothing is downloaded.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import load_script

librispeech, ljspeech, coco, text = (load_script(n) for n in
                                     ["prepare_librispeech", "prepare_ljspeech", "prepare_coco", "prepare_text"])
ConversionError = sys.modules["convert_common"].ConversionError  # the class the scripts raise


def _audio(path: Path, sr: int = 16000, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.3 * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), sr, format=fmt)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- LibriSpeech

@pytest.fixture
def libri(tmp_path) -> Path:
    """LibriSpeech/dev-clean/<speaker>/<chapter>/ with 2 chapters, 5 utterances."""
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, chap, n in [("84", "121123", 3), ("174", "50561", 2)]:
        d = root / spk / chap
        lines = []
        for i in range(n):
            uid = f"{spk}-{chap}-{i:04d}"
            _audio(d / f"{uid}.flac", fmt="FLAC")
            lines.append(f"{uid} DON'T YOU HEAR HIS CALL")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_converts_every_utterance(libri, tmp_path):
    out = tmp_path / "manifests" / "dev.csv"
    s = librispeech.convert(libri, out)
    rows = _csv(out)
    assert s == {"rows": 5, "skipped": 0, "speakers": 2} and len(rows) == 5
    assert rows[0]["text"] == "don't you hear his call"
    assert {r["speaker"] for r in rows} == {"librispeech:84", "librispeech:174"}
    for r in rows:  # paths are relative to the manifest's folder
        assert sf.info(out.parent / r["wav"]).samplerate == 16000


def test_librispeech_counts_missing_transcript_and_unreadable_audio(libri, tmp_path, capsys):
    chap = libri / "84" / "121123"
    _audio(chap / "84-121123-0099.flac", fmt="FLAC")             # audio with no transcript line
    (chap / "84-121123-0001.flac").write_bytes(b"not a flac")    # unreadable
    trans = chap / "84-121123.trans.txt"
    trans.write_text(trans.read_text() + "84-121123-0007 A LINE WHOSE AUDIO IS MISSING\n")
    out = tmp_path / "dev.csv"
    with pytest.raises(ConversionError, match="more than --max-skip-fraction"):
        librispeech.convert(libri, out)
    s = librispeech.convert(libri, out, max_skip_fraction=0.5)
    assert s["rows"] == 4 and s["skipped"] == 3
    err = capsys.readouterr().err
    for reason in ["no transcript", "unreadable audio", "missing audio"]:
        assert reason in err
    assert "84-121123.trans.txt:4" in err  # the bad line is named by file and line


def test_librispeech_cli_reports_a_wrong_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        librispeech.run(lambda: librispeech.main(["--root", str(tmp_path), "--out", str(tmp_path / "x.csv")]))
    assert e.value.code == 1 and "no *.trans.txt" in capsys.readouterr().err


# ---------------------------------------------------------------- LJSpeech

@pytest.fixture
def lj(tmp_path) -> Path:
    root = tmp_path / "LJSpeech-1.1"
    lines = []
    for i in range(1, 7):
        uid = f"LJ001-{i:04d}"
        _audio(root / "wavs" / f"{uid}.wav", sr=22050)
        lines.append(f"{uid}|Printing, in 1{i} senses.|Printing, in one {i} senses.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ljspeech_splits_and_normalizes(lj, tmp_path):
    s = ljspeech.convert(lj, tmp_path / "lj", val=2)
    train, val = _csv(tmp_path / "lj" / "train.csv"), _csv(tmp_path / "lj" / "val.csv")
    assert (s["train"], s["val"], s["skipped"]) == (4, 2, 0)
    assert train[0]["text"] == "printing in one senses" and train[0]["speaker"] == "ljspeech"
    assert [r["wav"].rsplit("/", 1)[-1] for r in val] == ["LJ001-0005.wav", "LJ001-0006.wav"]
    assert sf.info(tmp_path / "lj" / val[0]["wav"]).samplerate == 22050


def test_ljspeech_counts_bad_lines_and_files(lj, tmp_path, capsys):
    (lj / "wavs" / "LJ001-0002.wav").write_bytes(b"RIFF garbage")
    (lj / "wavs" / "LJ001-0003.wav").unlink()
    with open(lj / "metadata.csv", "a") as f:
        f.write("no pipes on this line\nLJ001-0009||\n")
    s = ljspeech.convert(lj, tmp_path / "lj", val=1, max_skip_fraction=0.6)
    assert s["train"] + s["val"] == 4 and s["skipped"] == 4
    err = capsys.readouterr().err
    assert "metadata.csv:7: malformed line" in err and "unreadable audio" in err and "missing audio" in err
    with pytest.raises(ConversionError, match="metadata.csv not found"):
        ljspeech.convert(tmp_path / "nowhere", tmp_path / "lj")


# ---------------------------------------------------------------- COCO

@pytest.fixture
def cocodir(tmp_path) -> Path:
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    images, anns = [], []
    for i in range(1, 4):
        name = f"{i:012d}.jpg"
        Image.new("RGB", (32, 24), (40 * i, 90, 200)).save(root / "val2017" / name)
        images.append({"id": i, "file_name": name, "width": 32, "height": 24})
        anns += [{"id": 10 * i + k, "image_id": i, "caption": f"  A photo  number {i}, caption {k}.\n"}
                 for k in range(2)]
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def test_coco_one_row_per_caption(cocodir, tmp_path):
    out = tmp_path / "coco_val.jsonl"
    s = coco.convert(cocodir / "annotations" / "captions_val2017.json", cocodir / "val2017", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert s == {"rows": 6, "images": 3, "skipped": 0}
    assert rows[0]["caption"] == "A photo number 1, caption 0."
    assert Image.open(out.parent / rows[0]["image"]).size == (32, 24)
    s = coco.convert(cocodir / "annotations" / "captions_val2017.json", cocodir / "val2017", out, one_per_image=True)
    assert s["rows"] == 3


def test_coco_counts_missing_and_unreadable_images(cocodir, tmp_path, capsys):
    ann = cocodir / "annotations" / "captions_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"] += [{"image_id": 99, "caption": "orphan"}, {"image_id": 1, "caption": "  "}]
    ann.write_text(json.dumps(data))
    (cocodir / "val2017" / f"{2:012d}.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    (cocodir / "val2017" / f"{3:012d}.jpg").unlink()
    s = coco.convert(ann, cocodir / "val2017", tmp_path / "c.jsonl", max_skip_fraction=0.9)
    assert s["rows"] == 2 and s["skipped"] == 6
    err = capsys.readouterr().err
    for reason in ["unknown image id", "empty caption", "unreadable image", "missing image"]:
        assert reason in err
    ann.write_text("{not json")
    with pytest.raises(ConversionError, match=r"captions_val2017.json:1: not valid JSON"):
        coco.convert(ann, cocodir / "val2017", tmp_path / "c.jsonl")


# ---------------------------------------------------------------- text

def test_text_formats_become_one_document_per_line(tmp_path):
    tiny = tmp_path / "TinyStories-valid.txt"
    tiny.write_text("Once upon a time\nthere was a cat.\n<|endoftext|>\nThe dog ran.<|endoftext|>\n\nLast story.\n")
    jl = tmp_path / "docs.jsonl"
    jl.write_text(json.dumps({"text": "A json\ndocument."}) + "\n" + json.dumps({"text": "Another one."}) + "\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("line one\n\nline two\n")
    s = text.convert([tiny, jl, plain], tmp_path / "corpus", val_percent=0.0)
    assert s == {"train": 7, "val": 0, "skipped": 0}
    assert (tmp_path / "corpus" / "train.txt").read_text().splitlines() == [
        "Once upon a time there was a cat.", "The dog ran.", "Last story.", "A json document.", "Another one.",
        "line one", "line two"]
    s = text.convert([tiny, jl, plain], tmp_path / "corpus", val_percent=50.0)
    assert s["train"] + s["val"] == 7 and s["val"] > 0  # the split is a stable hash of each document


def test_text_counts_bad_jsonl_lines(tmp_path, capsys):
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "fine"}\n{broken\n{"body": "no text field"}\n{"text": "also fine"}\n')
    with pytest.raises(ConversionError, match="more than --max-skip-fraction"):
        text.convert([jl], tmp_path / "c")
    assert not (tmp_path / "c" / "train.txt").exists()
    s = text.convert([jl], tmp_path / "c", max_skip_fraction=0.5, val_percent=0.0)
    assert s == {"train": 2, "val": 0, "skipped": 2}
    err = capsys.readouterr().err
    assert f"{jl}:2: invalid JSON" in err and f"{jl}:3: no string field 'text'" in err
    with pytest.raises(ConversionError, match="no such file"):
        text.convert([tmp_path / "missing.txt"], tmp_path / "c")
