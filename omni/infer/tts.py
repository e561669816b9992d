"""Speech output: text -> Talker codes -> codec mel -> waveform (a trained vocoder, or Griffin-Lim).

    python -m omni.tts --ckpt_dir runs/demo/talker --text "the red circle is on the left" --out x.wav
    python -m omni.tts --ckpt_dir runs/demo/talker --texts lines.txt --out_dir wavs/ [--vocoder hifigan.pt]
    python -m omni.tts --ckpt_dir runs/demo/talker --list_voices        # then --voice NAME (default: the first)

`load_speaker(dir)` reads `talker.pt` and `rvq_codec.pt` from one folder (what train_talker.py writes) and
returns a `Speaker`; infer_chat and the evaluation use the same object. The waveform comes from the vocoder
given (`vocoder=`), or a hifigan.pt found beside the Talker, else Griffin-Lim; `Speaker.rendered_by` says which.
A Talker speaks in the voices it was trained on (`Speaker.voices`, the default first, also called "default");
an unknown voice is an error that lists them. A missing or mismatched file is an error naming it; a failure
never produces placeholder audio.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch

from omni.artifacts import check_talker_codec, load_artifact
from omni.audio import GriffinLim, MelConfig
from omni.config import to_dict
from omni.data.tts import pad_ids, thinker_batch, thinker_tokens
from omni.errors import UserError, exit_on_user_error
from omni.infer.vocoder import VOCODER_FILE, load_vocoder
from omni.models.codec import MelCodec
from omni.models.talker import DEFAULT_VOICE, Talker
from omni.text_norm import unsayable
from omni.vocab import TextVocab


@dataclass
class Speaker:
    talker: Talker
    codec: MelCodec
    vocab: TextVocab
    features: MelConfig
    device: torch.device
    config: dict = field(default_factory=dict)  # the Talker's training config (its audio_enc_ckpt, ...)
    vocoder: object = None                      # omni.infer.vocoder.Vocoder, or None: Griffin-Lim
    rendered_by: str = "vocoder: Griffin-Lim"   # what makes the waveform, in one line
    tokenizer: object = None                    # a Thinker-conditioned Talker's: the Thinker's tokenizer
    voices: list = field(default_factory=lambda: [DEFAULT_VOICE])   # the voices it speaks in, the default first

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def voice_name(self, name: str | None) -> str:
        """The voice `name` asks for: None, "" and "default" are the first; an unknown name is a UserError that
        lists the voices."""
        if not name or name == DEFAULT_VOICE:
            return self.voices[0]
        if name not in self.voices:
            raise UserError(f"unknown voice {name!r}; this Talker speaks in {', '.join(self.voices)}")
        return name

    def voice_ids(self, voice, n: int) -> list[int]:
        """Voice ids of n texts from `voice`: None (the default), a name, or a name per text (voice_name)."""
        names = [voice] * n if voice is None or isinstance(voice, str) else list(voice)
        if len(names) != n:
            raise ValueError(f"{len(names)} voices for {n} texts")
        return [self.voices.index(self.voice_name(name)) for name in names]

    @torch.no_grad()
    def speak_codes(self, texts: list[str], temperature: float = 0.0, top_k: int = 20, batch_size: int = 16,
                    seed: int = 0, voice=None) -> list[torch.Tensor]:
        """Code frames Long[N_i x K] for each text (generated in batches of similar length), in `voice` (a
        name, a name per text, or None: the default)."""
        voices = torch.tensor(self.voice_ids(voice, len(texts)))
        ids = [self.vocab.encode(t) for t in texts]
        read = [thinker_tokens(self.tokenizer, self.vocab, t) for t in texts] if self.talker.thinker is not None else None
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: list = [None] * len(texts)
        for s in range(0, len(order), batch_size):
            part = order[s:s + batch_size]
            x, lens = pad_ids([ids[i] for i in part])
            tb = {k: v.to(self.device) for k, v in thinker_batch([read[i] for i in part]).items()} if read else {}
            codes, lengths = self.talker.generate(x.to(self.device), lens.to(self.device), temperature=temperature,
                                                  top_k=top_k, generator=gen, voice=voices[part].to(self.device),
                                                  **tb)
            for j, i in enumerate(part):
                out[i] = codes[j, :int(lengths[j])].cpu()
        return out

    @torch.no_grad()
    def codes_to_logmel(self, codes: torch.Tensor) -> torch.Tensor:
        """Long[N x K] -> raw log-mel Tensor[N*block x n_mels]."""
        if codes.shape[0] == 0:
            raise UserError("the Talker produced no speech frames (it stopped at once)")
        return self.codec.denormalize(self.codec.decode(codes[None].to(self.device)))[0].cpu()

    def speak(self, texts: list[str], **kw) -> list[torch.Tensor]:
        """Waveforms Tensor[T] at self.sample_rate, one per text (speak_codes' arguments: voice=NAME, ...)."""
        render = self.vocoder or GriffinLim(self.features)
        return [render(self.codes_to_logmel(c)) for c in self.speak_codes(texts, **kw)]


def load_speaker(ckpt_dir, device="cpu", vocoder: str | None = None) -> Speaker:
    """The Speaker from train_talker.py's folder (talker.pt and rvq_codec.pt, which must fit each other) or
    an export folder (its talker/ and rvq_codec/). `vocoder`: a hifigan.pt (or its folder) to voice with;
    None: the one beside the Talker (or the export's) if there is one; "": Griffin-Lim."""
    from omni.export import is_component
    d = Path(ckpt_dir)
    talker = load_artifact(d, "talker", device)   # talker.pt, or an export's talker/ component
    codec = load_artifact(d, "rvq_codec", device)
    check_talker_codec(to_dict(talker.model.codec_cfg), to_dict(codec.model.cfg), talker.path, codec.path)
    voc, rendered_by = None, f"vocoder: Griffin-Lim (no {VOCODER_FILE} in {d})"
    if vocoder is None and ((d / VOCODER_FILE).exists() or is_component(d / "vocoder")):
        vocoder = str(d)
    if vocoder:
        voc = load_vocoder(vocoder, codec.features, device)
        rendered_by = f"vocoder: {voc.describe()}"
    elif vocoder == "":
        rendered_by = "vocoder: Griffin-Lim (asked for)"
    return Speaker(talker.model, codec.model, talker.vocab, codec.features, torch.device(device), talker.config,
                   voc, rendered_by, talker.tokenizer, talker.voices)


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
    p.add_argument("--voice", help="the voice to speak in (default: the Talker's first; see --list_voices)")
    p.add_argument("--list_voices", action="store_true", help="print the Talker's voices, the default first, and exit")
    p.add_argument("--vocoder", help="hifigan.pt to voice with (default: the one beside the Talker, if any)")
    p.add_argument("--griffin_lim", action="store_true", help="voice with Griffin-Lim even if a vocoder is found")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.list_voices:
        with exit_on_user_error():
            print("\n".join(load_artifact(args.ckpt_dir, "talker", args.device).voices))
        return 0
    if bool(args.text) == bool(args.texts):
        p.error("give --text (with --out) or --texts (with --out_dir)")
    if args.text and not args.out:
        p.error("--text needs --out")
    if args.texts and not args.out_dir:
        p.error("--texts needs --out_dir")
    with exit_on_user_error():
        if args.text:
            texts, outs = [args.text], [Path(args.out)]
        else:
            texts = [line.strip() for line in Path(args.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
            outs = [Path(args.out_dir) / f"{i:04d}.wav" for i in range(len(texts))]
        speaker = load_speaker(args.ckpt_dir, args.device, "" if args.griffin_lim else args.vocoder)
        print(speaker.rendered_by, file=sys.stderr)
        for i, text in enumerate(texts):   # numbers and symbols are read out; what has no reading is reported
            if unsayable(text):
                print(f"note: {'--text' if args.text else f'{args.texts} text {i + 1}'}: no reading for "
                      f"{unsayable(text)!r}; left out", file=sys.stderr)
        wavs = speaker.speak(texts, temperature=args.temperature, top_k=args.top_k, seed=args.seed, voice=args.voice)
    for text, out, wav in zip(texts, outs, wavs):
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out), wav.numpy(), speaker.sample_rate)
        print(f"{out}\t{wav.numel() / speaker.sample_rate:.2f}s\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
