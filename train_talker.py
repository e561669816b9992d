"""Stage D: train the RVQ speech codec, then the Talker that speaks through it.

    python train_talker.py --config configs/talker_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N train_talker.py --config ...

Two runs of the shared engine, one after the other, in one save_dir:
1. the codec (`rvq_codec_step_N.pt`, then `rvq_codec.pt`): 80 ms blocks of log-mel <-> residual VQ codes;
   its training keys are the config's `codec` section (max_steps, batch_size, lr, warmup_steps);
2. the Talker (`talker_step_N.pt`, then `talker.pt`): characters -> codes, on the codes of the finished codec
   (with `lexicon: "cmudict"`, words the CMU Pronouncing Dictionary knows are read as their phonemes);
   with `thinker_ckpt` (Stage A's thinker.pt or Stage E's omni_final.pt) each character also carries what the
   frozen Thinker makes of its token (Thinker-conditioned, as Qwen2.5-Omni's Talker reads the Thinker).
   The training manifest's `speaker` column names its voices (in order of first appearance, the first the
   default; one speaker or none: one voice, "default"); with more than one the Talker learns a voice embedding,
   and talker.pt keeps the names (`voices`).
Rerunning resumes whichever is unfinished. Validation: the codec's reconstruction MSE / L1 and per-codebook
usage; the Talker's teacher-forced code perplexity, held-out sentences spoken into save_dir/samples/, and, with
`audio_enc_ckpt` set, their round-trip WER through Stage B's recogniser.
"""
from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import soundfile as sf
import torch

from omni.artifacts import KINDS, load_artifact
from omni.audio import LogMel, load_audio, pad_frames
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.base import LengthBucketed, held_out
from omni.data.speech import read_manifest
from omni.data.tts import collate, make_sample
from omni.errors import UserError
from omni.export import file_sha256
from omni.infer.asr import evaluate_utterances
from omni.infer.evaluate import code_cross_entropy
from omni.infer.tts import Speaker
from omni.models.codec import CodecConfig, MelCodec, TalkerFeatures, usage_perplexity
from omni.models.talker import DEFAULT_VOICE, Talker, TalkerConfig
from omni.text_norm import spoken_form
from omni.train.engine import Stage, run
from omni.vocab import LEXICONS, TextVocab, lexicon


@dataclass
class CodecTraining:
    """The codec's own training keys (the shared ones at the top level are the Talker's)."""
    max_steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    val_freq: int = 1000
    model: CodecConfig = field(default_factory=CodecConfig)


@dataclass
class TalkerTrainConfig(TrainConfig):
    save_dir: str = "checkpoints/talker_tiny"
    train_csv: str = "data/ljspeech/train.csv"
    val_csvs: list[str] = field(default_factory=list)   # each reported by file stem; empty: val_split of train
    val_split: float = 0.02
    max_mel_length: int = 2048          # code frames (12.5/s, frame_ms 80): longer utterances are skipped
    bucket_batches: int = 50
    val_batch_size: int = 32
    val_samples: int = 4                # held-out sentences per validation file written to save_dir/samples/
    roundtrip: int = 100                # held-out sentences per file spoken and transcribed (0: off)
    audio_enc_ckpt: str = ""            # Stage B's audio_enc.pt: round-trip WER / CER of the Talker's speech
    thinker_ckpt: str = ""              # thinker.pt / omni_final.pt (or its folder): condition on its reading
    lexicon: str = ""                   # "cmudict": words the CMU dictionary knows are read as phonemes; "": letters
    temperature: float = 0.0            # when speaking held-out sentences: 0 = greedy (the most intelligible)
    top_k: int = 20
    frame_ms: int = 80
    features: TalkerFeatures = field(default_factory=TalkerFeatures)
    codec: CodecTraining = field(default_factory=CodecTraining)
    model: TalkerConfig = field(default_factory=TalkerConfig)


