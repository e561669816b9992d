"""Speech recognition with a trained audio encoder (Stage B): character vocabulary, greedy CTC decoding,
manifest evaluation and the transcription entry point that users and later stages share.

    python -m omni.asr --ckpt runs/demo/audio_enc/audio_enc.pt a.wav b.flac ...    # prints path<TAB>text

Any sample rate, mono or multi-channel, any format soundfile reads (WAV, FLAC, OGG).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from omni.audio import LogMel, MelConfig, audio_info, load_audio, num_frames, pad_frames, resampled_length
from omni.metrics import cer, wer
from omni.models.audio_encoder import AudioEncoder, AudioEncoderConfig

BLANK = 0


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


def ctc_frames_needed(label: list[int]) -> int:
    """Fewest encoder frames that can emit `label` under CTC: one per character, plus a blank between
    each pair of equal neighbours ("ll" needs l, blank, l)."""
    return len(label) + sum(a == b for a, b in zip(label, label[1:]))


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. logits: Tensor[B x T x V]; lengths: Tensor[B]."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist()):
        row = row[:n]
        keep = torch.ones_like(row, dtype=torch.bool)
        keep[1:] = row[1:] != row[:-1]
        out.append([int(i) for i in row[keep] if i != BLANK])
    return out


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]], reduction: str = "sum"):
    """CTC negative log-likelihood of `labels` (lists of class ids, no blanks) given logits Tensor[B x T x V]
    with `lengths` real frames per row; "sum" over utterances, or "mean" per label character."""
    logp = logits.float().log_softmax(-1).transpose(0, 1)                      # [T x B x V]
    targets = torch.tensor([c for lab in labels for c in lab], device=logits.device)
    target_lengths = torch.tensor([len(lab) for lab in labels], device=logits.device)
    loss = F.ctc_loss(logp, targets, lengths, target_lengths, blank=BLANK, reduction="sum", zero_infinity=True)
    return loss if reduction == "sum" else loss / target_lengths.sum().clamp_min(1)


def _frames(audio, mel: LogMel) -> int:
    """Feature frames of a path (from its header, resampling included) or a 16 kHz Tensor[T]."""
    if torch.is_tensor(audio):
        return num_frames(audio.shape[-1], mel.cfg)
    n, sr = audio_info(audio)
    return num_frames(resampled_length(n, sr, mel.cfg.sample_rate), mel.cfg)


def _encode_batches(model: AudioEncoder, mel: LogMel, audio: list, batch_size: int, device):
    """Yield (input indices, encoder output) over `audio` (paths or 16 kHz Tensor[T]) in batches of similar
    length; features are computed per batch, so a long evaluation set never sits in memory as features."""
    order = sorted(range(len(audio)), key=lambda i: _frames(audio[i], mel))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        feats = [mel(audio[i] if torch.is_tensor(audio[i]) else load_audio(audio[i], mel.cfg.sample_rate))
                 for i in idx]
        x, lengths = pad_frames(feats)
        yield idx, model(x.to(device), lengths.to(device))


@torch.no_grad()
def transcribe(model: AudioEncoder, vocab: CharVocab, mel: LogMel, audio: list, batch_size: int = 16,
               device="cpu") -> list[str]:
    """Greedy transcripts of audio files (paths) or 16 kHz mono Tensor[T] waveforms, in input order."""
    texts = [""] * len(audio)
    for idx, out in _encode_batches(model, mel, audio, batch_size, device):
        for i, ids in zip(idx, ctc_greedy(out["logits"], out["lengths"])):
            texts[i] = vocab.decode(ids)
    return texts


@torch.no_grad()
def evaluate_utterances(model: AudioEncoder, vocab: CharVocab, mel: LogMel, audio: list, texts: list[str],
                        batch_size: int = 32, device="cpu") -> tuple[dict, list[str]]:
    """CTC loss (nats per character), greedy WER and CER of `model` on (audio, transcript) pairs; audio as
    paths or 16 kHz Tensor[T]. Returns (metrics, hypotheses in input order). The loss covers the utterances
    CTC can align at the encoder's frame rate; WER and CER cover every utterance."""
    hyps, loss_sum, n_chars = [""] * len(audio), 0.0, 0
    for idx, out in _encode_batches(model, mel, audio, batch_size, device):
        for i, ids in zip(idx, ctc_greedy(out["logits"], out["lengths"])):
            hyps[i] = vocab.decode(ids)
        labels = [vocab.encode(texts[i]) for i in idx]
        ok = [j for j, lab in enumerate(labels) if lab and ctc_frames_needed(lab) <= int(out["lengths"][j])]
        if ok:
            loss_sum += float(ctc_loss(out["logits"][ok], out["lengths"][ok], [labels[j] for j in ok],
                                       reduction="sum"))
            n_chars += sum(len(labels[j]) for j in ok)
    metrics = {"loss": loss_sum / max(n_chars, 1), "wer": wer(texts, hyps), "cer": cer(texts, hyps),
               "n": len(texts)}
    return metrics, hyps


def load_asr(path, device="cpu") -> tuple[AudioEncoder, CharVocab, LogMel]:
    """(model in eval mode, vocabulary, feature extractor) from a final `audio_enc.pt`; a missing, corrupt or
    mismatched file is an error that names it."""
    from omni.config import from_dict
    from omni.train.checkpoint import load_artifact, load_weights

    state = load_artifact(path, "audio encoder", "audio_enc.pt", ("model", "model_config", "vocab", "features"))
    cfg = from_dict(AudioEncoderConfig, state["model_config"], where=str(path))
    model = AudioEncoder(cfg)
    load_weights(model, state["model"], path)
    mel = LogMel(from_dict(MelConfig, state["features"], where=str(path)))
    return model.to(device).eval(), CharVocab(state["vocab"]), mel


def main(argv=None) -> int:
    from omni.train.dist import resolve_device

    p = argparse.ArgumentParser(description="Transcribe audio files with a trained audio encoder (greedy CTC).")
    p.add_argument("--ckpt", required=True, help="final audio_enc.pt")
    p.add_argument("audio", nargs="+", help="audio files: any sample rate, mono or stereo, WAV/FLAC/OGG")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, vocab, mel = load_asr(args.ckpt, device)
        texts = transcribe(model, vocab, mel, [Path(a) for a in args.audio], args.batch_size, device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, text in zip(args.audio, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
