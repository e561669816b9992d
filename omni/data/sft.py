"""SFT data: conversations from JSONL, their media as model inputs, and length-bucketed batches.

Rows, one per line (paths relative to the file's folder unless absolute; other keys are kept as metadata):
    {"prompt": str, "answer": str, "image": path?, "audio": path?, "task": str?}            one turn
    {"messages": [{"role", "content", "image"?, "audio"?}, ...], "task": str?}               several turns

`Media` holds the inputs of the distinct images and clips a set uses: encoder features when the encoder is
frozen (computed once, with the frozen encoder: it would give the same every epoch), else pixels and
log-mels for the encoder to run on in every step. An unreadable or missing file is recorded, and every row
that needs it is skipped and counted (`BadSample`), never trained on without its media.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from omni.audio import LogMel, MelConfig, load_audio, pad_frames
from omni.chat import ChatTemplate, Rendered, Turn, check_turns
from omni.data.base import BadSample, LengthBucketed
from omni.data.hints import data_hint
from omni.data.images import decode_image
from omni.errors import UserError


@dataclass
class Example:
    turns: list[Turn]        # media as resolved paths
    task: str
    where: str               # file:line, for messages
    meta: dict = field(default_factory=dict)

    @property
    def images(self) -> list[str]:
        return [p for t in self.turns for p in t.images]

    @property
    def audio(self) -> list[str]:
        return [p for t in self.turns for p in t.audio]

    @property
    def answer(self) -> str:
        return self.turns[-1].content


def _paths(value, base: Path, key: str, where: str) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in values):
        raise UserError(f"{where}: '{key}' must be a path or a list of paths, got {value!r}")
    return [v if Path(v).is_absolute() else str(base / v) for v in values]


def parse_row(row: dict, base: Path, where: str, system: str = "") -> Example:
    """One JSONL row → Example; a malformed row is a UserError naming `where`."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise UserError(f"{where}: 'messages' must be a list of objects")
        turns = []
        for i, m in enumerate(msgs):
            if not isinstance(m.get("content"), str) or "role" not in m:
                raise UserError(f"{where}: messages[{i}] needs 'role' and a string 'content'")
            turns.append(Turn(m["role"], m["content"], _paths(m.get("image"), base, "image", where),
                              _paths(m.get("audio"), base, "audio", where)))
    else:
        missing = [k for k in ("prompt", "answer") if not isinstance(row.get(k), str)]
        if missing:
            raise UserError(f"{where}: missing string key(s) {missing} (or give 'messages')")
        turns = [Turn("user", row["prompt"], _paths(row.get("image"), base, "image", where),
                      _paths(row.get("audio"), base, "audio", where)), Turn("assistant", row["answer"])]
    if system and turns[0].role != "system":
        turns.insert(0, Turn("system", system))
    check_turns(turns, where)
    if not turns[-1].content.strip():
        raise UserError(f"{where}: empty answer")
    meta = {k: v for k, v in row.items() if k not in ("messages", "prompt", "answer", "image", "audio", "task")}
    return Example(turns, str(row.get("task", "sft")), where, meta)


def read_sft(path: str | Path, system: str = "") -> list[Example]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SFT data not found: {path}; {data_hint(path, 'sft')}")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            out.append(parse_row(row, path.parent, f"{path}:{n}", system))
    if not out:
        raise UserError(f"{path} holds no examples")
    return out


class Media:
    """Model inputs by path: `images[p]` Tensor[n x d] encoded / uint8 Tensor[3 x S x S] pixels; `audio[p]`
    Tensor[S x stack·d] encoded / Tensor[frames x n_mels] log-mel; `errors[p]`: why a file is unusable."""

    def __init__(self):
        self.images: dict[str, torch.Tensor] = {}
        self.audio: dict[str, torch.Tensor] = {}
        self.errors: dict[str, str] = {}
        self.encoded_images = self.encoded_audio = False

    def problem(self, ex: Example) -> str | None:
        for p in ex.images + ex.audio:
            if p in self.errors:
                return f"{ex.where}: {self.errors[p]}"
        return None


def _read_image(path: str, size: int):
    """(uint8 Tensor[3 x S x S], None) or (None, why not)."""
    img = decode_image(Path(path), size)
    if img is None:
        return None, f"{'unreadable' if Path(path).exists() else 'missing'} image {path}"
    return torch.from_numpy(np.ascontiguousarray(img)), None


def _read_audio(path: str, mel: LogMel):
    """(log-mel Tensor[frames x n_mels], None) or (None, why not)."""
    if not Path(path).exists():
        return None, f"missing audio {path}"
    try:
        return mel(load_audio(path, mel.cfg.sample_rate)), None
    except UserError as e:   # unreadable or empty
        return None, str(e)


