"""Stage E: multimodal SFT — the Thinker learns to answer about images and speech through two projectors.

    python sft_omni.py --config configs/omni_sft_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N sft_omni.py --config ...

The Thinker (Stage A), the ViT (Stage C) and the audio encoder (Stage B) come from their final artifacts
(`thinker_ckpt`, `vision_ckpt`, `audio_enc_ckpt`; sizes are read from them). Each conversation goes through
the chat template (omni/chat.py): image tokens (CLS + pooled patches) and stacked audio frames are projected
into the Thinker's sequence, and the loss covers the assistant's tokens only. The projectors always train,
the Thinker unless `freeze.thinker`, the encoders only when unfrozen (`freeze.vision` / `freeze.audio`
false); frozen encoders run once, before training, and their features are reused every epoch. With
`align_steps` the first steps train the projectors alone (LLaVA's stage 1). Validation answers val_file's
rows greedily and scores every task (omni/infer/sft_eval.py). The final `omni_final.pt` holds the whole
model (the tuned Thinker, projectors, encoders), the tokenizer, the audio features and the sha256 of the
artifacts it started from: one file that loads and talks (omni.infer.omni.load_omni).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from omni.artifacts import load_artifact
from omni.chat import ChatTemplate
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.sft import LOSS_PER, SFTBatches, load_media, read_sft, render
from omni.errors import UserError
from omni.export import file_sha256
from omni.infer.sft_eval import evaluate_sft
from omni.models.omni import MEDIA_KEYS, OmniConfig, OmniModel, ProjectorConfig
from omni.train.engine import Stage, run
from omni.train.optim import OptimizerSpec


@dataclass
class Freeze:
    thinker: bool = False
    vision: bool = True
    audio: bool = True


@dataclass
class SFTConfig(TrainConfig):
    save_dir: str = "checkpoints/omni_sft_tiny"
    train_files: list[str] = field(default_factory=lambda: ["data/sft/train.jsonl"])   # mixed into one set
    val_file: str = "data/sft/val.jsonl"
    thinker_ckpt: str = "checkpoints/thinker_tiny/thinker.pt"         # Stage A
    vision_ckpt: str = "checkpoints/vision_tiny/vision.pt"            # Stage C; "" = no image input
    audio_enc_ckpt: str = "checkpoints/audio_enc_tiny/audio_enc.pt"   # Stage B; "" = no audio input
    system_prompt: str = ""            # a system turn added to every conversation without one (also in chat)
    chat_layout: str = "media_first"   # a user turn's media before its text, or "text_first" (omni.chat)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    freeze: Freeze = field(default_factory=Freeze)
    projector_lr: float = 1e-3         # `lr` is the Thinker's; the log's lr is this one (after the schedule)
    encoder_lr: float = 1e-4           # unfrozen encoders only
    align_steps: int = 0               # projectors alone for so many steps, then everything at its own warmup
    bucket: int = 50                   # batches of similar length are drawn from runs of this many
    loss_per: str = "token"            # "sample": each conversation's answer weighs the same (omni.data.sft.collate)
    val_batch_size: int = 64
    val_max_new_tokens: int = 48
    val_shuffled: bool = True          # the grounding check (images / audio shuffled among rows) in validation


MAKES = {"thinker_ckpt": ("train_text.py", "thinker"), "audio_enc_ckpt": ("train_audio_enc.py", "audio_enc"),
         "vision_ckpt": ("train_vision.py", "vision")}
KIND = {"thinker_ckpt": "thinker", "audio_enc_ckpt": "audio_enc", "vision_ckpt": "vision"}


class OmniStage(Stage):
    """Stage E: multimodal SFT of the Thinker with image and audio projectors."""
    name = "omni"
    config_cls = SFTConfig
    default_config = "configs/omni_sft_tiny.json"
    unit = "tok"
    dynamic_shapes = True
    unused_parameters = True   # a batch without audio leaves the audio projector without a gradient

    def _artifact(self, key: str):
        path = getattr(self.cfg, key)
        if not path:
            return None
        try:
            a = load_artifact(path, KIND[key], "cpu")
        except FileNotFoundError:
            script, name = MAKES[key]
            raise FileNotFoundError(f"{key} {path} not found: train that stage first (`python {script} --config "
                                    f"configs/demo/{name}.json` for the demo, configs/{name}_tiny.json at the "
                                    f"seed's sizes) or point {key} at your own") from None
        except UserError as e:   # not the artifact asked for, or unreadable
            raise ConfigError(f"{key}: {e}") from None
        self.sources[KIND[key]] = {"path": str(path), "sha256": file_sha256(a.path)}
        return a

    def prepare(self):
        cfg, log = self.cfg, self.log
        if cfg.loss_per not in LOSS_PER:
            raise ConfigError(f"loss_per must be one of {', '.join(LOSS_PER)}, got {cfg.loss_per!r}")
        self.sources = {}
        self.parts = {k: self._artifact(k) for k in KIND}
        thinker, vision, audio = (self.parts[k] for k in ("thinker_ckpt", "vision_ckpt", "audio_enc_ckpt"))
        self.tok = thinker.tokenizer
        try:
            self.template = ChatTemplate(self.tok, cfg.chat_layout)
        except UserError as e:
            raise ConfigError(f"chat_layout: {e}") from None
        self.model_cfg = OmniConfig(thinker.model.cfg, vision.model.cfg.vision if vision else None,
                                    audio.model.cfg if audio else None, cfg.projector, cfg.chat_layout)
        self.mel = audio.features if audio else None
        try:  # a malformed row is an error naming its file and line
            self.train_examples = [ex for f in cfg.train_files for ex in read_sft(f, cfg.system_prompt)]
            self.val_examples = read_sft(cfg.val_file, cfg.system_prompt) if cfg.val_file else []
        except UserError as e:
            raise ConfigError(str(e)) from None
        if cfg.freeze.thinker:  # with the Thinker frozen a text-only row has nothing to train
            n = len(self.train_examples)
            self.train_examples = [ex for ex in self.train_examples if ex.images or ex.audio]
            if len(self.train_examples) < n:
                log.info(f"freeze.thinker: {n - len(self.train_examples):,} text-only training rows left out")
        log.info(f"parts: Thinker {cfg.thinker_ckpt}, ViT {cfg.vision_ckpt or '(none)'}, audio encoder "
                 f"{cfg.audio_enc_ckpt or '(none)'}; frozen: "
                 f"{', '.join(k for k in ('thinker', 'vision', 'audio') if getattr(cfg.freeze, k)) or 'nothing'}")

    def build_model(self):
        try:
            model = OmniModel(self.model_cfg)
        except ValueError as e:  # projector settings that do not fit the parts
            raise ConfigError(str(e)) from None
        model.thinker.load_state_dict(self.parts["thinker_ckpt"].model.state_dict())
        if model.vision is not None:
            model.vision.load_state_dict(self.parts["vision_ckpt"].model.vision.state_dict())
        if model.audio is not None:
            model.audio.load_state_dict(self.parts["audio_enc_ckpt"].model.state_dict())
        self.parts = None  # their weights now live in the model
        f = self.cfg.freeze
        return model.freeze(thinker=f.thinker, vision=f.vision, audio=f.audio)

    def _prepared(self, model, examples, name: str):
        """(the examples that fit the Thinker's context, their renderings: None for a row whose media are
        unreadable, which the stream skips and counts); media loaded into self.media."""
        cfg = self.cfg
        try:
            self.media = load_media(examples, model, self.mel, next(model.parameters()).device,
                                    encode_images=cfg.freeze.vision, encode_audio=cfg.freeze.audio,
                                    media=getattr(self, "media", None), progress=self.dist.is_main)
        except UserError as e:  # images or audio for a model without that encoder
            raise ConfigError(str(e)) from None
        keep, rendered, long, bad = [], [], 0, 0
        for ex in examples:
            r = None
            if self.media.problem(ex) is None:
                r = render(ex, self.template, model, self.media)
                if len(r.ids) > model.cfg.thinker.ctx_len:
                    long += 1
                    continue
            bad += r is None
            keep.append(ex)
            rendered.append(r)
        self.log.info(f"{name}: {len(keep):,} conversations" +
                      (f"; WARNING: {long} longer than the Thinker's context ({model.cfg.thinker.ctx_len} "
                       f"tokens) are left out" if long else "") +
                      (f"; {bad} with unreadable media are skipped" if bad else ""))
        return keep, rendered

    def train_data(self, model):
        cfg = self.cfg
        examples, rendered = self._prepared(model, self.train_examples, "train")
        if self.val_examples:
            val, r = self._prepared(model, self.val_examples, "val")
            self.val_examples = [ex for ex, x in zip(val, r) if x is not None]
        return SFTBatches(examples, rendered, self.media, cfg.batch_size, cfg.seed, cfg.bucket, cfg.loss_per)

    def optimizers(self, model):
        cfg, m = self.cfg, model
        groups = [(p, cfg.projector_lr) for p in (m.image_proj, m.audio_proj) if p is not None]  # first: logged
        groups += [(m.thinker, cfg.lr, cfg.align_steps)]
        groups += [(e, cfg.encoder_lr, cfg.align_steps) for e in (m.vision, m.audio) if e is not None]
        return {"main": OptimizerSpec([g for g in groups if any(p.requires_grad for p in g[0].parameters())])}

    def loss(self, model, batch):
        media = {k: batch[k] for k in MEDIA_KEYS if k in batch}
        out = model(batch["ids"], batch["targets"], **media, return_logits=False,
                    loss_weights=batch.get("loss_weights"))
        return out["loss"], {"real": batch["tokens"] / batch["slots"]}, batch["tokens"]

    @torch.no_grad()
    def validate(self, model):
        if not self.val_examples:
            return {}
        cfg = self.cfg
        r = evaluate_sft(model, self.template, self.val_examples, self.media, next(model.parameters()).device,
                         cfg.val_batch_size, cfg.val_max_new_tokens, shuffled=cfg.val_shuffled)
        return flatten(r)

    def artifact(self, model):
        return {"model": model.state_dict(), "model_config": to_dict(self.model_cfg),
                "tokenizer": self.tok.as_tensor(),
                "features": to_dict(self.mel) if self.mel is not None else None,
                "sources": self.sources, "system_prompt": self.cfg.system_prompt, "config": to_dict(self.cfg)}


def flatten(r: dict) -> dict:
    """evaluate_sft's result as flat metrics for the log: overall, one figure per task, the shuffled overalls."""
    out = {"overall": r["overall"]} if r["overall"] is not None else {}
    for task, m in r["tasks"].items():
        for k in ("accuracy", "wer", "perplexity"):
            if k in m:
                out[task if k == "accuracy" else f"{task}_{k}"] = m[k]
                break
        if "word_f1" in m:
            out[f"{task}_f1"] = m["word_f1"]
    for k in ("shuffled_images", "shuffled_audio"):
        if r.get(k) and r[k]["overall"] is not None:
            out[k] = r[k]["overall"]
    return out


if __name__ == "__main__":
    run(OmniStage)
