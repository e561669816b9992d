"""What infer_chat.py talks to: the omni model, and when present the Talker (spoken replies) and the OCR model,
found in an export folder or in training folders.

    bot = load_chat("merged_model")                 # an export (export.py)
    bot = load_chat("runs/demo")                    # training save_dirs: omni_sft/, talker/, vocoder/, ocr/
    bot = load_chat("runs/demo/omni_sft", talker="runs/demo/talker", ocr="runs/demo/ocr/ocr.pt")

Where each part is looked for, in order: the explicit argument; an export's component folder; the training
layout under the folder given (omni_final.pt in it or in omni_sft/, talker/, vocoder/, ocr/). A part that a
request needs and that was not found is an error naming it (ChatError), never a stand-in.

What a user's message becomes (`user_turn`: the training prompts for media without words, the OCR reading in
the prompt) and how a reply is spoken (`speak`) are here too: infer_chat.py and serve.py both build on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from omni.artifacts import KINDS, load_artifact
from omni.chat import Turn
from omni.errors import UserError
from omni.export import is_component
from omni.prompts import CAPTION_PROMPTS, SPOKEN_PROMPT, TRANSCRIBE_PROMPT

OCR_PREFIX = "the text in the image reads: "


class ChatError(UserError):
    """A request that cannot be served (missing part, unreadable input): a message for the user, no trace."""


def _find(root: Path, kind: str, subdir: str) -> Path | None:
    """The place of a `kind` part under root: an export component, root's own artifact file or root/subdir's."""
    if is_component(root / kind):
        return root / kind
    for d in (root, root / subdir):
        if (d / KINDS[kind].filename).is_file():
            return d
    return None


@dataclass
class Chat:
    omni: object                 # omni.infer.omni.Omni
    speaker: object = None       # omni.infer.tts.Speaker, or None: no spoken replies
    ocr: object = None           # omni.artifacts.Artifact of kind "ocr", or None
    where: dict = None           # part -> where it was loaded from

    def need(self, part: str, hint: str):
        if getattr(self, part) is None:
            raise ChatError(f"no {part} model: {hint}")
        return getattr(self, part)


def load_chat(ckpt_dir: str | Path, device="cpu", talker: str | None = None, vocoder: str | None = None,
              ocr: str | None = None, griffin_lim: bool = False) -> Chat:
    from omni.infer.omni import load_omni
    from omni.infer.tts import load_speaker
    root = Path(ckpt_dir)
    if not root.exists():
        raise ChatError(f"--ckpt_dir {root} not found")
    omni_at = _find(root, "omni", "omni_sft")
    if omni_at is None:
        raise ChatError(f"no omni model in {root}: expected an export (export.py; omni/ inside), Stage E's save_dir "
                        f"(omni_final.pt) or a runs folder with omni_sft/omni_final.pt (sft_omni.py writes it)")
    where = {"omni": str(omni_at)}
    o = load_omni(omni_at, device)
    speaker = None
    talker_at = Path(talker) if talker else _find(root, "talker", "talker")
    if talker_at is not None and talker_at.name == "talker" and is_component(talker_at):
        talker_at = talker_at.parent   # an export: load_speaker takes its root (talker/, rvq_codec/, vocoder/)
    if talker_at is not None:
        voc = "" if griffin_lim else vocoder
        if voc is None:   # the export's or the runs folder's vocoder, when the Talker's folder has none
            voc_at = _find(root, "vocoder", "vocoder")
            voc = str(voc_at) if voc_at is not None and voc_at != talker_at else None
        speaker = load_speaker(talker_at, device, voc)
        where["talker"] = str(talker_at)
    ocr_at = Path(ocr) if ocr else _find(root, "ocr", "ocr")
    reader = load_artifact(ocr_at, "ocr", device) if ocr_at is not None else None
    if reader is not None:
        where["ocr"] = str(ocr_at)
    return Chat(o, speaker, reader, where)


@torch.no_grad()
def read_text(chat: Chat, image: str) -> str:
    from omni.infer.ocr import read_lines
    a = chat.need("ocr", "export with --ocr_ckpt, or give --ocr_ckpt (train_ocr.py writes ocr.pt)")
    try:
        return read_lines(a.model, a.vocab, [image], device=next(a.model.parameters()).device)[0]
    except UserError as e:   # an unreadable image
        raise ChatError(str(e)) from None


def check_inputs(images: list, audio: list) -> None:
    """Missing or unreadable media files: a ChatError naming the file, before any model runs. Media given
    decoded (PIL images, waveforms) are the caller's to check."""
    from omni.audio import load_audio
    from omni.data.images import decode_image
    for what, items in (("image", images), ("audio", audio)):
        for p in items:
            if isinstance(p, (str, Path)) and not Path(p).is_file():
                raise ChatError(f"{what} file not found: {p}")
    for p in images:
        if isinstance(p, (str, Path)) and decode_image(Path(p), 8) is None:
            raise ChatError(f"cannot read image {p} (corrupt, or not an image)")
    for p in audio:
        if isinstance(p, (str, Path)):
            try:
                load_audio(p)
            except UserError as e:   # unreadable or empty
                raise ChatError(str(e)) from None


