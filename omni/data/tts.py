"""Talker training samples: a transcript's character ids (and, for a Thinker-conditioned Talker, the Thinker's
tokens of it) with its audio's mel frames and codec codes, and their padded batches."""
from __future__ import annotations

import torch

from omni.audio import pad_frames
from omni.models.codec import MelCodec
from omni.models.talker import PAD
from omni.vocab import TextVocab


def pad_ids(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lens.max())), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out, lens


def thinker_tokens(tokenizer, vocab: TextVocab, text: str) -> dict:
    """The Thinker's reading of what the Talker says: {"tokens": its token ids of the spoken text (the
    characters the Talker reads), "owner": for each Talker position ([SIL] + units + [SIL], as vocab.encode)
    the index of the token holding the unit's character, -1 for the silences}. Spans come from decoding
    growing prefixes, so SentencePiece's word marks and byte pieces need no special case; a space belongs to
    the word it starts."""
    spoken = vocab.spoken(text)
    ids = tokenizer.encode(spoken)
    ends = [len(tokenizer.decode(ids[:j + 1])) for j in range(len(ids))]
    holder, j = [], 0
    for i in range(len(spoken)):
        while j < len(ids) - 1 and ends[j] <= i:
            j += 1
        holder.append(j if ids else -1)
    return {"tokens": ids, "owner": [-1] + [holder[i] for _, i in vocab.units(text)] + [-1]}


@torch.no_grad()
def make_sample(codec: MelCodec, vocab: TextVocab, text: str, logmel: torch.Tensor, tokenizer=None,
                voice: int = 0) -> dict | None:
    """One Talker example {"ids", "mel" (the codec's normalised log-mel, fp16), "codes" (int16), "voice" (the
    speaker's voice id)}, plus thinker_tokens' "tokens" and "owner" when a Thinker tokenizer is given; None when
    the text has characters the vocabulary lacks or more tokens than its audio has 10 ms frames."""
    if vocab.unknown(text):
        return None
    ids = vocab.encode(text)
    if len(ids) > len(logmel):
        return None
    # through fp16 first, as training holds its mels: codes are the same however the sample was made
    x = codec.normalize(logmel.half().float().to(codec.mel_mean.device))
    sample = {"ids": ids, "mel": x.half().cpu(), "codes": codec.encode(x[None])[0].short().cpu(), "voice": voice}
    return sample if tokenizer is None else {**sample, **thinker_tokens(tokenizer, vocab, text)}


def thinker_batch(samples: list[dict]) -> dict:
    """Padded "tokens" (PAD) and "owner" (-1) of samples that have them (thinker_tokens); {} otherwise."""
    if "tokens" not in samples[0]:
        return {}
    tokens, _ = pad_ids([s["tokens"] for s in samples])
    owner = torch.full((len(samples), max(len(s["owner"]) for s in samples)), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        owner[i, :len(s["owner"])] = torch.tensor(s["owner"])
    return {"tokens": tokens, "owner": owner}


def collate(samples: list[dict], hop_s: float) -> dict:
    """Padded Talker batch: text / text_lens, mel / mel_lens, codes / code_lens, voice, audio_s (and
    thinker_batch's tokens / owner)."""
    ids, text_lens = pad_ids([s["ids"] for s in samples])
    mel, mel_lens = pad_frames([s["mel"].float() for s in samples])
    codes, code_lens = pad_frames([s["codes"].long() for s in samples])
    return {"text": ids, "text_lens": text_lens, "mel": mel, "mel_lens": mel_lens, "codes": codes.long(),
            "code_lens": code_lens, "voice": torch.tensor([s.get("voice", 0) for s in samples]),
            "audio_s": float(mel_lens.sum()) * hop_s, **thinker_batch(samples)}
