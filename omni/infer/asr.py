"""Speech recognition with a trained audio encoder (Stage B): CTC decoding (greedy, or beam search with the
artifact's character LM), batched transcription and manifest evaluation, the entry point users and later
stages share.

    python -m omni.asr --ckpt runs/demo/audio_enc/audio_enc.pt a.wav b.flac ...    # prints path<TAB>text

    asr = load_artifact("runs/demo/audio_enc/audio_enc.pt")
    transcribe(asr.model, asr.vocab, LogMel(asr.features), ["a.wav", waveform_16k], decoder=asr.decoder)

Any sample rate, mono or multi-channel, any format soundfile reads (WAV, FLAC, OGG).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from omni.artifacts import load_artifact
from omni.audio import LogMel, audio_info, load_audio, num_frames, pad_frames, resampled_length
from omni.ctc import Decoder
from omni.device import resolve_device
from omni.errors import exit_on_user_error
from omni.metrics import cer, wer
from omni.models.audio_encoder import AudioEncoder, ctc_frames_needed, ctc_loss
from omni.vocab import CharVocab


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
               device="cpu", decoder: Decoder | None = None) -> list[str]:
    """Transcripts of audio files (paths) or 16 kHz mono Tensor[T] waveforms, in input order; greedy unless
    a `decoder` is given (an artifact's `decoder`: beam search with its LM)."""
    decoder = decoder or Decoder(vocab)
    texts = [""] * len(audio)
    for idx, out in _encode_batches(model, mel, audio, batch_size, device):
        for i, text in zip(idx, decoder(out["logits"], out["lengths"])):
            texts[i] = text
    return texts


@torch.no_grad()
def evaluate_utterances(model: AudioEncoder, vocab: CharVocab, mel: LogMel, audio: list, texts: list[str],
                        batch_size: int = 32, device="cpu", decoder: Decoder | None = None
                        ) -> tuple[dict, list[str]]:
    """CTC loss (nats per character), WER and CER of `model` on (audio, transcript) pairs; audio as paths or
    16 kHz Tensor[T]; greedy unless a `decoder` is given. Returns (metrics, hypotheses in input order). The
    loss covers the utterances CTC can align at the encoder's frame rate; WER and CER cover every utterance."""
    decoder = decoder or Decoder(vocab)
    hyps, loss_sum, n_chars = [""] * len(audio), 0.0, 0
    for idx, out in _encode_batches(model, mel, audio, batch_size, device):
        for i, text in zip(idx, decoder(out["logits"], out["lengths"])):
            hyps[i] = text
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
    p = argparse.ArgumentParser(description="Transcribe audio files with a trained audio encoder (CTC beam search "
                                            "with its character LM, or greedy).")
    p.add_argument("--ckpt", required=True, help="final audio_enc.pt")
    p.add_argument("audio", nargs="+", help="audio files: any sample rate, mono or stereo, WAV/FLAC/OGG")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--greedy", action="store_true", help="best path, without the artifact's character LM")
    args = p.parse_args(argv)
    with exit_on_user_error():
        device = resolve_device(args.device)
        asr = load_artifact(args.ckpt, "audio_enc", device)
        texts = transcribe(asr.model, asr.vocab, LogMel(asr.features), [Path(a) for a in args.audio],
                           args.batch_size, device, None if args.greedy else asr.decoder)
    for path, text in zip(args.audio, texts):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