def user_turn(chat: Chat, text: str, images: list = (), audio: list = (), ocr: bool = False) -> tuple[Turn, dict]:
    """The user's turn for these inputs (the training prompts when the text is empty) and extras for the
    reply record ("ocr": the reading; "reply": the reading again when OCR came without a question). Media:
    paths, or decoded (PIL images, 16 kHz waveforms Tensor[T])."""
    images, audio = list(images), list(audio)
    check_inputs(images, audio)
    extra = {}
    if ocr:
        if len(images) != 1:
            raise ChatError("--ocr reads an image: give --image")
        extra["ocr"] = read_text(chat, images[0])
        if not text:   # nothing asked: the reading is the reply
            extra["reply"] = extra["ocr"]
        text = f"{OCR_PREFIX}{extra['ocr']}. {text}".strip()
        images = []   # a line of text is the OCR model's input, not the picture encoder's
    elif not text:
        if audio:
            text = SPOKEN_PROMPT if images else TRANSCRIBE_PROMPT
        elif images:
            text = CAPTION_PROMPTS[0]
        else:
            raise ChatError("empty prompt: give a question (or --audio_in speech)")
    return Turn("user", text, images, audio), extra


def forget_oldest(history: list[Turn]) -> bool:
    """Drops the oldest user-assistant exchange of `history` (a system turn stays), making room in the context
    for the next message; False when there is none to drop."""
    first = 1 if history and history[0].role == "system" else 0
    if len(history) - first < 2:
        return False
    del history[first:first + 2]
    return True


def voices(chat: Chat) -> list[str]:
    """The voices a reply can be spoken in (the Talker's), the default first; none without a Talker."""
    return list(chat.speaker.voices) if chat.speaker is not None else []


def speak(chat: Chat, text: str, temperature: float = 0.0, top_k: int = 20, seed: int = 0,
          voice: str | None = None) -> torch.Tensor:
    """`text` spoken by the Talker in `voice` (None: its default): a waveform Tensor[T] at
    chat.speaker.sample_rate; a ChatError when there is no Talker, the voice is not one of its voices, or
    nothing comes out (an empty text, a Talker or vocoder that gave no sound)."""
    sp = chat.need("speaker", "export with --talker_ckpt, or give --talker_ckpt (train_talker.py's folder)")
    if not text.strip():
        raise ChatError("the reply is empty: nothing to speak")
    try:
        return sp.speak([text], temperature=temperature, top_k=top_k, seed=seed, voice=voice)[0]
    except UserError as e:   # a letter the Talker never saw, a Talker or vocoder that gave no sound
        raise ChatError(f"cannot speak the reply: {e}") from None