def check_config(cfg: TalkerTrainConfig) -> None:
    block_ms = cfg.codec.model.block * cfg.features.hop_length * 1000 / cfg.features.sample_rate
    if block_ms != cfg.frame_ms:
        raise ConfigError(f"frame_ms {cfg.frame_ms} but codec.model.block {cfg.codec.model.block} x "
                          f"{cfg.features.hop_length / cfg.features.sample_rate * 1000:g} ms hop = {block_ms:g} ms")
    if cfg.features.normalize != "none":
        raise ConfigError("features.normalize must be 'none': the codec normalises per mel bin itself and "
                          "Griffin-Lim inverts raw log-mel")
    if cfg.lexicon not in LEXICONS:
        raise ConfigError(f"lexicon {cfg.lexicon!r}: expected one of {list(LEXICONS)}")
    c = cfg.codec.model
    if c.n_mels != cfg.features.n_mels:
        raise ConfigError(f"codec.model.n_mels {c.n_mels} != features.n_mels {cfg.features.n_mels}")


_shared: dict | None = None   # inside shared_reads(): (manifest, mel settings) -> the SpeechSet read from it


@contextlib.contextmanager
def shared_reads():
    """Within it speech_set reads each manifest (and computes its mels) once: the codec and the Talker of one
    run share the reading."""
    global _shared
    _shared = {}
    try:
        yield
    finally:
        _shared = None


class SpeechSet:
    """A manifest's utterances with their raw log-mel frames (float16, in memory: 2.4 h of speech is ~140 MB)."""

    def __init__(self, csv: str, mel: LogMel, log=None):
        self.csv = csv
        utts = read_manifest(csv)
        self.texts, self.mels, self.wavs, self.speakers, self.bad = [], [], [], [], 0
        for u in utts:
            try:
                self.mels.append(mel(load_audio(u.wav, mel.cfg.sample_rate)).half())
            except UserError as e:   # unreadable or empty
                self.bad += 1
                if log:
                    log(f"WARNING: skipped {e}")
                continue
            self.texts.append(u.text)
            self.wavs.append(u.wav)
            self.speakers.append(u.speaker or DEFAULT_VOICE)

    def __len__(self) -> int:
        return len(self.texts)


def speech_set(csv: str, mel: LogMel, log=None) -> SpeechSet:
    """SpeechSet(csv, mel, log); within shared_reads() a copy of the one read before (its lists copied, so a
    stage may reassign or filter them; the mels are shared and never changed)."""
    if _shared is None:
        return SpeechSet(csv, mel, log)
    key = (str(csv), repr(mel.cfg))
    if key not in _shared:
        _shared[key] = SpeechSet(csv, mel, log)
    read = copy.copy(_shared[key])
    for k in ("texts", "mels", "wavs", "speakers"):
        setattr(read, k, list(getattr(read, k)))
    return read


def read_sets(cfg: TalkerTrainConfig, log) -> tuple[SpeechSet, dict[str, SpeechSet]]:
    mel = LogMel(cfg.features)
    train = speech_set(cfg.train_csv, mel, log)
    if train.bad > cfg.max_bad_fraction * (len(train) + train.bad):
        raise UserError(f"{train.bad} unreadable files in {cfg.train_csv}, over max_bad_fraction")
    if cfg.val_csvs:
        return train, {Path(p).stem: speech_set(p, mel, log) for p in cfg.val_csvs}
    held = held_out(len(train), cfg.val_split)
    if not held.any():
        return train, {}
    val = SpeechSet.__new__(SpeechSet)
    val.csv, val.bad = f"{cfg.train_csv} (val_split {cfg.val_split:g})", 0
    for key in ("texts", "mels", "wavs", "speakers"):
        items = getattr(train, key)
        setattr(val, key, [x for x, h in zip(items, held) if h])
        setattr(train, key, [x for x, h in zip(items, held) if not h])
    return train, {"val": val}


def roundtrip(asr, wavs: list[torch.Tensor], texts: list[str]) -> tuple[dict, list[str]]:
    """Stage B's greedy transcripts of 16 kHz waveforms against the texts: ({"wer", "cer", ...}, hypotheses)."""
    return evaluate_utterances(asr.model, asr.vocab, LogMel(asr.features), wavs, texts,
                               device=next(asr.model.parameters()).device)


def read_thinker(path: str):
    """The frozen Thinker a Talker reads with, from Stage A's thinker.pt or Stage E's omni_final.pt (or the
    folder holding one): (Thinker, Tokenizer, {"path", "sha256", "kind"})."""
    p = Path(path)
    if p.is_dir():
        found = [p / KINDS[k].filename for k in ("omni", "thinker") if (p / KINDS[k].filename).is_file()]
        if not found:
            raise FileNotFoundError(f"thinker_ckpt {p}: no omni_final.pt or thinker.pt in it (sft_omni.py or "
                                    f"train_text.py writes them)")
        p = found[0]
    a = load_artifact(p)
    if a.kind not in ("thinker", "omni"):
        raise ConfigError(f"thinker_ckpt {p} is a {a.kind} artifact; give thinker.pt or omni_final.pt")
    thinker = a.model.thinker if a.kind == "omni" else a.model
    return thinker.float(), a.tokenizer, {"path": str(p), "sha256": file_sha256(p), "kind": a.kind}


