"""Character vocabularies stored in the speech artifacts: the audio encoder's CTC classes and the Talker's
input characters."""
from __future__ import annotations

from omni.errors import UserError
from omni.models.talker import SIL  # the Talker's reserved ids: 0 padding, 1 silence
from omni.text_norm import normalize_transcript, spoken_form

BLANK = 0  # CTC blank


class CharVocab:
    """CTC classes: 0 is the blank, 1..n the characters of the training transcripts in sorted order."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct")
        self.chars = chars
        self.index = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts) -> "CharVocab":
        return cls("".join(sorted(set("".join(texts)))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Characters outside the vocabulary are dropped (they cannot be predicted anyway)."""
        return [self.index[c] for c in text if c in self.index]

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


class TextVocab:
    """The Talker's characters (of the normalised training transcripts); ids 0 and 1 are padding and the
    silence that opens and closes every utterance."""

    def __init__(self, chars: str):
        self.chars = chars
        self.index = {c: i + 2 for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts) -> "TextVocab":
        return cls("".join(sorted({c for t in texts for c in normalize_transcript(t)})))

    def __len__(self) -> int:
        return len(self.chars) + 2

    @staticmethod
    def spoken(text: str) -> str:
        """What the Talker reads: numbers and symbols as words (omni.text_norm), then normalised letters."""
        return normalize_transcript(spoken_form(text))

    def unknown(self, text: str) -> str:
        return "".join(sorted({c for c in self.spoken(text) if c not in self.index}))

    def encode(self, text: str) -> list[int]:
        """[SIL] + characters of spoken(text) + [SIL]; a letter the Talker never saw is an error naming it
        (characters without a reading, omni.text_norm.unsayable, are the caller's to report)."""
        bad = self.unknown(text)
        if bad:
            raise UserError(f"cannot speak {bad!r} in {text!r}: the Talker knows only {self.chars!r}")
        return [SIL] + [self.index[c] for c in self.spoken(text)] + [SIL]
