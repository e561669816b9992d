"""The built-in dataset (scripts/make_demo_data.py, omni/builtin): splits, held-out rules, determinism.

One small build per session (~10-20 s on 2 cores) is shared by the tests; a second one with the same seed
checks determinism.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omni.builtin import speech, world
from omni.builtin.spoken import HELD_OUT_ACCENTS, HELD_OUT_FLITE, TTS_VOICES, VAL_ACCENTS
from omni.builtin.text import MissingSource

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["bible", "espeak-ng", "flite", "sox"]
needs_packages = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                    reason="system packages missing: run `bash scripts/setup_system.sh`")


def _cli():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert _cli().main(["--out", str(out), "--size", "small", "--seed", "3"]) == 0
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def manifests(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".csv", ".jsonl", ".txt"))


# ---------------------------------------------------------------- the world (no system packages needed)

def test_answers_agree_with_questions_on_random_scenes():
    rng = np.random.default_rng(0)
    tasks = set()
    for _ in range(2000):
        scene = world.sample_scene(rng)
        for q in world.questions(scene, rng, per_task=2):
            assert world.answer(scene, q.text) == q.answer, (scene, q)
            tasks.add(q.task)
    assert tasks == set(world.TASKS)


def test_scene_round_trip_render_and_caption():
    rng = np.random.default_rng(1)
    scene = world.sample_scene(rng, n_objects=3)
    assert world.Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    img = world.render(scene, size=48)
    assert img.size == (48, 48) and img.mode == "RGB"
    assert np.asarray(img).std() > 10  # shapes were drawn on the background
    cap = world.caption(scene)
    assert cap.count(" and ") == 2 and all(o.shape in cap for o in scene.objects)
    assert set(world.all_questions()) >= {q.text for q in world.questions(scene, rng, per_task=5)}


def test_held_out_rule_spares_questions_and_answers():
    assert not world.is_held_out("what colour is the star")
    assert not world.is_held_out("on the left")
    rng = np.random.default_rng(2)
    captions = {world.caption(world.sample_scene(rng)) for _ in range(3000)}
    share = sum(map(world.is_held_out, captions)) / len(captions)
    assert 0.05 < share < 0.15


def test_missing_program_names_package_and_command(monkeypatch):
    monkeypatch.setattr(speech.shutil, "which", lambda prog: None)
    with pytest.raises(MissingSource, match=r"espeak-ng.*apt-get install -y espeak-ng"):
        speech.require_tools(["espeak-ng"])


def test_transcript_normalization():
    assert speech.normalize_transcript("Don't go, Sir! 'Quoted' words.") == "don't go sir quoted words"
    assert speech.speakable_sentences("Mr. Smith went home. It cost 5 pounds. A fine day for a walk!") == \
        ["A fine day for a walk!"]


# ---------------------------------------------------------------- the built dataset

@needs_packages
def test_layout_and_summary(demo):
    for rel in ["text/train.txt", "text/val.txt", "text/world_val.txt", "summary.md", "summary.json"]:
        assert (demo / rel).stat().st_size > 0, rel
    for part, extra in [("asr", ["val_voices_world", "val_voices_english"]), ("tts", [])]:
        for split in ["train", "val_world", "val_english", "test_world", "test_english"] + extra:
            rows = read_csv(demo / part / f"{split}.csv")
            assert rows and list(rows[0]) == ["wav", "text", "speaker"]
            assert all(re.fullmatch(r"[a-z' ]+", r["text"]) for r in rows)
    for split in ["train", "val_world", "val_emoji", "test_world"]:
        assert read_jsonl(demo / "images" / f"{split}.jsonl")
    for split in ["train", "val", "test"]:
        assert read_jsonl(demo / "sft" / f"{split}.jsonl")
    for split in ["train"] + [f"{side}_{kind}" for side in ("val", "test") for kind in ("clean", "degraded", "long",
                                                                                          "font")]:
        rows = read_csv(demo / "ocr" / f"{split}.csv")
        assert rows and list(rows[0]) == ["image", "text"]
        lo = 40 if split.endswith("_long") else 1
        assert all(lo <= len(r["text"]) <= 64 and r["text"] == r["text"].strip() for r in rows), split
    assert "| train |" in (demo / "summary.md").read_text()
    voices = [v.speaker for v in TTS_VOICES]   # the Talker's, the default first, in turn
    n = len(voices)
    train = [r["speaker"] for r in read_csv(demo / "tts" / "train.csv")]
    assert train == (voices * len(train))[:len(train)]
    for split in ["val_world", "val_english", "test_world", "test_english"]:   # each sentence in every voice
        rows = read_csv(demo / "tts" / f"{split}.csv")
        assert [r["speaker"] for r in rows] == voices * (len(rows) // n)
        assert all(len({r["text"] for r in rows[i:i + n]}) == 1 for i in range(0, len(rows), n)), split


@needs_packages
def test_rerun_is_a_noop(demo, capsys):
    before = {p: p.stat().st_mtime_ns for p in manifests(demo)}
    assert _cli().main(["--out", str(demo), "--size", "small", "--seed", "3"]) == 0
    assert capsys.readouterr().out.count("up to date") == 6
    assert {p: p.stat().st_mtime_ns for p in manifests(demo)} == before


@needs_packages
def test_same_seed_gives_identical_manifests_and_audio(demo, tmp_path):
    assert _cli().main(["--out", str(tmp_path), "--size", "small", "--seed", "3"]) == 0
    ours = [p.relative_to(demo) for p in manifests(demo)]
    assert ours == [p.relative_to(tmp_path) for p in manifests(tmp_path)]
    for rel in ours:
        assert (demo / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    wavs = sorted(p.relative_to(demo) for p in demo.rglob("*.wav"))
    assert wavs and wavs == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.wav"))
    for rel in wavs:  # sox's dither is seeded (-R): a rebuild is the same data, so results reproduce
        assert (demo / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def _test_voice(speaker: str) -> bool:
    engine, name = speaker.split(":")
    return (engine == "espeak" and name.split("+")[0] in HELD_OUT_ACCENTS) or \
        (engine == "flite" and name in HELD_OUT_FLITE)


def _val_voice(speaker: str) -> bool:
    engine, name = speaker.split(":")
    return engine == "espeak" and name.split("+")[0] in VAL_ACCENTS


@needs_packages
def test_held_out_voices_never_in_training(demo):
    """val_voices and the test voices: never in any training split (ASR, SFT), and never each other."""
    def speakers(part: str, split: str) -> set[str]:
        if part == "asr":
            return {r["speaker"] for r in read_csv(demo / "asr" / f"{split}.csv")}
        return {r["speaker"] for r in read_jsonl(demo / "sft" / f"{split}.jsonl") if "audio" in r}

    train = speakers("asr", "train") | speakers("sft", "train")
    assert len(train) > 20 and not [s for s in train if _test_voice(s) or _val_voice(s)]
    for split in ["val_world", "val_english"]:  # held-out sentences, training voices
        assert not [s for s in speakers("asr", split) if _test_voice(s) or _val_voice(s)]
    val = speakers("asr", "val_voices_world") | speakers("asr", "val_voices_english") | speakers("sft", "val")
    test = speakers("asr", "test_world") | speakers("asr", "test_english") | speakers("sft", "test")
    assert all(map(_val_voice, val)) and all(map(_test_voice, test))
    assert len(val) > 5 and len(test) > 5 and not val & test and not (val | test) & train
    # validation is built as the test is: an accent that neither trains nor tests, in many variants
    accent = lambda voices: {s.split(":")[1].split("+")[0] for s in voices if s.startswith("espeak:")}  # noqa: E731
    assert accent(val) == set(VAL_ACCENTS) and not accent(val) & (accent(train) | accent(test))
    assert len({s.split("+")[1] for s in val}) > 5
    audio = {split: {r["audio"] for r in read_jsonl(demo / "sft" / f"{split}.jsonl") if "audio" in r}
             for split in ["train", "val", "test"]}
    assert all(audio.values()) and not audio["train"] & audio["val"] and not audio["val"] & audio["test"]


@needs_packages
def test_vision_test_scenes_are_held_out_and_not_val(demo):
    rows = {split: read_jsonl(demo / "images" / f"{split}.jsonl") for split in ["train", "val_world", "test_world"]}
    scenes = {split: [json.dumps(r["scene"], sort_keys=True) for r in rs if "scene" in r] for split, rs in rows.items()}
    assert len(scenes["test_world"]) == len(rows["test_world"]) == len(set(scenes["test_world"]))
    assert not set(scenes["test_world"]) & (set(scenes["val_world"]) | set(scenes["train"]))
    images = {split: {r["image"] for r in rs} for split, rs in rows.items()}
    assert not images["test_world"] & (images["val_world"] | images["train"])
    train_captions = {r["caption"] for r in rows["train"]}
    for r in rows["test_world"]:
        scene = world.Scene.from_dict(r["scene"])
        assert r["caption"] == world.caption(scene) and world.scene_is_held_out(scene)
        assert r["caption"] not in train_captions


@needs_packages
def test_sft_val_and_test_share_no_sentence_or_word(demo):
    def held(split: str) -> set[str]:
        return {r["answer"] if r["task"] == "transcribe" else r["prompt"]
                for r in read_jsonl(demo / "sft" / f"{split}.jsonl") if r["task"] in ("transcribe", "define")}
    val, test = held("val"), held("test")
    assert val and test and not val & test


def _sentences(doc: str) -> set[str]:
    """World documents are '<caption>. <question>? <answer>. ...'."""
    return {s.strip() for s in re.split(r"[.?]\s*", doc) if s.strip()}


@needs_packages
def test_held_out_sentences_never_in_any_training_split(demo):
    held = set()
    for part in ["asr", "tts"]:
        for split in ["val_world", "val_english", "test_world", "test_english"]:
            held |= {r["text"] for r in read_csv(demo / part / f"{split}.csv")}
    for split in ["val_voices_world", "val_voices_english"]:
        held |= {r["text"] for r in read_csv(demo / "asr" / f"{split}.csv")}
    for split in ["val_world", "test_world"]:
        held |= {r["caption"] for r in read_jsonl(demo / "images" / f"{split}.jsonl")}
    world_val = (demo / "text" / "world_val.txt").read_text().splitlines()
    held |= {doc.split(". ")[0] for doc in world_val}  # each held-out document opens with its scene's caption
    for split in ["val", "test"]:
        held |= {r["answer"] for r in read_jsonl(demo / "sft" / f"{split}.jsonl")
                 if r["task"] in ("caption", "transcribe")}

    training = set()
    for part in ["asr", "tts"]:
        training |= {r["text"] for r in read_csv(demo / part / "train.csv")}
    training |= {r["caption"] for r in read_jsonl(demo / "images" / "train.jsonl")}
    for r in read_jsonl(demo / "sft" / "train.jsonl"):
        texts = [m["content"] for m in r["messages"]] if "messages" in r else [r["prompt"], r["answer"]]
        training |= {t.rstrip("?").rstrip(".") for t in texts} | {r.get("question", "")}
    text_lines = (demo / "text" / "train.txt").read_text().splitlines()
    for line in text_lines:
        training |= _sentences(line.lower())
        training.add(speech.normalize_transcript(line))
    assert not held & training, sorted(held & training)[:5]
    assert not set(world_val) & set(text_lines)


@needs_packages
def test_every_manifest_row_points_at_a_readable_file(demo):
    for part in ["asr", "tts"]:
        for csv_path in (demo / part).glob("*.csv"):
            for r in read_csv(csv_path):
                info = sf.info(csv_path.parent / r["wav"])
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert info.frames > 1600, r
    checked = {"image": 0, "audio": 0}
    for folder in ["images", "sft"]:
        for jl in (demo / folder).glob("*.jsonl"):
            for r in read_jsonl(jl):
                if "image" in r:
                    with Image.open(jl.parent / r["image"]) as im:
                        assert im.convert("RGB").size == (64, 64)
                    checked["image"] += 1
                if "audio" in r:
                    assert sf.info(jl.parent / r["audio"]).frames > 0
                    checked["audio"] += 1
    for csv_path in (demo / "ocr").glob("*.csv"):
        for r in read_csv(csv_path):
            with Image.open(csv_path.parent / r["image"]) as im:
                # a line may be one word ("I"); a long one rotated by up to 2 degrees grows by its width x sin 2°
                assert im.mode == "RGB" and 16 <= im.height <= 80 + 0.035 * im.width and im.width >= 4, r
            checked["line"] = checked.get("line", 0) + 1
    assert checked["image"] > 100 and checked["audio"] > 10 and checked["line"] > 500, checked


@needs_packages
def test_every_sft_answer_agrees_with_its_scene(demo):
    checked = 0
    for split in ["train", "val", "test"]:
        for r in read_jsonl(demo / "sft" / f"{split}.jsonl"):
            if "messages" in r:  # several turns: user and assistant alternate, the image on the first
                turns = r["messages"]
                assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2), r
                assert all(m["content"] for m in turns), r
            else:
                assert r["prompt"] and r["answer"], r
            if "scene" not in r:
                continue
            scene = world.Scene.from_dict(r["scene"])
            image = r["messages"][0]["image"] if "messages" in r else r["image"]
            with Image.open(demo / "sft" / image) as im:  # the picture is the scene that was drawn
                assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(world.render(scene, 64)))
            if r["task"] == "caption":
                assert r["answer"] == world.caption(scene)
                continue
            if r["task"] == "dialogue":  # every answer of the conversation must be right
                for q, a in zip(turns[::2], turns[1::2]):
                    question = q["content"].removeprefix("and ").rstrip("?")
                    assert world.answer(scene, question) == a["content"].rstrip("."), r
                checked += 1
                continue
            assert world.answer(scene, r.get("question") or r["prompt"].rstrip("?")) == r["answer"], r
            checked += 1
    assert checked > 100
    for r in read_jsonl(demo / "images" / "val_world.jsonl") + read_jsonl(demo / "images" / "test_world.jsonl"):
        assert r["caption"] == world.caption(world.Scene.from_dict(r["scene"]))
        assert world.scene_is_held_out(world.Scene.from_dict(r["scene"]))