@torch.no_grad()
def load_media(examples: list[Example], model, mel_cfg: MelConfig | None, device, encode_images: bool,
               encode_audio: bool, media: Media | None = None, batch_size: int = 64,
               progress: bool = True) -> Media:
    """Adds to `media` the inputs of every image and clip `examples` use that it lacks. `model`: an
    OmniModel (its encoders, when encode_*: the features, once, kept in float16 to halve the memory);
    `mel_cfg`: the audio encoder's features."""
    media = media or Media()
    media.encoded_images, media.encoded_audio = encode_images, encode_audio
    known = media.images.keys() | media.audio.keys() | media.errors.keys()
    want_img = list(dict.fromkeys(p for ex in examples for p in ex.images if p not in known))
    want_aud = list(dict.fromkeys(p for ex in examples for p in ex.audio if p not in known))
    if want_img:
        if model.vision is None:
            raise UserError(f"{examples[0].where}: the data has images but the model has no vision encoder")
        size = model.cfg.vision.image_size
        for s in tqdm(range(0, len(want_img), batch_size), desc="images", leave=False, disable=not progress):
            chunk = [(p, *_read_image(p, size)) for p in want_img[s:s + batch_size]]
            good = [(p, x) for p, x, _ in chunk if x is not None]
            media.errors.update({p: why for p, x, why in chunk if x is None})
            if good and encode_images:
                pixels = torch.stack([x for _, x in good]).to(device).float() / 255
                feats = model.image_features(pixels).to("cpu", torch.float16)
                good = [(p, f) for (p, _), f in zip(good, feats)]
            media.images.update(good)
    if want_aud:
        if model.audio is None:
            raise UserError(f"{examples[0].where}: the data has audio but the model has no audio encoder")
        mel = LogMel(mel_cfg)
        mels = [(p, *_read_audio(p, mel)) for p in tqdm(want_aud, desc="audio", leave=False, disable=not progress)]
        media.errors.update({p: why for p, x, why in mels if x is None})
        good = sorted([(p, x) for p, x, _ in mels if x is not None], key=lambda px: px[1].shape[0])
        if encode_audio:
            for s in range(0, len(good), batch_size):
                chunk = good[s:s + batch_size]
                x, lengths = pad_frames([m for _, m in chunk])
                feats, counts = model.audio_features(x.to(device), lengths.to(device))
                media.audio.update((p, f[:n].to("cpu", torch.float16)) for (p, _), f, n in
                                   zip(chunk, feats, counts.tolist()))
        else:
            media.audio.update(good)
    return media


def render(ex: Example, template: ChatTemplate, model, media: Media, for_generation: bool = False) -> Rendered:
    """The example's sequence with each medium's token count (for_generation: without the last answer)."""
    turns = ex.turns[:-1] if for_generation else ex.turns
    counted = []
    for t in turns:
        imgs = [model.image_token_count for _ in t.images]
        auds = [media.audio[p].shape[0] if media.encoded_audio else model.audio_token_count(media.audio[p].shape[0])
                for p in t.audio]
        counted.append(Turn(t.role, t.content, imgs, auds))
    return template.render(counted, for_generation)


def media_batch(paths_img: list[str], paths_aud: list[str], media: Media) -> dict:
    """The model's media inputs for these files, in order: image_feats or pixels; audio_feats + audio_counts
    or mels + mel_lengths."""
    out = {}
    if paths_img:
        x = torch.stack([media.images[p].float() for p in paths_img])  # fp16 features: autocast cannot stack them
        out["image_feats" if media.encoded_images else "pixels"] = x if media.encoded_images else x / 255
    if paths_aud:
        x, n = pad_frames([media.audio[p].float() for p in paths_aud])
        out.update({"audio_feats": x, "audio_counts": n} if media.encoded_audio else {"mels": x, "mel_lengths": n})
    return out


LOSS_PER = ("token", "sample")


class SFTBatches(LengthBucketed):
    """Batches {"ids": Long[B x T] right-padded, "targets": Long[B x T] (-100 except trained tokens), media
    inputs (media_batch), "tokens": real tokens, "slots": B x T, and with loss_per "sample" "loss_weights"},
    of similar lengths."""

    def __init__(self, examples: list[Example], rendered: list[Rendered | None], media: Media, batch_size: int,
                 seed: int, bucket: int = 50, loss_per: str = "token"):
        """rendered[i] None: example i's media are unreadable (it is skipped and counted when drawn)."""
        super().__init__([len(r.ids) if r is not None else 0 for r in rendered], batch_size, seed, bucket)
        self.examples, self.rendered, self.media, self.loss_per = examples, rendered, media, loss_per

    def load(self, index: int, rng: np.random.Generator):
        ex = self.examples[index]
        bad = self.media.problem(ex)
        if bad:
            raise BadSample(bad)
        return ex, self.rendered[index]

    def collate(self, samples: list) -> dict:
        return collate(samples, self.media, self.loss_per)


def collate(samples: list[tuple[Example, Rendered]], media: Media, loss_per: str = "token") -> dict:
    """loss_per "token": every answer token weighs the same, so long answers (captions, transcripts) outweigh
    one-word ones; "sample": each conversation's answer tokens weigh 1 together ("loss_weights")."""
    if loss_per not in LOSS_PER:
        raise ValueError(f"loss_per must be one of {LOSS_PER}, got {loss_per!r}")
    T = max(len(r.ids) for _, r in samples) - 1
    ids = torch.zeros(len(samples), T, dtype=torch.long)
    targets = torch.full((len(samples), T), -100, dtype=torch.long)
    for i, (_, r) in enumerate(samples):
        seq, learn = torch.tensor(r.ids), torch.tensor(r.trained)
        ids[i, :len(seq) - 1] = seq[:-1]
        targets[i, :len(seq) - 1] = torch.where(learn[1:], seq[1:], -100)
    batch = media_batch([p for ex, _ in samples for p in ex.images], [p for ex, _ in samples for p in ex.audio],
                        media)
    real = sum(len(r.ids) - 1 for _, r in samples)
    if loss_per == "sample":
        trained = (targets != -100).float()
        batch["loss_weights"] = trained / trained.sum(1, keepdim=True).clamp(min=1)
    return {"ids": ids, "targets": targets, **batch, "tokens": real, "slots": ids.numel()}