class Batches(LengthBucketed):
    """In-memory samples (dicts of tensors and id lists) bucketed by length; `collate` is the stage's."""

    def __init__(self, samples: list, lengths, collate, batch_size: int, seed: int, bucket: int):
        super().__init__(lengths, batch_size, seed, bucket)
        self.samples, self._collate = samples, collate

    def load(self, index, rng):
        return self.samples[index]

    def collate(self, samples):
        return self._collate(samples)


# ----------------------------------------------------------------------------------------------------------
class SpeechOutStage(Stage):
    """What the two parts share: one config file, checked once."""
    config_cls = TalkerTrainConfig
    default_config = "configs/talker_tiny.json"
    unit = "audio_s"
    dynamic_shapes = True

    @classmethod
    def configure(cls, cfg):
        check_config(cfg)
        return cfg


class CodecStage(SpeechOutStage):
    """Stage D, part 1: the RVQ codec."""
    name = "rvq_codec"

    @classmethod
    def configure(cls, cfg):
        c = super().configure(cfg).codec
        return replace(cfg, max_steps=c.max_steps, max_epochs=0, batch_size=c.batch_size, lr=c.lr,
                       warmup_steps=c.warmup_steps, val_freq=c.val_freq)

    def prepare(self):
        cfg = self.cfg
        self.train, self.val_sets = read_sets(cfg, self.log.info)
        frames = torch.cat([m.float() for m in self.train.mels])
        self.mean, self.std = frames.mean(0), frames.std(0).clamp_min(1e-3)
        hours = len(frames) * cfg.features.hop_length / cfg.features.sample_rate / 3600
        self.log.info(f"codec: {len(self.train)} utterances ({hours:.2f} h) from {cfg.train_csv}; val: "
                      + ", ".join(f"{k} {len(v)}" for k, v in self.val_sets.items()))

    def build_model(self):
        codec = MelCodec(self.cfg.codec.model)
        codec.mel_mean.copy_(self.mean)
        codec.mel_std.copy_(self.std)
        return codec

    def _collate(self, samples):
        x, lengths = pad_frames([m.float() for m in samples])
        hop = self.cfg.features.hop_length / self.cfg.features.sample_rate
        return {"mel": x, "lengths": lengths, "audio_s": float(lengths.sum()) * hop}

    def train_data(self, model):
        cfg = self.cfg
        return Batches(self.train.mels, [len(m) for m in self.train.mels], self._collate, cfg.batch_size,
                       cfg.seed, cfg.bucket_batches)

    def loss(self, model, batch):
        raw = model.module if hasattr(model, "module") else model
        out = model(raw.normalize(batch["mel"]), batch["lengths"])
        extra = {"mse": out["mse"], "l1": out["l1"], "restarted": float(sum(out["restarted"]))}
        return out["loss"], extra, batch["audio_s"]

    @torch.no_grad()
    def validate(self, model):
        device = next(model.parameters()).device
        metrics = {}
        for name, vs in self.val_sets.items():
            se = ae = n = 0.0
            codes = []
            for s in range(0, len(vs), self.cfg.val_batch_size):
                x, lengths = pad_frames([m.float() for m in vs.mels[s:s + self.cfg.val_batch_size]])
                x, lengths = model.normalize(x.to(device)), lengths.to(device)
                out = model(x, lengths)
                real = int(lengths.sum()) * x.shape[-1]
                se, ae, n = se + float(out["mse"]) * real, ae + float(out["l1"]) * real, n + real
                codes.append(out["codes"][out["block_mask"]])
            ppl = usage_perplexity(torch.cat(codes).cpu(), model.cfg.codebook_size)
            metrics.update({f"{name}/mse": se / n, f"{name}/l1": ae / n,
                            **{f"{name}/usage_ppl_{k}": p for k, p in enumerate(ppl)}})
        return metrics

    def artifact(self, model):
        return {"model": model.state_dict(), "model_config": to_dict(self.cfg.codec.model),
                "features": to_dict(self.cfg.features), "config": to_dict(self.cfg)}


