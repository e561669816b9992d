"""Talking to the omni model (Stage E): the one generation entry point chat builds on.

    omni = load_omni("runs/demo/omni_sft")                        # a save_dir or omni_final.pt
    for piece in omni.stream([Turn("user", "what colour is the star?", images=["scene.png"])]):
        print(piece, end="", flush=True)
    omni.reply([Turn("user", "answer the spoken question about the picture.", images=["a.png"], audio=["q.wav"])])

Turns follow omni.chat (an optional system turn, then user / assistant alternating, ending with the user);
media are paths, PIL images, 16 kHz waveforms (Tensor[T]) or uint8 pixels. The conversation goes through the
same chat template as training; the reply is generated greedily (temperature 0) or sampled, with the KV
cache, and stops at <|im_end|>.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from omni.artifacts import load_artifact
from omni.audio import LogMel, MelConfig, load_audio, pad_frames
from omni.chat import ChatTemplate, Turn, check_turns
from omni.errors import UserError
from omni.infer.generate import generate_stream
from omni.models.omni import OmniModel
from omni.tokenizer import Tokenizer


class ContextFull(UserError):
    """The conversation leaves no room for a reply in the Thinker's context."""


@dataclass
class Omni:
    model: OmniModel
    tokenizer: Tokenizer
    template: ChatTemplate
    mel: MelConfig | None          # the audio encoder's features
    system: str                    # the system prompt it was trained with ("" for none)
    device: torch.device

    def _pixels(self, image) -> torch.Tensor:
        from PIL import Image

        from omni.data.images import decode_image, to_pixels
        size = self.model.cfg.vision.image_size
        if isinstance(image, Image.Image):
            x = to_pixels(image, size)
        elif torch.is_tensor(image):
            return image.float() / 255 if image.dtype == torch.uint8 else image.float()
        else:
            x = decode_image(Path(image), size)
            if x is None:
                raise UserError(f"cannot read image {image}")
        return torch.from_numpy(x.copy()).float() / 255

    def _mel(self, audio) -> torch.Tensor:
        wav = audio if torch.is_tensor(audio) else load_audio(audio, self.mel.sample_rate)
        return LogMel(self.mel)(wav)

    def prompt(self, turns: list[Turn]) -> torch.Tensor:
        """The conversation (ending with a user turn) as input embeddings Tensor[1 x T x d] for the reply."""
        if self.system and turns and turns[0].role != "system":
            turns = [Turn("system", self.system)] + list(turns)
        check_turns(turns, "conversation", for_generation=True)
        m = self.model
        if any(t.images for t in turns) and m.vision is None:
            raise UserError("this omni model has no vision encoder")
        if any(t.audio for t in turns) and m.audio is None:
            raise UserError("this omni model has no audio encoder")
        pixels = [self._pixels(i) for t in turns for i in t.images]
        mels = [self._mel(a) for t in turns for a in t.audio]
        it = iter(mels)
        counted = [Turn(t.role, t.content, [m.image_token_count] * len(t.images),
                        [m.audio_token_count(next(it).shape[0]) for _ in t.audio]) for t in turns]
        r = self.template.render(counted, for_generation=True)
        ctx = m.thinker.cfg.ctx_len
        if len(r.ids) >= ctx:
            raise ContextFull(f"the conversation is {len(r.ids)} tokens, and the Thinker's context of {ctx} leaves "
                              f"no room for a reply: shorten it (or /reset in the chat)")
        ids = torch.tensor([r.ids], device=self.device)
        media = {}
        with torch.no_grad():
            if pixels:
                media["image_feats"] = m.image_features(torch.stack(pixels).to(self.device))
            if mels:
                x, n = pad_frames(mels)
                media["audio_feats"], media["audio_counts"] = m.audio_features(x.to(self.device), n.to(self.device))
            return m.embed(ids, **media)

    def stream(self, turns: list[Turn], max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, generator: torch.Generator | None = None, compile: bool = False,
               stats: dict | None = None) -> Iterator[str]:
        """The reply's text, piece by piece as it is generated (`compile`: see omni.infer.generate). `stats`, if
        given, is kept up to date with the lengths: {"prompt_tokens", "tokens" (generated), "stopped"} (stopped:
        the model ended its reply, rather than the token limit or the context)."""
        x = self.prompt(turns)
        stats = {} if stats is None else stats
        stats.update(prompt_tokens=x.shape[1], tokens=0, stopped=False)
        ids, shown = [], ""
        for nxt in generate_stream(self.model.thinker, x, max_new_tokens, temperature, top_k,
                                   top_p, self.template.stop_ids, generator=generator, compile=compile):
            if int(nxt[0]) in self.template.stop_ids:
                stats["stopped"] = True
                break
            ids.append(int(nxt[0]))
            stats["tokens"] = len(ids)
            text = self.tokenizer.decode(ids)
            if not text.endswith("\ufffd"):  # a multi-byte character still incomplete: wait for its rest
                yield text[len(shown):]
                shown = text

    def reply(self, turns: list[Turn], **kw) -> str:
        return "".join(self.stream(turns, **kw)).strip()


def load_omni(path: str | Path, device="cpu") -> Omni:
    """A Stage E artifact (omni_final.pt, or the save_dir holding it) ready to talk to."""
    a = load_artifact(path, "omni", device)
    mel = a.features
    return Omni(a.model, a.tokenizer, ChatTemplate(a.tokenizer, a.model.cfg.chat_layout), mel,
                a.system_prompt, torch.device(device))

