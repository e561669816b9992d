"""The chat template: one conversation → one token sequence, written once and used by SFT training,
evaluation and chat inference alike.

A conversation is a list of `Turn(role, content, images, audio)` with role "system", "user" or "assistant";
a user turn may carry media: for rendering, the number of tokens each medium occupies (the projected media
tokens are spliced in by omni.models.omni); in data and chat, their paths. The sequence, over the
tokenizer's reserved markers:

    <|im_start|><|system|> You are ...<|im_end|>                        (only when a system turn is given)
    <|im_start|><|user|><|image_start|><|image|>*n<|image_end|><|audio_start|><|audio|>*m<|audio_end|> question
    <|im_end|>                                                           (no line breaks in the sequence)
    <|im_start|><|assistant|> answer<|im_end|>

That is the "media_first" layout: media first in their turn, images before audio. In the "text_first" layout
a user turn is its text, then its audio, then its images, so the image sits right before the assistant's turn:
its tokens can read the question (attention is causal) and the answer finds them at a fixed distance whatever
the question's length. `<|image|>` / `<|audio|>` are placeholders, one per media token. Training learns every
assistant turn's tokens and its closing <|im_end|> (`trained`); a prompt for generation ends with
`<|im_start|><|assistant|>` and generation stops at <|im_end|>.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omni.errors import UserError
from omni.tokenizer import LAYOUTS, Tokenizer

ROLES = ("system", "user", "assistant")


@dataclass
class Turn:
    role: str
    content: str
    images: list = field(default_factory=list)   # per image: its path (data) or tokens (rendering)
    audio: list = field(default_factory=list)    # per clip: likewise


@dataclass
class Rendered:
    """ids: the sequence (with placeholder ids where media tokens go); trained: Bool per id, True where the
    model learns to predict that id (the assistant's tokens and their <|im_end|>); image_counts / audio_counts:
    tokens per medium, in sequence order."""
    ids: list[int]
    trained: list[bool]
    image_counts: list[int]
    audio_counts: list[int]


def check_turns(turns: list[Turn], where: str, for_generation: bool = False) -> None:
    """An optional system turn, then user and assistant turns alternating, ending with the assistant (or, for
    generation, with the user); media only on user turns. Raises UserError naming `where`."""
    roles = [t.role for t in turns]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise UserError(f"{where}: unknown role {bad[0]!r}; roles are {', '.join(ROLES)}")
    body = roles[1:] if roles and roles[0] == "system" else roles
    want = ["user", "assistant"] * ((len(body) + 1) // 2)
    if not body or body != want[:len(body)]:
        raise UserError(f"{where}: turns must alternate user, assistant (after an optional system turn), got "
                         f"{roles}")
    if body[-1] != ("user" if for_generation else "assistant"):
        raise UserError(f"{where}: the last turn must be {'a user' if for_generation else 'an assistant'} turn")
    for t in turns:
        if t.role != "user" and (t.images or t.audio):
            raise UserError(f"{where}: only user turns may carry an image or audio")


class ChatTemplate:
    def __init__(self, tok: Tokenizer, layout: str = "media_first"):
        if layout not in LAYOUTS:
            raise UserError(f"chat layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.tok, self.layout = tok, layout
        s = tok.special
        self.im_start, self.im_end = s["<|im_start|>"], s["<|im_end|>"]
        self.role = {"system": s["<|system|>"], "user": s["<|user|>"], "assistant": s["<|assistant|>"]}
        self.image, self.image_start, self.image_end = s["<|image|>"], s["<|image_start|>"], s["<|image_end|>"]
        self.audio, self.audio_start, self.audio_end = s["<|audio|>"], s["<|audio_start|>"], s["<|audio_end|>"]
        self.stop_ids = (self.im_end, tok.eos_id)

    def render(self, turns: list[Turn], for_generation: bool = False) -> Rendered:
        """The sequence of a conversation whose turns' `images` / `audio` hold token counts. for_generation:
        the conversation ends with a user turn, and the sequence with the assistant's opening markers."""
        ids, trained, img_n, aud_n = [], [], [], []

        def put(tokens, learn=False):
            ids.extend(tokens)
            trained.extend([learn] * len(tokens))

        def images(t):
            for n in t.images:
                put([self.image_start] + [self.image] * n + [self.image_end])
                img_n.append(n)

        def audio(t):
            for n in t.audio:
                put([self.audio_start] + [self.audio] * n + [self.audio_end])
                aud_n.append(n)

        def text(t):
            put(self.tok.encode(t.content) if t.content else [], t.role == "assistant")

        parts = (images, audio, text) if self.layout == "media_first" else (text, audio, images)
        for t in turns:
            put([self.im_start, self.role[t.role]])
            for part in parts:
                part(t)
            put([self.im_end], t.role == "assistant")
        if for_generation:
            put([self.im_start, self.role["assistant"]])
        return Rendered(ids, trained, img_n, aud_n)

    def describe(self) -> dict:
        """The template as data (an export's chat_template.json): the layout and every marker's id."""
        names = ("<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|image_start|>",
                 "<|image|>", "<|image_end|>", "<|audio_start|>", "<|audio|>", "<|audio_end|>")
        first = self.layout == "media_first"
        media = ("<|image_start|><|image|>*n<|image_end|> per image",
                 "<|audio_start|><|audio|>*m<|audio_end|> per clip")
        return {"layout": self.layout,
                "turn": "<|im_start|><|{role}|>" + ("{media}{content}" if first else "{content}{media}") +
                        "<|im_end|>",
                "media": " then ".join(media if first else media[::-1]) + " (user turns only)",
                "generation_prompt": "<|im_start|><|assistant|>", "stop": ["<|im_end|>", "eos"],
                "roles": list(ROLES), "markers": {n: self.tok.special[n] for n in names}}

    def decode_reply(self, ids: list[int]) -> str:
        """Generated ids → text, up to the first stop marker."""
        out = []
        for i in ids:
            if i in self.stop_ids:
                break
            out.append(i)
        return self.tok.decode(out).strip()
