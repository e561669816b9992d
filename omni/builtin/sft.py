"""Paired tasks for multimodal SFT (Stage E): data/demo/sft/{train,val,test}.jsonl with its own images and audio.

Rows: {"prompt", "answer", "task", optional "image", "audio"}, or {"messages": [...], "task"}; world rows also carry "scene"
(world.Scene.to_dict()), so any answer can be re-derived from the picture it is about, and audio rows the
"speaker" (as in the ASR manifests). Tasks:

    caption                    image -> its caption
    colour count position      image + question -> exact answer (world.questions)
    shape yesno
    spoken_<task>              image + spoken question (audio; its text in "question") -> exact answer
    transcribe                 audio -> transcript (world and general English: "source" says which); in
                               training also the question recordings' own transcripts
    define                     "what does <word> mean?" -> WordNet definition
    dialogue                   multi-turn ("messages"): two questions about one image, answered in turn; or
                               one turn of small talk

val.jsonl (to choose configs on) and test.jsonl (only reported) are held out three ways: unseen scenes
(held-out captions), unseen sentences (held-out world and English sentences, held-out WordNet entries) and
unseen voices: the ASR val_voices in val, the ASR test voices in test. Val and test share no transcript and no
defined word; their scenes are different drawings from one held-out pool, so captions can repeat between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from omni.builtin import sentences, world
from omni.builtin.images import write_jsonl
from omni.builtin.speech import Utterance, Voice, normalize_transcript, synthesize_all
from omni.builtin.spoken import pick_voice, utterance, voice_split
from omni.builtin.text import is_held_out, wordnet_documents, wordnet_entries
from omni.prompts import CAPTION_PROMPTS, SPOKEN_PROMPT, TRANSCRIBE_PROMPT

SMALL_TALK = [
    ("hello", "hello! what would you like to know?"),
    ("who are you?", "i am a tiny omni model. i can read, look at pictures and listen to speech."),
    ("what can you do?", "i can describe pictures, answer questions about them and transcribe speech."),
    ("thank you", "you are welcome."),
    ("goodbye", "goodbye!"),
]


@dataclass(frozen=True)
class SFTSizes:
    scenes: int          # each gives one caption row and one question row per task
    spoken: int
    question_voices: int  # recordings (voices) per question of world.all_questions(), at most
    transcribe: int
    define: int
    dialogue: int
    world_share: float = 0.5     # of the transcribe rows, world sentences (the rest general English)
    transcribe_questions: bool = False  # also a transcribe row per question recording (training only)


SIZES = {
    "small": {"train": SFTSizes(30, 24, 1, 12, 20, 12, 0.75, True), "val": SFTSizes(10, 10, 1, 6, 6, 6),
              "test": SFTSizes(10, 10, 1, 6, 6, 6)},
    "full": {"train": SFTSizes(1200, 1500, 2, 2000, 1000, 400, 0.75, True),
             "val": SFTSizes(300, 400, 1, 60, 60, 40), "test": SFTSizes(300, 400, 1, 60, 60, 40)},
}


@lru_cache(maxsize=2)
def _unique_definitions(val: bool) -> list[tuple[str, str]]:
    """(word, first clause of its definition) for words with one WordNet entry, on one side of the text
    corpus's held-out rule (entries and documents correspond one to one, in order)."""
    entries, docs = wordnet_entries(), wordnet_documents()
    counts: dict[str, int] = {}
    for w, *_ in entries:
        counts[w] = counts.get(w, 0) + 1
    out = []
    for (w, _, definition, _), doc in zip(entries, docs):
        if counts[w] == 1 and is_held_out(doc, sentences.TEXT_VAL_PERCENT) == val and w.isascii():
            out.append((w, definition.split(";")[0].strip()))
    return out


