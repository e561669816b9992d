"""Talker training samples: a transcript's character ids with its audio's mel frames and codec codes, and
their padded batches."""
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


@torch.no_grad()
def make_sample(codec: MelCodec, vocab: TextVocab, text: str, logmel: torch.Tensor) -> dict | None:
    """One Talker example {"ids", "mel" (the codec's normalised log-mel, fp16), "codes" (int16)}, or None when
    the text has characters the vocabulary lacks or more tokens than its audio has 10 ms frames."""
    if vocab.unknown(text):
        return None
    ids = vocab.encode(text)
    if len(ids) > len(logmel):
        return None
    # through fp16 first, as training holds its mels: codes are the same however the sample was made
    x = codec.normalize(logmel.half().float().to(codec.mel_mean.device))
    return {"ids": ids, "mel": x.half().cpu(), "codes": codec.encode(x[None])[0].short().cpu()}


def collate(samples: list[dict], hop_s: float) -> dict:
    """Padded Talker batch: text / text_lens, mel / mel_lens, codes / code_lens, audio_s."""
    ids, text_lens = pad_ids([s["ids"] for s in samples])
    mel, mel_lens = pad_frames([s["mel"].float() for s in samples])
    codes, code_lens = pad_frames([s["codes"].long() for s in samples])
    return {"text": ids, "text_lens": text_lens, "mel": mel, "mel_lens": mel_lens, "codes": codes.long(),
            "code_lens": code_lens, "audio_s": float(mel_lens.sum()) * hop_s}
