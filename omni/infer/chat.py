"""What infer_chat.py talks to: the omni model, and when present the Talker (spoken replies) and the OCR model,
found in an export folder or in training folders.

    bot = load_chat("merged_model")                 # an export (export.py)
    bot = load_chat("runs/demo")                    # training save_dirs: omni_sft/, talker/, vocoder/, ocr/
    bot = load_chat("runs/demo/omni_sft", talker="runs/demo/talker", ocr="runs/demo/ocr/ocr.pt")

Where each part is looked for, in order: the explicit argument; an export's component folder; the training
layout under the folder given (omni_final.pt in it or in omni_sft/, talker/, vocoder/, ocr/). A part that a
request needs and that was not found is an error naming it (ChatError), never a stand-in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from omni.artifacts import KINDS, load_artifact
from omni.errors import UserError
from omni.export import is_component


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
