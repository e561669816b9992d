"""Vocoder: train a neural vocoder (HiFi-GAN losses; an iSTFT or a transposed-convolution generator) on the
shared log-mel front end, to replace Griffin-Lim.

    python train_vocoder.py --config configs/vocoder_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N train_vocoder.py --config ...

Reads TTS manifests (CSV wav,text[,speaker]) into memory (audio as int16, log-mels as float16: about 4 GB for
LJSpeech's 24 hours); the log-mel of every utterance is computed once with the mel
settings of `codec_ckpt` (Stage D's rvq_codec.pt: the features the codec decodes, so there is one definition
of the mel) or `features`. `train_on: codec` replaces each mel by the codec's reconstruction of it (what the
vocoder voices behind the Talker), `mix` takes either at random per segment. Training draws random segments
of `segment_frames` frames (`init_from` starts the generator from a trained hifigan.pt: fine-tuning on codec
mels, as HiFi-GAN fine-tunes on its acoustic model's output): first `adv_start` steps of mel L1 +
multi-resolution STFT loss (+ `lambda_phase` x the phase loss: phase, group delay and instantaneous frequency
at the mel's STFT) alone (a warm-up),
then least-squares adversarial + feature-matching losses against the multi-period and multi-scale
discriminators, with their own optimizer (generator and discriminators each checkpointed and resumed exactly).
Validation voices the first `val_utterances` of `val_csv` from their true (and, with a codec, their codec)
mels and logs log-mel L1 and multi-resolution STFT distance, beside Griffin-Lim's figures (with `refine`, also
`refined_*`: the generator followed by that many mel-consistency iterations, as the artifact voices). The
final hifigan.pt holds the generator, its config, the mel settings it expects and how it voices by default
(`synthesis`: the refinement rounds).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
from tqdm import tqdm

from omni.artifacts import load_artifact
from omni.audio import GriffinLim, LogMel, load_audio, mel_refine
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.base import BatchStream
from omni.data.speech import read_manifest
from omni.errors import UserError
from omni.infer.vocoder import RefinedGriffinLim, codec_round_trip, voice_metrics
from omni.models.codec import TalkerFeatures
from omni.perceptual import available
from omni.models.vocoder import (Discriminators, Generator, VocoderConfig, discriminator_loss,
                                 feature_matching_loss, generator_adv_loss, mr_stft_loss, phase_loss)
from omni.train.engine import Stage, run
from omni.train.optim import OptimizerSpec


@dataclass
class VocoderTrainConfig(TrainConfig):
    save_dir: str = "checkpoints/vocoder_tiny"
    train_csv: str = "data/ljspeech/train.csv"
    extra_train_csvs: list[str] = field(default_factory=list)
    val_csv: str = ""
    val_utterances: int = 20          # held-out utterances voiced at each validation
    codec_ckpt: str = ""              # Stage D's rvq_codec.pt: its mel settings, and its mels for train_on codec
    features: TalkerFeatures = field(default_factory=TalkerFeatures)   # used when there is no codec_ckpt
    train_on: str = "true"            # "true" mels | "codec" reconstructions | "mix" (either, per segment)
    init_from: str = ""               # a hifigan.pt whose generator this run starts from (fine-tuning on codec mels)
    segment_frames: int = 32          # mel frames per training segment (32: 0.31 s of audio)
    refine: int = 0                   # mel-consistency iterations after the generator at synthesis (stored in
                                      # the artifact as its default; training never sees them)
    adv_start: int = 0                # steps of mel + STFT loss alone before the discriminators join
    disc_lr: float = 0.0              # 0 = lr
    lambda_mel: float = 45.0          # HiFi-GAN's weights: mel L1 45, feature matching 2, adversarial 1
    lambda_fm: float = 2.0
    lambda_stft: float = 1.0          # multi-resolution STFT loss (spectral convergence + log magnitude)
    lambda_phase: float = 0.0         # phase loss at the mel's STFT resolution (anti-wrapped phase, group delay,
                                      # instantaneous frequency, weighted by the real magnitude)
    model: VocoderConfig = field(default_factory=VocoderConfig)


class Segments(BatchStream):
    """Random `frames`-frame segments of whole utterances: (log-mel, the audio it was made from)."""

    def __init__(self, mels, codec_mels, wavs, frames, hop, sample_rate, batch_size, seed, train_on):
        super().__init__(batch_size, seed)
        self.mels, self.codec_mels, self.wavs = mels, codec_mels, wavs
        self.frames, self.hop, self.sample_rate, self.train_on = frames, hop, sample_rate, train_on

    def __len__(self):
        return len(self.mels)

    def load(self, index, rng):
        mel = self.mels[index]
        if self.train_on == "codec" or (self.train_on == "mix" and rng.random() < 0.5):
            mel = self.codec_mels[index]
        s = int(rng.integers(0, mel.shape[0] - self.frames + 1))
        wav = self.wavs[index][s * self.hop:(s + self.frames - 1) * self.hop]
        return mel[s:s + self.frames].float(), torch.from_numpy(wav.astype(np.float32) / 32767.0)

    def collate(self, samples):
        return {"mel": torch.stack([m for m, _ in samples]), "wav": torch.stack([w for _, w in samples]),
                "audio_s": len(samples) * (self.frames - 1) * self.hop / self.sample_rate}


class VocoderGAN(nn.Module):
    """The generator and the discriminators in one module, so one forward call computes either side's loss
    (one call per optimizer, as DDP wants)."""

    def __init__(self, cfg: VocoderConfig, features, lambdas: dict):
        super().__init__()
        self.generator = Generator(cfg, features)
        self.discriminators = Discriminators(cfg.disc_channels)
        self.lambdas = lambdas
        self.mel = LogMel(features).mel   # the front end's MelSpectrogram, differentiable here

    def spectrum(self, wav):
        """The complex STFT the front end's mel is made from (its window and hop): Tensor[B x F x frames]."""
        s = self.mel.spectrogram
        return AF.spectrogram(wav.float(), s.pad, s.window, s.n_fft, s.hop_length, s.win_length, None, s.normalized,
                              s.center, s.pad_mode, s.onesided)

    def log_mel(self, spec):
        return self.mel.mel_scale(spec.real.square() + spec.imag.square()).clamp_min(1e-5).log()

    def forward(self, mel, wav, part: str, adversarial: bool):
        lam = self.lambdas
        if part == "discriminator":
            with torch.no_grad():
                fake = self.generator(mel)
            real_scores, _ = self.discriminators(wav[:, None])
            fake_scores, _ = self.discriminators(fake[:, None])
            loss = discriminator_loss(real_scores, fake_scores)
            return loss, {}
        fake = self.generator(mel)
        fake_spec, real_spec = self.spectrum(fake), self.spectrum(wav)   # one STFT each for mel and phase losses
        mel_l1 = F.l1_loss(self.log_mel(fake_spec), self.log_mel(real_spec))
        stft = mr_stft_loss(fake, wav)
        loss = lam["mel"] * mel_l1 + lam["stft"] * stft
        extra = {"mel_l1": mel_l1.detach(), "stft": stft.detach()}
        if lam["phase"]:
            phase = phase_loss(fake_spec, real_spec)
            loss = loss + lam["phase"] * phase
            extra["phase"] = phase.detach()
        if adversarial:
            with torch.no_grad():
                _, real_feats = self.discriminators(wav[:, None])
            fake_scores, fake_feats = self.discriminators(fake[:, None])
            adv, fm = generator_adv_loss(fake_scores), feature_matching_loss(real_feats, fake_feats)
            loss = loss + adv + lam["fm"] * fm
            extra.update(adv=adv.detach(), fm=fm.detach())
        return loss, extra


