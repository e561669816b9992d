"""Text corpora: reading documents, a token cache built once, and packed fixed-length windows."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from omni.data.base import BatchStream, held_out
from omni.data.hints import data_hint
from omni.errors import UserError
from omni.export import file_sha256
from omni.tokenizer import EOS, Tokenizer


def read_documents(path: str | Path) -> list[str]:
    """`.txt`: one document per line; `.jsonl`: one {"text": ...} per line. Empty documents are dropped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text corpus not found: {path}; {data_hint(path, 'text')}")
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if path.suffix == ".jsonl":
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise UserError(f"{path}:{n}: expected a JSON object with a 'text' field ({e})") from None
            else:
                text = line.rstrip("\n")
            if text.strip():
                docs.append(text)
    if not docs:
        raise UserError(f"{path} holds no documents")
    return docs


def token_cache(corpus: str | Path, tok: Tokenizer, cache_dir: str | Path, val_split: float = 0.0,
                validation: bool = False) -> np.ndarray:
    """Token ids of the corpus, documents joined by EOS, tokenized once and memory-mapped after. The cache
    is keyed by the corpus and tokenizer contents, so editing either rebuilds it. With val_split, the
    documents `held_out` names form the validation part (validation=True), the rest the training part."""
    corpus, cache_dir = Path(corpus), Path(cache_dir)
    if not corpus.exists():
        read_documents(corpus)  # raises the helpful error
    part = f"{val_split:g}{'v' if validation else 't'}" if val_split > 0 else "all"
    key = hashlib.sha256((file_sha256(corpus) + hashlib.sha256(tok.model_proto).hexdigest() + part).encode()).hexdigest()[:16]
    path = cache_dir / f"tokens_{corpus.stem}_{key}.npy"
    if not path.exists():
        docs = read_documents(corpus)
        if val_split > 0:
            docs = [d for d, h in zip(docs, held_out(len(docs), val_split)) if h == validation]
        dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
        parts = []
        for i in range(0, len(docs), 20000):
            for ids in tok.encode(docs[i:i + 20000]):
                parts.append(np.asarray(ids + [EOS], dtype=dtype))
        arr = np.concatenate(parts)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class PackedTokens(BatchStream):
    """Fixed windows of ctx_len + 1 tokens at stride ctx_len over the EOS-joined stream: every window is
    full (no padding), and consecutive windows share one token so every token is a target once."""

    def __init__(self, tokens: np.ndarray, ctx_len: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        super().__init__(batch_size, seed, shuffle)
        self.tokens, self.ctx_len = tokens, ctx_len
        self.n = (len(tokens) - 1) // ctx_len

    def __len__(self) -> int:
        return self.n

    def load(self, index, rng):
        s = index * self.ctx_len
        return torch.from_numpy(self.tokens[s:s + self.ctx_len + 1].astype(np.int64))

    def collate(self, samples):
        x = torch.stack(samples)
        return {"input_ids": x[:, :-1], "targets": x[:, 1:]}


def eval_windows(tokens: np.ndarray, ctx_len: int, batch_size: int):
    """All of `tokens` as (input_ids, targets) batches, the last window possibly shorter: every token
    after the first is predicted exactly once."""
    starts = list(range(0, len(tokens) - 1, ctx_len))
    full = [s for s in starts if s + ctx_len + 1 <= len(tokens)]
    for i in range(0, len(full), batch_size):
        x = torch.from_numpy(np.stack([tokens[s:s + ctx_len + 1] for s in full[i:i + batch_size]]).astype(np.int64))
        yield x[:, :-1], x[:, 1:]
    for s in starts[len(full):]:
        x = torch.from_numpy(np.asarray(tokens[s:], dtype=np.int64))[None]
        yield x[:, :-1], x[:, 1:]
