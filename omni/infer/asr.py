"""Speech recognition with a trained audio encoder (Stage B): greedy CTC decoding, batched transcription and
manifest evaluation, the entry point users and later stages share.

    python -m omni.asr --ckpt runs/demo/audio_enc/audio_enc.pt a.wav b.flac ...    # prints path<TAB>text

    asr = load_artifact("runs/demo/audio_enc/audio_enc.pt")
    transcribe(asr.model, asr.vocab, LogMel(asr.features), ["a.wav", waveform_16k])

Any sample rate, mono or multi-channel, any format soundfile reads (WAV, FLAC, OGG).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from omni.artifacts import load_artifact
from omni.audio import LogMel, audio_info, load_audio, num_frames, pad_frames, resampled_length
from omni.device import resolve_device
from omni.errors import exit_on_user_error
from omni.metrics import cer, wer
from omni.models.audio_encoder import BLANK, AudioEncoder, ctc_frames_needed, ctc_loss
from omni.vocab import CharVocab


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Transcribe audio files with a trained audio encoder (greedy CTC).")
    p.add_argument("--ckpt", required=True, help="final audio_enc.pt")
    p.add_argument("audio", nargs="+", help="audio files: any sample rate, mono or stereo, WAV/FLAC/OGG")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    with exit_on_user_error():
        device = resolve_device(args.device)
        asr = load_artifact(args.ckpt, "audio_enc", device)
        texts = transcribe(asr.model, asr.vocab, LogMel(asr.features), [Path(a) for a in args.audio],
                           args.batch_size, device)
    for path, text in zip(args.audio, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
