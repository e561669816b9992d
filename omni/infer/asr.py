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
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.artifacts import load_artifact
from omni.audio import LogMel, audio_info, load_audio, num_frames, pad_frames, resampled_length
from omni.charlm import BOUNDARY, CharLM
from omni.config import ConfigError
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


def _logaddexp(*xs: float) -> float:
    m = max(xs)
    return m if m == -math.inf else m + math.log(sum(math.exp(x - m) for x in xs))


def ctc_beam_search(logp: torch.Tensor, chars: str, lm: CharLM, beam: int = 8, lm_weight: float = 0.5,
                    char_bonus: float = 0.0, prune: float = 8.0) -> str:
    """CTC prefix beam search (Hannun et al. 2014) with a character LM by shallow fusion: a prefix scores its
    CTC log-probability + lm_weight × its LM log-probability + char_bonus per character, and the line's end
    is scored by the LM too. logp: Tensor[T x V] log-softmax of one utterance (class 0 the blank, class i the
    character chars[i - 1]); per frame only classes within `prune` nats of the best are tried."""
    logp = logp.float().cpu()
    beams = {"": (0.0, -math.inf, 0.0)}   # prefix -> (log P ending in blank, not in blank, LM + bonus score)
    for row in logp:
        best = float(row.max())
        tried = [(i, float(row[i])) for i in torch.nonzero(row >= best - prune).flatten().tolist() if i != BLANK]
        blank = float(row[BLANK])
        nxt: dict[str, list] = {}

        def add(prefix, pb, pnb, lm_score):
            cur = nxt.get(prefix)
            if cur is None:
                nxt[prefix] = [pb, pnb, lm_score]
            else:
                cur[0], cur[1] = _logaddexp(cur[0], pb), _logaddexp(cur[1], pnb)

        for prefix, (pb, pnb, lm_score) in beams.items():
            add(prefix, _logaddexp(pb, pnb) + blank, -math.inf, lm_score)
            last = prefix[-1:]
            if last:   # the last character held over another frame
                add(prefix, -math.inf, pnb + float(row[chars.index(last) + 1]), lm_score)
            for i, p in tried:
                c = chars[i - 1]
                ext = lm_score + lm_weight * lm.logprob(prefix, c) + char_bonus
                add(prefix + c, -math.inf, (pb if c == last else _logaddexp(pb, pnb)) + p, ext)
        beams = dict(sorted(nxt.items(), key=lambda kv: -(_logaddexp(kv[1][0], kv[1][1]) + kv[1][2]))[:beam])
    return max(beams, key=lambda b: _logaddexp(*beams[b][:2]) + beams[b][2]
               + lm_weight * lm.logprob(b, BOUNDARY))


@dataclass
class DecodeConfig:
    """How Stage B's artifact turns CTC outputs into text. beam 0: best path (greedy), no language model."""
    beam: int = 8
    lm_order: int = 6           # the character LM fitted on the training transcripts when the stage finishes
    lm_weight: float = 0.5
    char_bonus: float = 0.5     # added per character: keeps the LM from favouring short outputs

    def __post_init__(self):
        if self.beam < 0 or (self.beam and self.lm_order < 1):
            raise ConfigError(f"decode: beam must be >= 0 and lm_order >= 1 with a beam, got beam {self.beam}, "
                              f"lm_order {self.lm_order}")


class Decoder:
    """A batch of CTC logits → texts: greedy (no LM) or beam search with the character LM."""

    def __init__(self, vocab: CharVocab, lm: CharLM | None = None, cfg: DecodeConfig | None = None):
        self.vocab, self.lm, self.cfg = vocab, lm, cfg or DecodeConfig(beam=0)
        if self.cfg.beam and lm is None:
            raise ValueError("a beam search decoder needs its character LM")

    def __call__(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        if not self.cfg.beam:
            return [self.vocab.decode(ids) for ids in ctc_greedy(logits, lengths)]
        logp = logits.float().log_softmax(-1).cpu()
        c = self.cfg
        return [ctc_beam_search(row[:n], self.vocab.chars, self.lm, c.beam, c.lm_weight, c.char_bonus)
                for row, n in zip(logp, lengths.tolist())]


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
