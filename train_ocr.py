"""OCR: train a line recogniser (CNN + transformer encoder, autoregressive character decoder, auxiliary CTC).

    python train_ocr.py --config configs/ocr_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N train_ocr.py --config ...

Reads OCR manifests (CSV image,text). Lines keep their aspect ratio: resized to model.image_height, any width,
batched with lines of similar width. Labels longer than model.max_text_length, with characters outside the
vocabulary, or images that cannot be read or are wider than model.max_width are skipped and counted in
training.log. Validation reports, per validation file, the CER, WER and line accuracy of the readings
(omni.infer.ocr.DECODING: joint CTC/attention decoding), their CER per line length and longest reading over its
line (and the CTC head's CER beside them), with a few decoded examples. The final ocr.pt holds the weights, the model
config (image height included) and the character vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from omni.builtin.ocr import PRINTABLE
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.ocr import LineBatches, line_width, load_lines, read_manifest
from omni.errors import UserError
from omni.infer.ocr import evaluate_lines
from omni.models.audio_encoder import ctc_frames_needed, ctc_loss
from omni.models.ocr import LineCNN, OCRConfig, OCRModel
from omni.train.engine import Stage, run
from omni.vocab import CharVocab


@dataclass
class OCRTrainConfig(TrainConfig):
    save_dir: str = "checkpoints/ocr_tiny"
    train_csv: str = "data/ocr/train.csv"
    extra_train_csvs: list[str] = field(default_factory=list)  # more manifests trained on with train_csv
    val_csvs: list[str] = field(default_factory=list)          # each reported by file stem
    charset: str = "ascii"        # "ascii": printable ASCII (space included); "data": the training lines' characters
    cache_lines: bool = True      # decode and resize every training line once, in memory (uint8); else per batch
    bucket_batches: int = 50      # global batches sorted by width together: little padding, still shuffled
    ctc_weight: float = 0.5       # loss = decoder cross-entropy + ctc_weight * CTC on the encoder frames
    val_batch_size: int = 64
    val_examples: int = 3         # decoded examples per validation file in training.log
    model: OCRConfig = field(default_factory=OCRConfig)


class OCRStage(Stage):
    name = "ocr"
    config_cls = OCRTrainConfig
    default_config = "configs/ocr_tiny.json"
    unit = "lines"
    dynamic_shapes = True

    def prepare(self):
        cfg = self.cfg
        if cfg.charset not in ("ascii", "data"):
            raise ConfigError(f"charset must be 'ascii' or 'data', got {cfg.charset!r}")
        sources = [cfg.train_csv, *cfg.extra_train_csvs]
        rows = [r for path in sources for r in read_manifest(path)]
        self.val_sets = {Path(p).stem: read_manifest(p) for p in cfg.val_csvs}
        self.vocab = CharVocab(PRINTABLE if cfg.charset == "ascii" else
                               "".join(sorted({c for _, t in rows for c in t})))
        self.model_cfg = replace(cfg.model, vocab_size=len(self.vocab) + 2)
        h = cfg.model.image_height
        cache = load_lines([p for p, _ in rows], h, show_progress=self.dist.is_main) if cfg.cache_lines else None
        keep, labels, widths = [], [], []
        bad = long = unknown = wide = unaligned = 0
        for i, (path, text) in enumerate(rows):
            lab = self.vocab.encode(text)
            if len(lab) != len(text):
                unknown += 1
                continue
            if len(lab) > cfg.model.max_text_length:
                long += 1
                continue
            if cache is not None:
                w = cache[i].shape[1] if cache[i] is not None else -1
            else:
                w = _header_width(path, h)
            if w < 0:
                bad += 1
            elif w > cfg.model.max_width:
                wide += 1
            elif ctc_frames_needed(lab) > int(LineCNN.frames(w)):
                unaligned += 1
            else:
                keep.append(i)
                labels.append(lab)
                widths.append(w)
        self.train_paths = [rows[i][0] for i in keep]
        self.train_cache = [cache[i] for i in keep] if cache is not None else None
        self.train_labels, self.train_widths = labels, widths
        self.log.info(f"train: {len(keep)} of {len(rows)} lines from {', '.join(sources)}; skipped {bad} unreadable, "
                      f"{long} over max_text_length {cfg.model.max_text_length}, {unknown} with characters outside "
                      f"the vocabulary, {wide} wider than max_width {cfg.model.max_width}, {unaligned} too narrow "
                      f"for their text")
        self.log.info(f"vocabulary: {len(self.vocab) - 1} characters: {self.vocab.chars!r}")
        self.log.info("val: " + ", ".join(f"{name} {len(v)}" for name, v in self.val_sets.items()))
        if bad > cfg.max_bad_fraction * len(rows):
            raise UserError(f"{bad} of {len(rows)} line images in {', '.join(sources)} are unreadable, over "
                            f"max_bad_fraction {cfg.max_bad_fraction:.1%}")

    def build_model(self):
        return OCRModel(self.model_cfg)

    def train_data(self, model):
        cfg, m = self.cfg, self.model_cfg
        return LineBatches(self.train_paths, self.train_labels, self.train_widths, m.image_height,
                           m.vocab_size - 2, m.vocab_size - 1, cfg.batch_size, cfg.seed, cfg.bucket_batches,
                           self.train_cache)

    def loss(self, model, batch):
        targets = batch["targets"]
        out = model(batch["pixels"], batch["widths"], targets)
        ce = F.cross_entropy(out["logits"].flatten(0, 1).float(), targets[:, 1:].flatten(), ignore_index=0)
        metrics = {"ce": ce.detach()}
        loss = ce
        if self.cfg.ctc_weight > 0:
            ctc = ctc_loss(out["ctc_logits"], out["frames"], batch["labels"], reduction="mean")
            loss = loss + self.cfg.ctc_weight * ctc
            metrics["ctc"] = ctc.detach()
        return loss, metrics, batch["lines"]

    @torch.no_grad()
    def validate(self, model):
        device = next(model.parameters()).device
        metrics = {}
        for name, rows in self.val_sets.items():
            m, hyps = evaluate_lines(model, self.vocab, [p for p, _ in rows], [t for _, t in rows],
                                     self.cfg.val_batch_size, device, ctc=True)
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
            for (_, ref), hyp in list(zip(rows, hyps))[:self.cfg.val_examples]:
                self.log.info(f"  {name} | ref: {ref}\n  {name} | hyp: {hyp}")
        return metrics

    def artifact(self, model):
        return {"model": model.state_dict(), "model_config": to_dict(self.model_cfg), "vocab": self.vocab.chars,
                "config": to_dict(self.cfg)}


def _header_width(path: str, height: int) -> int:
    """The width a line will have at `height`, from the image header (no decoding); -1 when unreadable."""
    try:
        with Image.open(path) as im:
            return line_width(im.width, im.height, height)
    except Exception:
        return -1


if __name__ == "__main__":
    run(OCRStage)
