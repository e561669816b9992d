"""Stage E's evaluation, shared by validation during training and `scripts/evaluate.py sft`.

Per task: exact-match accuracy (normalised: case, spaces, end punctuation) of greedy answers for the
question tasks (colour, count, position, shape, yesno, their spoken_* forms and any other task), caption
exact match and word F1, transcription WER (split by the rows' "source" when they give one), answer-token
perplexity for define and dialogue (teacher-forced over every assistant turn). "overall" is the accuracy
over all image and spoken question rows. The grounding check answers the same rows with the images (or the
audio) shuffled among them: answers that come from the picture or the speech fall toward the answer prior
(each task's most common answer, as a fraction of its rows), answers that come from the question do not.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from omni.chat import ChatTemplate
from omni.data.sft import Example, Media, collate, media_batch, render
from omni.infer.generate import generate_stream
from omni.metrics import wer
from omni.models.omni import MEDIA_KEYS

QUESTIONS = ("colour", "count", "position", "shape", "yesno")
PERPLEXITY_TASKS = ("define", "dialogue")


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[.!?,;:]+$", "", text.strip().lower())).strip()


def word_f1(ref: str, hyp: str) -> float:
    r, h = normalize(ref).split(), normalize(hyp).split()
    common = sum((Counter(r) & Counter(h)).values())
    if not r or not h or not common:
        return float(not r and not h)
    p, q = common / len(h), common / len(r)
    return 2 * p * q / (p + q)


def is_question_task(task: str) -> bool:
    return task not in PERPLEXITY_TASKS + ("caption", "transcribe")


@torch.no_grad()
def answer(model, template: ChatTemplate, examples: list[Example], media: Media, device, batch_size: int = 64,
           max_new_tokens: int = 48, images: list[str] | None = None) -> list[str]:
    """Greedy replies to each example's last user turn (KV cache; rows of equal prompt length batched).
    `images`: per example, the image paths to show instead of its own (the grounding check)."""
    prompts = [render(ex, template, model, media, for_generation=True).ids for ex in examples]
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    out = [""] * len(examples)
    for idx_all in groups.values():
        for s in range(0, len(idx_all), batch_size):
            idx = idx_all[s:s + batch_size]
            ids = torch.tensor([prompts[i] for i in idx], device=device)
            imgs = [p for i in idx for p in (images[i] if images is not None else examples[i].images)]
            auds = [p for i in idx for p in examples[i].audio]
            batch = {k: v.to(device) for k, v in media_batch(imgs, auds, media).items()}
            x = model.embed(ids, **model.media_features(**batch))
            steps = list(generate_stream(model.thinker, x, max_new_tokens, temperature=0.0,
                                         stop_ids=template.stop_ids))
            new = torch.stack(steps, 1).tolist() if steps else [[] for _ in idx]
            for i, row in zip(idx, new):
                out[i] = template.decode_reply(row)
    return out


@torch.no_grad()
def answer_nll(model, template: ChatTemplate, examples: list[Example], media: Media, device,
               batch_size: int = 32) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of the assistant tokens, teacher-forced."""
    total, n = 0.0, 0
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        b = collate([(ex, render(ex, template, model, media)) for ex in chunk], media)
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        logits = model(b["ids"], **{k: b[k] for k in MEDIA_KEYS if k in b})["logits"]
        mask = b["targets"] != -100
        total += float(F.cross_entropy(logits[mask].float(), b["targets"][mask], reduction="sum"))
        n += int(mask.sum())
    return total, n


def prior(examples: list[Example]) -> dict[str, float]:
    """Per question task, and "overall" (pooled): the share of rows whose answer is their task's most common
    answer — the accuracy of answering without looking or listening."""
    by_task = defaultdict(list)
    for ex in examples:
        by_task[ex.task].append(normalize(ex.answer))
    top = {t: Counter(a).most_common(1)[0][1] for t, a in by_task.items()}
    return {"overall": sum(top.values()) / len(examples), **{t: top[t] / len(a) for t, a in by_task.items()}}


def grounding(rows: list[Example], hyps: list[str], shuffled_hyps: list[str]) -> dict:
    """Accuracy on `rows`, with their media shuffled, the answer prior, and `lost`: the share of the accuracy's
    margin over the prior that the shuffling takes away (1: all of it, 0: none; None without a margin)."""
    acc, shuf = (float(np.mean([normalize(h) == normalize(ex.answer) for ex, h in zip(rows, hs)]))
                 for hs in (hyps, shuffled_hyps))
    p = prior(rows)["overall"]
    return {"accuracy": acc, "shuffled": shuf, "prior": p, "lost": (acc - shuf) / (acc - p) if acc > p else None,
            "n": len(rows)}