def build_split(out_dir: Path, split: str, size: str, rng: np.random.Generator, voices: list[Voice],
                taken: set[str]) -> tuple[list[dict], list[Utterance]]:
    """Rows of one split and the utterances its audio needs (synthesized by the caller, all at once).
    `taken`: transcripts and defined words of the held-out splits built before; a held-out split avoids and
    extends it, so val and test share none."""
    sz, held = SIZES[size][split], split != "train"
    rows: list[dict] = []
    utts: list[Utterance] = []
    (out_dir / "images").mkdir(parents=True, exist_ok=True)

    scenes = []
    for i in range(sz.scenes):
        s = world.sample_split_scene(rng, held_out=held)
        rel = f"images/{split}_{i:05d}.png"
        world.render(s, 64).save(out_dir / rel)
        scenes.append((s, rel))
        rows.append({"prompt": CAPTION_PROMPTS[rng.integers(len(CAPTION_PROMPTS))], "answer": world.caption(s),
                     "image": rel, "task": "caption", "scene": s.to_dict()})
        for q in world.questions(s, rng):
            rows.append({"prompt": q.text + "?", "answer": q.answer, "image": rel, "task": q.task,
                         "scene": s.to_dict()})

    # every question is recorded by up to `question_voices` voices, on first use; rows share recordings
    qindex = {q: i for i, q in enumerate(world.all_questions())}
    recordings: dict[tuple[str, int], tuple[str, str]] = {}  # -> (wav, speaker)
    for _ in range(sz.spoken):
        s, rel = scenes[rng.integers(len(scenes))]
        qs = world.questions(s, rng)
        q = qs[rng.integers(len(qs))]
        key = (q.text, int(rng.integers(sz.question_voices)))
        if key not in recordings:
            wav = f"wavs/{split}_q{qindex[q.text]:03d}_{key[1]}.wav"
            utts.append(utterance(q.text, pick_voice(voices, rng), out_dir / wav, rng))
            recordings[key] = (wav, utts[-1].voice.speaker)
        wav, speaker = recordings[key]
        rows.append({"prompt": SPOKEN_PROMPT, "answer": q.answer, "image": rel, "audio": wav, "speaker": speaker,
                     "task": "spoken_" + q.task, "question": q.text, "scene": s.to_dict()})

    if sz.transcribe_questions:  # reading speech is one skill: the question recordings teach it too
        for (text, _), (wav, speaker) in recordings.items():
            rows.append({"prompt": TRANSCRIBE_PROMPT, "answer": normalize_transcript(text), "audio": wav,
                         "speaker": speaker, "task": "transcribe", "source": "world"})

    eng = sentences.english_pools()
    n_world = round(sz.transcribe * sz.world_share)
    texts = sentences.sample_world(n_world, held, rng, exclude=taken) + sentences.sample_english(
        eng, sz.transcribe - n_world, "held" if held else "train", rng, exclude=taken)
    for i, t in enumerate(texts):
        rel = f"wavs/{split}_t{i:05d}.wav"
        utts.append(utterance(t, pick_voice(voices, rng), out_dir / rel, rng))
        rows.append({"prompt": TRANSCRIBE_PROMPT, "answer": normalize_transcript(t), "audio": rel,
                     "speaker": utts[-1].voice.speaker, "task": "transcribe",
                     "source": "world" if i < n_world else "english"})

    defs = [(w, d) for w, d in _unique_definitions(held) if w not in taken]
    for i in rng.permutation(len(defs))[:sz.define]:
        w, d = defs[i]
        rows.append({"prompt": f"what does {w} mean?", "answer": d + ".", "task": "define"})
        if held:
            taken.add(w)
    if held:
        taken.update(normalize_transcript(t) for t in texts)

    for _ in range(sz.dialogue):
        if rng.random() < 0.3:
            a, b = SMALL_TALK[rng.integers(len(SMALL_TALK))]
            rows.append({"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}],
                         "task": "dialogue"})
            continue
        s, rel = scenes[rng.integers(len(scenes))]
        qs = world.questions(s, rng)
        q1, q2 = (qs[j] for j in rng.choice(len(qs), size=2, replace=False))
        rows.append({"messages": [{"role": "user", "content": q1.text + "?", "image": rel},
                                  {"role": "assistant", "content": q1.answer + "."},
                                  {"role": "user", "content": f"and {q2.text}?"},
                                  {"role": "assistant", "content": q2.answer + "."}],
                     "task": "dialogue", "scene": s.to_dict()})

    return [rows[i] for i in rng.permutation(len(rows))], utts


def build_sft(out_dir: Path, size: str, rng: np.random.Generator, workers: int = 2) -> dict:
    voices = voice_split()
    splits, utts, taken = {}, [], set()
    for split, pool in (("train", voices.train), ("val", voices.val), ("test", voices.test)):
        rows, us = build_split(out_dir, split, size, rng, pool, taken)
        splits[split] = rows
        utts += us
    synthesize_all(utts, workers=workers, desc="sft")
    summary = {}
    for split, rows in splits.items():
        write_jsonl(out_dir / f"{split}.jsonl", rows)
        tasks: dict[str, int] = {}
        for r in rows:
            tasks[r["task"]] = tasks.get(r["task"], 0) + 1
        summary[split] = {"items": len(rows), **dict(sorted(tasks.items()))}
    return summary