class VocoderStage(Stage):
    name = "vocoder"
    config_cls = VocoderTrainConfig
    default_config = "configs/vocoder_tiny.json"
    unit = "audio_s"
    unused_parameters = True   # the discriminators' step leaves the generator without gradients, and back

    def prepare(self):
        cfg = self.cfg
        if cfg.train_on not in ("true", "codec", "mix"):
            raise ConfigError(f"train_on must be 'true', 'codec' or 'mix', got {cfg.train_on!r}")
        self.codec = None
        if cfg.codec_ckpt:
            a = load_artifact(cfg.codec_ckpt, "rvq_codec")
            self.codec, self.features = a.model, a.features
            self.log.info(f"mel settings and codec mels from {cfg.codec_ckpt}")
        elif cfg.train_on != "true":
            raise ConfigError(f"train_on {cfg.train_on!r} needs codec_ckpt (Stage D's rvq_codec.pt)")
        else:
            self.features = cfg.features
        sources = [cfg.train_csv, *cfg.extra_train_csvs]
        utts = [u for path in sources for u in read_manifest(path)]
        mel = LogMel(self.features)
        self.mels, self.codec_mels, self.wavs, short, bad = [], [], [], 0, 0
        for u in tqdm(utts, desc="mels", disable=not self.dist.is_main, leave=False):
            try:
                wav = load_audio(u.wav, self.features.sample_rate)
            except Exception as e:  # any decoding failure makes the file unusable
                bad += 1
                if bad <= 5:
                    self.log.info(f"WARNING: cannot read {u.wav}: {type(e).__name__}: {e}")
                continue
            m = mel(wav)
            if m.shape[0] < cfg.segment_frames:
                short += 1
                continue
            self.wavs.append((wav.clamp(-1, 1) * 32767).round().to(torch.int16).numpy())
            self.mels.append(m.half())
            if self.codec is not None and cfg.train_on != "true":
                self.codec_mels.append(codec_round_trip(self.codec, m).half())
        hours = sum(len(w) for w in self.wavs) / self.features.sample_rate / 3600
        self.log.info(f"train: {len(self.wavs)} of {len(utts)} utterances ({hours:.2f} h) from {', '.join(sources)}; "
                      f"skipped {short} shorter than segment_frames {cfg.segment_frames}, {bad} unreadable; "
                      f"training on {cfg.train_on} mels")
        if bad > cfg.max_bad_fraction * len(utts):
            raise UserError(f"{bad} of {len(utts)} files in {', '.join(sources)} are unreadable, over "
                            f"max_bad_fraction {cfg.max_bad_fraction:.1%}")
        if not self.wavs:
            raise UserError(f"no utterance of {', '.join(sources)} is {cfg.segment_frames} frames long")
        self.val = []
        if cfg.val_csv:
            for u in read_manifest(cfg.val_csv)[:cfg.val_utterances]:
                wav = load_audio(u.wav, self.features.sample_rate)
                self.val.append((wav, mel(wav)))
            self.perceptual = available()
            if not self.perceptual:
                self.log.info("no PESQ / STOI in validation: pip install -r requirements-eval.txt")
            self.gl_metrics = voice_metrics(GriffinLim(self.features), self.val, self.features, self.codec,
                                            self.perceptual)
            if self.cfg.refine:   # the fair baseline of the refined vocoder
                refined = voice_metrics(RefinedGriffinLim(self.features, self.cfg.refine), self.val,
                                        self.features, self.codec, self.perceptual)
                self.gl_metrics.update({f"refined_{k}": v for k, v in refined.items()})
            self.log.info("Griffin-Lim on the validation utterances: " +
                          " | ".join(f"{k} {v:.4g}" for k, v in self.gl_metrics.items()))

    def build_model(self):
        c = self.cfg
        model = VocoderGAN(c.model, self.features, {"mel": c.lambda_mel, "fm": c.lambda_fm, "stft": c.lambda_stft,
                                                    "phase": c.lambda_phase})
        if c.init_from:   # a fresh run only: a resumed one restores its own weights over these
            start = load_artifact(c.init_from, "vocoder")
            if to_dict(start.features) != to_dict(self.features) or start.config.get("model") != to_dict(c.model):
                raise ConfigError(f"init_from {start.path} was trained with other mel settings or another model "
                                  f"config; fine-tuning needs the same (its config.json says which)")
            model.generator.load_state_dict(start.model.state_dict())
            self.log.info(f"generator starts from {start.path}")
        return model

    def train_data(self, model):
        c = self.cfg
        f = self.features
        return Segments(self.mels, self.codec_mels, self.wavs, c.segment_frames, f.hop_length, f.sample_rate,
                        c.batch_size, c.seed, c.train_on)

    def optimizers(self, model):
        c = self.cfg
        return {"generator": OptimizerSpec([(model.generator, c.lr)], betas=(0.8, 0.99)),
                "discriminator": OptimizerSpec([(model.discriminators, c.disc_lr or c.lr)], betas=(0.8, 0.99),
                                               warmup_steps=0)}

    def steps(self, step):
        return ["discriminator", "generator"] if step >= self.cfg.adv_start else ["generator"]

    def optimizer_loss(self, name, model, batch, step):
        loss, extra = model(batch["mel"], batch["wav"], name, step >= self.cfg.adv_start)
        return loss, extra, batch["audio_s"]

    @torch.no_grad()
    def validate(self, model):
        if not self.val:
            return {}
        gen, refine = model.generator, self.cfg.refine
        m = voice_metrics(gen, self.val, self.features, self.codec, self.perceptual)
        if refine:   # what the artifact voices at synthesis: the generator, then its mel-consistency iterations
            refined = voice_metrics(lambda mel: mel_refine(gen(mel), mel, self.features, refine), self.val,
                                    self.features, self.codec, self.perceptual)
            m.update({f"refined_{k}": v for k, v in refined.items()})
        return {**m, **{f"griffinlim_{k}": v for k, v in self.gl_metrics.items()}}

    def artifact(self, model):
        return {"model": model.generator.state_dict(), "model_config": to_dict(self.cfg.model),
                "features": to_dict(self.features), "synthesis": {"refine": self.cfg.refine},
                "config": to_dict(self.cfg)}


if __name__ == "__main__":
    run(VocoderStage)
