"""Stage B: train the audio encoder for speech recognition with a character CTC head.

    python train_audio_enc.py --config configs/audio_enc_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N train_audio_enc.py --config ...

Reads ASR manifests (CSV wav,text[,speaker]), builds the character vocabulary from the training transcripts,
measures every file from its header and skips (counting them in training.log) the utterances longer than
max_mel_length frames and those CTC cannot align at the encoder's frame rate; nothing is ever truncated.
Log-mel features are computed in the data workers (or once, in memory, with cache_features), augmented there
(frequency warp, SpecAugment); batches hold similar lengths.
Validation reports CTC loss, greedy WER and CER per validation file, with a few decoded examples.
The final audio_enc.pt holds the weights, the model config, the vocabulary, the feature settings and a
character n-gram LM of the training transcripts, which its decoding (`decode`: beam search) uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from omni.audio import LogMel, MelConfig, freq_warp, spec_augment, time_stretch
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.base import held_out
from omni.data.speech import FeatureCache, SpeechBatches, measure, read_manifest
from omni.errors import UserError
from omni.charlm import CharLM
from omni.ctc import DecodeConfig
from omni.infer.asr import evaluate_utterances
from omni.models.audio_encoder import AudioEncoder, AudioEncoderConfig, ctc_frames_needed, ctc_loss, encoder_frames
from omni.train.engine import Stage, run
from omni.vocab import CharVocab


@dataclass
class AudioEncConfig(TrainConfig):
    save_dir: str = "checkpoints/audio_enc_tiny"
    train_csv: str = "data/librispeech/train.csv"
    extra_train_csvs: list[str] = field(default_factory=list)  # more manifests trained on with train_csv
    val_csvs: list[str] = field(default_factory=list)   # each reported by file stem; empty: val_split of train
    val_split: float = 0.01
    max_mel_length: int = 2048          # frames (100/s): longer utterances are skipped and counted, not cut
    bucket_batches: int = 50            # global batches sorted by length together: less padding, still shuffled
    cache_features: bool = False        # log-mels computed once and kept in memory (float16, 2 bytes x n_mels per
                                        # frame: 0.9 GB per 10 h at 128 bins), not recomputed in every epoch
    val_batch_size: int = 32
    val_examples: int = 3               # decoded examples per validation file in training.log
    spec_augment: bool = True           # SpecAugment (Park et al. 2019): masks help unseen voices most
    freq_masks: int = 2
    freq_mask_width: int = 27           # mel bins, at most
    time_masks: int = 2
    time_mask_width: int = 40           # frames, at most ...
    time_mask_frac: float = 0.1         # ... and at most this fraction of the utterance
    freq_warp: float = 0.0              # vocal tract length perturbation: mel axis stretched by 1 ± this at most
    time_stretch: float = 0.0           # tempo perturbation: time axis stretched by 1 ± this at most
    features: MelConfig = field(default_factory=MelConfig)
    model: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)   # the artifact's decoding (validation: greedy)


def physical_memory_gb() -> float:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9


def augment(feats, rng, cfg: AudioEncConfig):
    """Training-time augmentation of one utterance's features Tensor[frames x n_mels]; draws only from the
    per-batch rng, so a resumed run augments identically. Module-level, so DataLoader workers can pickle it."""
    if cfg.freq_warp > 0:
        feats = freq_warp(feats, rng, cfg.freq_warp)
    if cfg.time_stretch > 0:
        stretched = time_stretch(feats, rng, cfg.time_stretch)
        feats = stretched if len(stretched) <= cfg.max_mel_length else feats   # never cut into the labels
    if cfg.spec_augment:
        feats = spec_augment(feats, rng, cfg.freq_masks, cfg.freq_mask_width, cfg.time_masks,
                             cfg.time_mask_width, cfg.time_mask_frac)
    return feats


class AudioEncStage(Stage):
    """Stage B: the audio encoder, trained for speech recognition (CTC)."""
    name = "audio_enc"
    config_cls = AudioEncConfig
    default_config = "configs/audio_enc_tiny.json"
    unit = "audio_s"
    dynamic_shapes = True

    def prepare(self):
        cfg = self.cfg
        if cfg.model.n_mels != cfg.features.n_mels:
            raise ConfigError(f"model.n_mels {cfg.model.n_mels} != features.n_mels {cfg.features.n_mels}")
        sources = [cfg.train_csv, *cfg.extra_train_csvs]
        train = measure([u for path in sources for u in read_manifest(path)], cfg.features)
        if cfg.val_csvs:
            self.val_sets = {Path(p).stem: read_manifest(p) for p in cfg.val_csvs}
        else:
            held = held_out(len(train), cfg.val_split)
            self.val_sets = {"val": [u for u, h in zip(train, held) if h]} if held.any() else {}
            train = [u for u, h in zip(train, held) if not h]
        self.vocab = CharVocab.from_texts(u.text for u in train)
        if cfg.model.vocab_size not in (0, len(self.vocab)):
            raise ConfigError(f"model.vocab_size is {cfg.model.vocab_size} but the training transcripts have "
                              f"{len(self.vocab) - 1} characters + blank; set it to 0 (derived) or "
                              f"{len(self.vocab)}")
        self.model_cfg = replace(cfg.model, vocab_size=len(self.vocab))
        kept, labels, bad, long, unaligned = [], [], 0, 0, 0
        for u in train:
            lab = self.vocab.encode(u.text)
            if u.frames < 0 or not lab:
                bad += 1
            elif u.frames > cfg.max_mel_length:
                long += 1
            elif ctc_frames_needed(lab) > encoder_frames(u.frames, cfg.model.downsample):
                unaligned += 1
            else:
                kept.append(u)
                labels.append(lab)
        self.train_utts, self.train_labels = kept, labels
        hours = sum(u.frames for u in kept) * cfg.features.hop_length / cfg.features.sample_rate / 3600
        fps = cfg.features.sample_rate / cfg.features.hop_length / cfg.model.downsample
        self.log.info(f"train: {len(kept)} of {len(train)} utterances ({hours:.2f} h) from {', '.join(sources)}; "
                      f"skipped {long} over max_mel_length {cfg.max_mel_length}, {unaligned} that CTC cannot "
                      f"align at {fps:g} frames/s, {bad} unreadable or without text")
        self.log.info(f"vocabulary: {len(self.vocab) - 1} characters + blank: {self.vocab.chars!r}")
        self.log.info("val: " + ", ".join(f"{name} {len(v)}" for name, v in self.val_sets.items()))
        if bad > cfg.max_bad_fraction * len(train):
            raise UserError(f"{bad} of {len(train)} utterances in {', '.join(sources)} are unreadable or have no "
                            f"text, over max_bad_fraction {cfg.max_bad_fraction:.1%}")
        self.mel = LogMel(cfg.features)
        self.cache = None
        if cfg.cache_features:
            gb, ram = FeatureCache.nbytes(kept, cfg.features.n_mels) / 1e9, physical_memory_gb()
            if gb > ram / 2:
                raise ConfigError(f"cache_features: the features of {len(kept)} utterances take {gb:.1f} GB, over "
                                  f"half of this machine's {ram:.0f} GB; set cache_features=false")
            self.log.info(f"computing the features of {len(kept)} utterances once, kept in memory ({gb:.2f} GB)")
            self.cache = FeatureCache(kept, self.mel, show_progress=self.dist.is_main)
            for err in self.cache.failed[:5]:
                self.log.info(f"WARNING: {err}")
            if self.cache.failed:
                self.log.info(f"{len(self.cache.failed)} files could not be decoded; they are skipped in every epoch")

    def build_model(self):
        return AudioEncoder(self.model_cfg)

    def train_data(self, model):
        cfg = self.cfg
        return SpeechBatches(self.train_utts, self.train_labels, self.mel, cfg.batch_size, cfg.seed,
                             cfg.max_mel_length, partial(augment, cfg=cfg), cfg.bucket_batches, self.cache)

    def loss(self, model, batch):
        out = model(batch["feats"], batch["lengths"])
        return ctc_loss(out["logits"], out["lengths"], batch["labels"], reduction="mean"), {}, batch["audio_s"]

    @torch.no_grad()
    def validate(self, model):
        device = next(model.parameters()).device
        metrics = {}
        for name, utts in self.val_sets.items():
            m, hyps = evaluate_utterances(model, self.vocab, self.mel, [u.wav for u in utts],
                                          [u.text for u in utts], self.cfg.val_batch_size, device)
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
            for u, h in list(zip(utts, hyps))[:self.cfg.val_examples]:
                self.log.info(f"  {name} | ref: {u.text}\n  {name} | hyp: {h}")
        return metrics

    def artifact(self, model):
        lm = None
        if self.cfg.decode.beam:
            lm = CharLM.fit([u.text for u in self.train_utts], self.cfg.decode.lm_order).to_dict()
        return {"model": model.state_dict(), "model_config": to_dict(self.model_cfg), "vocab": self.vocab.chars,
                "features": to_dict(self.cfg.features), "config": to_dict(self.cfg), "lm": lm,
                "decode": to_dict(self.cfg.decode)}


if __name__ == "__main__":
    run(AudioEncStage)