def _accuracy(examples, hyps) -> tuple[dict, float | None]:
    tasks = defaultdict(list)
    for ex, h in zip(examples, hyps):
        tasks[ex.task].append(normalize(h) == normalize(ex.answer))
    per = {t: {"accuracy": float(np.mean(v)), "n": len(v)} for t, v in sorted(tasks.items())}
    pooled = [x for v in tasks.values() for x in v]
    return per, (float(np.mean(pooled)) if pooled else None)


def evaluate_sft(model, template: ChatTemplate, examples: list[Example], media: Media, device,
                 batch_size: int = 64, max_new_tokens: int = 48, shuffled: bool = True, seed: int = 0,
                 samples: int = 0) -> dict:
    """{"overall", "tasks": {task: {metric, "n"}}, "shuffled_images", "shuffled_audio" (accuracy per task with
    the media shuffled among rows), "prior" (per task and pooled), "grounding": {"images": the image
    questions, "audio": the spoken ones; see `grounding`}, "skipped"} over the examples whose media are
    readable (the others are counted in "skipped")."""
    usable = [ex for ex in examples if media.problem(ex) is None]
    out: dict = {"overall": None, "tasks": {}, "skipped": len(examples) - len(usable)}
    questions = [ex for ex in usable if is_question_task(ex.task)]
    captions = [ex for ex in usable if ex.task == "caption"]
    speech = [ex for ex in usable if ex.task == "transcribe"]
    gen = questions + captions + speech
    hyps = answer(model, template, gen, media, device, batch_size, max_new_tokens)
    nq, nc = len(questions), len(captions)
    hq, hc, hs = hyps[:nq], hyps[nq:nq + nc], hyps[nq + nc:]
    per, out["overall"] = _accuracy(questions, hq)
    out["tasks"].update(per)
    if captions:
        out["tasks"]["caption"] = {
            "accuracy": float(np.mean([normalize(h) == normalize(ex.answer) for ex, h in zip(captions, hc)])),
            "word_f1": float(np.mean([word_f1(ex.answer, h) for ex, h in zip(captions, hc)])), "n": len(captions)}
    if speech:
        out["tasks"]["transcribe"] = {"wer": wer([ex.answer for ex in speech], hs), "n": len(speech)}
        for src in sorted({ex.meta.get("source") for ex in speech} - {None}):
            pick = [(ex.answer, h) for ex, h in zip(speech, hs) if ex.meta.get("source") == src]
            out["tasks"][f"transcribe_{src}"] = {"wer": wer(*map(list, zip(*pick))), "n": len(pick)}
    for task in PERPLEXITY_TASKS:
        rows = [ex for ex in usable if ex.task == task]
        if rows:
            nll, n = answer_nll(model, template, rows, media, device)
            out["tasks"][task] = {"perplexity": math.exp(nll / max(n, 1)), "n": len(rows)}
    if samples:
        out["samples"] = [{"task": ex.task, "prompt": ex.turns[-2].content, "answer": ex.answer, "reply": h}
                          for ex, h in list(zip(gen, hyps))[:samples]]
    if shuffled and questions:
        out["prior"], out["grounding"] = prior(questions), {}
        rng = np.random.default_rng(seed)
        with_img = [i for i, ex in enumerate(questions) if ex.images]
        if len(with_img) > 1:
            perm = rng.permutation(with_img)
            images = [ex.images for ex in questions]
            for i, j in zip(with_img, perm):
                images[i] = questions[j].images
            h = answer(model, template, questions, media, device, batch_size, max_new_tokens, images=images)
            per, overall = _accuracy(questions, h)
            out["shuffled_images"] = {"overall": overall, **{t: v["accuracy"] for t, v in per.items()}}
            pick = [i for i, ex in enumerate(questions) if ex.images and not ex.audio]  # the image questions
            if pick:
                out["grounding"]["images"] = grounding([questions[i] for i in pick], [hq[i] for i in pick],
                                                       [h[i] for i in pick])
        spoken = [ex for ex in questions if ex.audio]
        if len(spoken) > 1:
            perm = rng.permutation(len(spoken))
            swapped = [Example(_swap_audio(ex.turns, spoken[j].audio), ex.task, ex.where, ex.meta)
                       for ex, j in zip(spoken, perm)]
            h = answer(model, template, swapped, media, device, batch_size, max_new_tokens)
            per, overall = _accuracy(spoken, h)
            out["shuffled_audio"] = {"overall": overall, **{t: v["accuracy"] for t, v in per.items()}}
            out["grounding"]["audio"] = grounding(spoken, [x for ex, x in zip(questions, hq) if ex.audio], h)
    return out


def _swap_audio(turns, audio: list[str]):
    """The turns with the last user turn's audio replaced."""
    from omni.chat import Turn
    turns = list(turns)
    k = max(i for i, t in enumerate(turns) if t.role == "user")
    turns[k] = Turn("user", turns[k].content, turns[k].images, audio)
    return turns
