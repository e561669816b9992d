"""Speech output: text -> Talker codes -> codec mel -> waveform (Griffin-Lim, or a trained vocoder later).

    python -m omni.tts --ckpt_dir runs/demo/talker --text "the red circle is on the left" --out x.wav
    python -m omni.tts --ckpt_dir runs/demo/talker --texts lines.txt --out_dir wavs/

`load_tts(dir)` reads `talker.pt` and `rvq_codec.pt` from one folder (what train_talker.py writes) and returns
a `Speaker`; infer_chat and the evaluation use the same object. A missing or mismatched file is an error
naming it; a failure never produces placeholder audio.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch

from omni.audio import GriffinLim, MelConfig
from omni.builtin.speech import normalize_transcript
from omni.models.codec import CodecConfig, MelCodec
from omni.models.talker import PAD, SIL, Talker, TalkerConfig


class TextVocab:
    """Characters of the training transcripts; ids 0 and 1 are padding and the silence that opens and closes
    every utterance."""

    def __init__(self, chars: str):
        self.chars = chars
        self.index = {c: i + 2 for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts) -> "TextVocab":
        return cls("".join(sorted({c for t in texts for c in normalize_transcript(t)})))

    def __len__(self) -> int:
        return len(self.chars) + 2

    def unknown(self, text: str) -> str:
        return "".join(sorted({c for c in normalize_transcript(text) if c not in self.index}))

    def encode(self, text: str) -> list[int]:
        """[SIL] + characters + [SIL]; a character the Talker never saw is an error naming it."""
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"cannot speak {bad!r} in {text!r}: the Talker knows only {self.chars!r}")
        return [SIL] + [self.index[c] for c in normalize_transcript(text)] + [SIL]


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
    from omni.audio import pad_frames
    ids, text_lens = pad_ids([s["ids"] for s in samples])
    mel, mel_lens = pad_frames([s["mel"].float() for s in samples])
    codes, code_lens = pad_frames([s["codes"].long() for s in samples])
    return {"text": ids, "text_lens": text_lens, "mel": mel, "mel_lens": mel_lens, "codes": codes.long(),
            "code_lens": code_lens, "audio_s": float(mel_lens.sum()) * hop_s}


@torch.no_grad()
def code_cross_entropy(talker: Talker, samples: list[dict], batch_size: int = 32) -> torch.Tensor:
    """Teacher-forced cross-entropy (nats) per codebook over every code frame of `samples`: Tensor[K].
    exp of its mean is the code perplexity."""
    device = next(talker.parameters()).device
    total, frames = torch.zeros(talker.cfg.codebooks), 0
    for s in range(0, len(samples), batch_size):
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(samples[s:s + batch_size], 0.01).items()}
        out = talker(b["text"], b["text_lens"], b["mel"], b["mel_lens"], b["codes"], b["code_lens"])
        n = int(b["code_lens"].sum())
        total += out["ce_per_book"].float().cpu() * n
        frames += n
    return total / max(frames, 1)


def load_codec(path, device="cpu") -> tuple[MelCodec, MelConfig]:
    from omni.config import from_dict
    from omni.train.checkpoint import load_artifact, load_weights
    state = load_artifact(path, "RVQ codec", "rvq_codec.pt", ("model", "model_config", "features"))
    codec = MelCodec(from_dict(CodecConfig, state["model_config"], where=str(path)))
    load_weights(codec, state["model"], path)
    return codec.to(device).eval(), from_dict(MelConfig, state["features"], where=str(path))


@dataclass
class Speaker:
    talker: Talker
    codec: MelCodec
    vocab: TextVocab
    features: MelConfig
    device: torch.device

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @torch.no_grad()
    def speak_codes(self, texts: list[str], temperature: float = 0.0, top_k: int = 20, batch_size: int = 16,
                    seed: int = 0) -> list[torch.Tensor]:
        """Code frames Long[N_i x K] for each text (generated in batches of similar length)."""
        ids = [self.vocab.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: list = [None] * len(texts)
        for s in range(0, len(order), batch_size):
            part = order[s:s + batch_size]
            x, lens = pad_ids([ids[i] for i in part])
            codes, lengths = self.talker.generate(x.to(self.device), lens.to(self.device), temperature=temperature,
                                                  top_k=top_k, generator=gen)
            for j, i in enumerate(part):
                out[i] = codes[j, :int(lengths[j])].cpu()
        return out

    @torch.no_grad()
    def codes_to_logmel(self, codes: torch.Tensor) -> torch.Tensor:
        """Long[N x K] -> raw log-mel Tensor[N*block x n_mels]."""
        if codes.shape[0] == 0:
            raise RuntimeError("the Talker produced no speech frames (it stopped at once)")
        return self.codec.denormalize(self.codec.decode(codes[None].to(self.device)))[0].cpu()

    def speak(self, texts: list[str], **kw) -> list[torch.Tensor]:
        """Waveforms Tensor[T] at self.sample_rate, one per text."""
        gl = GriffinLim(self.features)
        return [gl(self.codes_to_logmel(c)) for c in self.speak_codes(texts, **kw)]


def load_tts(ckpt_dir, device="cpu") -> Speaker:
    """The Speaker from train_talker.py's folder: talker.pt and rvq_codec.pt."""
    from omni.config import from_dict
    from omni.train.checkpoint import load_artifact, load_weights
    d = Path(ckpt_dir)
    path = d / "talker.pt"
    state = load_artifact(path, "Talker", "talker.pt", ("model", "model_config", "vocab"))
    talker = Talker(from_dict(TalkerConfig, state["model_config"], where=str(path)))
    load_weights(talker, state["model"], path)
    codec, features = load_codec(d / "rvq_codec.pt", device)
    tc, cc = talker.cfg, codec.cfg
    if (tc.codebooks, tc.codebook_size, tc.n_mels, tc.block) != (cc.codebooks, cc.codebook_size, cc.n_mels, cc.block):
        raise ValueError(f"{path} was trained for {tc.codebooks} x {tc.codebook_size} codes of {tc.block} x "
                         f"{tc.n_mels} mel frames, but {d / 'rvq_codec.pt'} has {cc.codebooks} x "
                         f"{cc.codebook_size} of {cc.block} x {cc.n_mels}")
    return Speaker(talker.to(device).eval(), codec, TextVocab(state["vocab"]), features, torch.device(device))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Speak text with a trained Talker (train_talker.py's folder).")
    p.add_argument("--ckpt_dir", required=True, help="folder holding talker.pt and rvq_codec.pt")
    p.add_argument("--text", help="one sentence to speak")
    p.add_argument("--out", help="output WAV for --text")
    p.add_argument("--texts", help="a file of sentences, one per line")
    p.add_argument("--out_dir", help="output folder for --texts (0000.wav, 0001.wav, ...)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy, the most intelligible; higher samples more varied speech")
    p.add_argument("--top_k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if bool(args.text) == bool(args.texts):
        p.error("give --text (with --out) or --texts (with --out_dir)")
    if args.text:
        if not args.out:
            p.error("--text needs --out")
        texts, outs = [args.text], [Path(args.out)]
    else:
        if not args.out_dir:
            p.error("--texts needs --out_dir")
        texts = [line.strip() for line in Path(args.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
        outs = [Path(args.out_dir) / f"{i:04d}.wav" for i in range(len(texts))]
    try:
        speaker = load_tts(args.ckpt_dir, args.device)
        wavs = speaker.speak(texts, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for text, out, wav in zip(texts, outs, wavs):
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), wav.numpy(), speaker.sample_rate)
        print(f"{out}\t{wav.numel() / speaker.sample_rate:.2f}s\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