# ----------------------------------------------------------------------------------------------------------
class TalkerStage(SpeechOutStage):
    """Stage D, part 2: the Talker, on the finished codec's codes."""
    name = "talker"

    def prepare(self):
        cfg = self.cfg
        codec_path = Path(cfg.save_dir) / "rvq_codec.pt"
        codec = load_artifact(codec_path, "rvq_codec")  # the codec stage wrote it; its absence is an error
        self.codec = codec.model
        if to_dict(codec.features) != to_dict(cfg.features) or to_dict(self.codec.cfg) != to_dict(cfg.codec.model):
            raise ConfigError(f"{codec_path} was trained with other features / codec settings than this config; "
                              f"use --fresh to train both again")
        train, self.val_sets = read_sets(cfg, self.log.info)
        self.vocab = TextVocab.from_texts(train.texts, lexicon(cfg.lexicon))
        if cfg.model.vocab_size not in (0, len(self.vocab)):
            raise ConfigError(f"model.vocab_size is {cfg.model.vocab_size} but the transcripts give "
                              f"{len(self.vocab)} (characters + phonemes + pad + silence); set 0 to derive it")
        self.thinker = self.tokenizer = self.thinker_source = None
        if cfg.thinker_ckpt:
            self.thinker, self.tokenizer, self.thinker_source = read_thinker(cfg.thinker_ckpt)
            self.frozen_from = ("thinker.",)
            self.log.info(f"Thinker-conditioned: every character also reads the frozen Thinker of "
                          f"{self.thinker_source['path']} ({self.thinker_source['kind']}, d_model "
                          f"{self.thinker.cfg.d_model})")
        elif cfg.model.thinker_dim:
            raise ConfigError("model.thinker_dim is set but thinker_ckpt is not: the width comes from the Thinker")
        thinker_dim = 2 * self.thinker.cfg.d_model if self.thinker is not None else 0
        self.voices = list(dict.fromkeys(train.speakers))   # the training speakers, the first one the default
        if len(self.voices) == 1:   # nothing to choose: the one voice is "default", as in Talkers before voices
            train.speakers = [DEFAULT_VOICE] * len(train)
            for v in self.val_sets.values():
                v.speakers = [DEFAULT_VOICE] * len(v)
            self.voices = [DEFAULT_VOICE]
        if cfg.model.n_voices not in (0, len(self.voices)):
            raise ConfigError(f"model.n_voices is {cfg.model.n_voices} but {cfg.train_csv} has {len(self.voices)} "
                              f"speakers; set 0 to derive it")
        self.model_cfg = replace(cfg.model, vocab_size=len(self.vocab), thinker_dim=thinker_dim,
                                 n_voices=len(self.voices))
        self.samples, long, short = [], 0, 0
        for text, mel, speaker in zip(train.texts, train.mels, train.speakers):
            s = self._sample(text, mel, speaker)
            if s is None:
                short += 1
            elif len(s["codes"]) > cfg.max_mel_length:
                long += 1
            else:
                self.samples.append(s)
        for k, v in self.val_sets.items():
            unknown = sorted(set(v.speakers) - set(self.voices))
            if unknown:
                raise UserError(f"validation file {v.csv}: speakers {unknown} are not among the training speakers "
                                f"{self.voices}")
        self.val_samples = {k: [self._sample(*x) for x in zip(v.texts, v.mels, v.speakers)]
                            for k, v in self.val_sets.items()}
        for k, v in self.val_samples.items():
            if any(s is None for s in v):
                raise UserError(f"validation file {k} holds sentences longer (in characters) than their audio "
                                 f"(in 10 ms frames); fix the manifest")
        hours = sum(len(s["mel"]) for s in self.samples) * cfg.features.hop_length / cfg.features.sample_rate / 3600
        self.log.info(f"talker: {len(self.samples)} of {len(train)} utterances ({hours:.2f} h) from "
                      f"{cfg.train_csv}; skipped {long} over max_mel_length {cfg.max_mel_length} code frames, "
                      f"{short} with more characters than 10 ms frames, {train.bad} unreadable")
        self.log.info(f"vocabulary: {len(self.vocab.chars)} characters {self.vocab.chars!r} + pad + silence")
        if cfg.lexicon:
            words = [w for t in train.texts for w in self.vocab.spoken(t).split()]
            known = sum(w in self.vocab.lexicon for w in words)
            self.log.info(f"{cfg.lexicon}: {len(self.vocab.phonemes)} phonemes; {known / max(1, len(words)):.1%} of "
                          f"the training words read as phonemes, the rest as letters")
        self.log.info(f"voices: {', '.join(self.voices)} (the default first)")
        self.asr = None
        if cfg.audio_enc_ckpt:
            self.asr = load_artifact(cfg.audio_enc_ckpt, "audio_enc")
            self.log.info(f"round-trip intelligibility through {cfg.audio_enc_ckpt}")

    def _sample(self, text, mel, speaker):
        return make_sample(self.codec, self.vocab, text, mel, self.tokenizer, self.voices.index(speaker))

    def build_model(self):
        return Talker(self.model_cfg, self.codec.cfg, self.thinker)

    def collate(self, samples):
        return collate(samples, self.cfg.features.hop_length / self.cfg.features.sample_rate)

    def train_data(self, model):
        cfg = self.cfg
        return Batches(self.samples, [len(s["codes"]) for s in self.samples], self.collate, cfg.batch_size,
                       cfg.seed, cfg.bucket_batches)

    def loss(self, model, batch):
        out = model(batch["text"], batch["text_lens"], batch["mel"], batch["mel_lens"], batch["codes"],
                    batch["code_lens"], tokens=batch.get("tokens"), owner=batch.get("owner"), voice=batch["voice"])
        extra = {"ce": out["ce"], "align": out["align"], "dur": out["dur"], "end": out["end"]}
        return out["loss"], extra, batch["audio_s"]

    @torch.no_grad()
    def validate(self, model):
        cfg = self.cfg
        metrics = {}
        for name, samples in self.val_samples.items():
            ce = code_cross_entropy(model, samples, cfg.val_batch_size)
            metrics[f"{name}/ce"] = float(ce.mean())
            metrics[f"{name}/code_ppl"] = float(ce.mean().exp())
            metrics.update({f"{name}/code_ppl_{k}": float(c.exp()) for k, c in enumerate(ce)})
            metrics.update(self._speak(model, name))
        return metrics

    def _speak(self, model, name) -> dict:
        """Speak held-out sentences: a few into samples/, and round-trip WER / CER through Stage B."""
        cfg = self.cfg
        vs = self.val_sets[name]
        n = max(cfg.val_samples, cfg.roundtrip if self.asr else 0)
        if n == 0:
            return {}
        speaker = Speaker(model, self.codec.to(next(model.parameters()).device), self.vocab, cfg.features,
                          next(model.parameters()).device, tokenizer=self.tokenizer, voices=self.voices)
        wavs = speaker.speak(vs.texts[:n], temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed,
                             voice=vs.speakers[:n])   # each sentence in the voice that recorded it
        out = Path(cfg.save_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        for i, (w, t) in enumerate(list(zip(wavs, vs.texts))[:cfg.val_samples]):
            sf.write(str(out / f"{name}_{i}.wav"), w.numpy(), cfg.features.sample_rate)
            (out / f"{name}_{i}.txt").write_text(t + "\n")
        if not self.asr:
            return {}
        m, hyps = roundtrip(self.asr, wavs[:cfg.roundtrip], [spoken_form(t) for t in vs.texts[:cfg.roundtrip]])
        for r, h in list(zip(vs.texts, hyps))[:2]:
            self.log.info(f"  {name} | said: {r}\n  {name} | heard: {h}")
        return {f"{name}/roundtrip_wer": m["wer"], f"{name}/roundtrip_cer": m["cer"]}

    def artifact(self, model):
        art = {"model": model.state_dict(), "model_config": to_dict(self.model_cfg), "vocab": self.vocab.chars,
               "lexicon": self.cfg.lexicon, "phonemes": self.vocab.phonemes, "voices": self.voices,
               "codec_config": to_dict(self.codec.cfg), "features": to_dict(self.cfg.features),
               "config": to_dict(self.cfg)}
        if self.thinker is not None:   # its weights are in "model"; what rebuilds it and reads with it here
            art.update(thinker_config=to_dict(self.thinker.cfg), thinker_source=self.thinker_source,
                       tokenizer=self.tokenizer.as_tensor())
        return art


def main(argv=None) -> None:
    with shared_reads():
        run(CodecStage, argv)
        run(TalkerStage, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
