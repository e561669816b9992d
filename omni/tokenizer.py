"""SentencePiece tokenizer with byte fallback and the special tokens every stage agrees on."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from omni.errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
# Chat and modality markers reserved now, so SFT later needs no new tokenizer (ids 4.. in this order).
SPECIAL_TOKENS = [
    "<|im_start|>", "<|im_end|>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|image|>", "<|image_start|>", "<|image_end|>",
    "<|audio|>", "<|audio_start|>", "<|audio_end|>",
    "<|speech|>", "<|ocr|>",
]
SPECIAL_IDS = {t: 4 + i for i, t in enumerate(SPECIAL_TOKENS)}  # fixed: every μOmni tokenizer has them here
# Orders of a user turn's media and text that omni.chat renders; here, beside the markers, so the omni model
# (which stores its layout) checks the name without importing the chat template.
LAYOUTS = ("media_first", "text_first")


class Tokenizer:
    def __init__(self, path: str | Path | None = None, model_proto: bytes | None = None):
        """From a `tokenizer.model` file, or from its bytes (as stored inside a final artifact)."""
        if model_proto is None:
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(f"tokenizer not found: {path}")
            model_proto = path.read_bytes()
        self.path = Path(path) if path is not None else None
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception as e:
            raise UserError(f"{path or 'tokenizer bytes'}: not a SentencePiece model ({e})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD, UNK, BOS, EOS
        self.special = {t: self.sp.piece_to_id(t) for t in SPECIAL_TOKENS}
        if self.sp.eos_id() != EOS or self.special != SPECIAL_IDS:
            raise UserError(f"{path} is not a μOmni tokenizer (special token ids differ)")

    def as_tensor(self) -> torch.Tensor:
        """The model's bytes as a uint8 tensor: how an artifact stores its tokenizer (Tokenizer(model_proto=
        t.numpy().tobytes()) reads it back)."""
        return torch.frombuffer(bytearray(self.model_proto), dtype=torch.uint8)

    def encode(self, text: str | list[str]) -> list[int] | list[list[int]]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        if isinstance(ids, np.ndarray) or hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.sp.decode([i for i in ids if i not in (PAD, BOS, EOS)])

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token stands for, for bits per byte. '▁' is one space; a byte-fallback token is
        one byte; control tokens are 0, except EOS, which stands for the document separator (1 byte)."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if self.sp.is_byte(i):
                out[i] = 1
            elif self.sp.is_control(i) or self.sp.is_unknown(i):
                out[i] = 0
            else:
                out[i] = len(self.sp.id_to_piece(i).replace("▁", " ").encode("utf-8"))
        out[EOS] = 1
        return out


def train_tokenizer(text_files: list[str | Path], out_path: str | Path, vocab_size: int,
                    max_sentences: int = 300_000, seed: int = 0) -> Tokenizer:
    """Train a BPE SentencePiece model on (a sample of) the lines of `text_files`."""
    lines = []
    for f in text_files:
        lines.extend(l for l in Path(f).read_text(encoding="utf-8").splitlines() if l.strip())
    if not lines:
        raise UserError(f"no text to train a tokenizer on in {', '.join(map(str, text_files))}")
    random.Random(seed).shuffle(lines)
    # Long documents are cut: SentencePiece ignores sentences over max_sentence_length bytes.
    sample = [l[:4000] for l in lines[:max_sentences]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=0.9995, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        user_defined_symbols=SPECIAL_TOKENS, max_sentence_length=4096, num_threads=2,
        split_digits=True, train_extremely_large_corpus=False, minloglevel=2)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(out_path)
    return Tokenizer(out_path)
