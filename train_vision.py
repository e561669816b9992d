"""Stage C: train the vision encoder (a ViT) contrastively against captions, CLIP-style.

    python train_vision.py --config configs/vision_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N train_vision.py --config ...

Text goes through the frozen Thinker of `thinker_ckpt` (its hidden states, computed once per distinct
caption and cached, since they never change) or, with `use_thinker_for_text: false`, through a trainable
embedding over the Thinker's tokenizer — or a tokenizer trained on the captions when there is none. Images
are decoded once into a pixel cache and jittered with caption-safe augmentations. Validation reports
image→text and text→image retrieval over the whole split and within random groups of 32. The final
`vision.pt` holds the ViT, both projections, the text side (with the frozen Thinker) and the tokenizer.
With `model.caption.n_layers > 0` a caption decoder over the ViT's tokens trains beside the contrastive loss
(`caption_weight`); it is kept in `vision.pt` (scripts/evaluate.py vision reports its captions).
Validation also fits linear probes of the shape, colour and count at each place on the pooled tokens Stage E
reads (`probe_scenes` training scenes, scored on each held-out world split: omni.probe).
Under DDP each rank contrasts its own micro-batch (negatives are not gathered across ranks).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from omni.artifacts import load_artifact
from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.base import held_out
from omni.data.images import AugmentConfig, CaptionedImages, ImageSource, read_manifest
from omni.infer.evaluate import clip_metrics
from omni.models.omni import image_features
from omni.models.vision import ClipConfig, ClipModel
from omni.probe import pick_scenes, probe_images, scene_labels
from omni.tokenizer import BOS, EOS, UNK, Tokenizer, train_tokenizer
from omni.train import dist
from omni.train.engine import Stage, run


@dataclass
class VisionConfig(TrainConfig):
    save_dir: str = "checkpoints/vision_tiny"
    train_file: str = "data/images/train.jsonl"
    val_file: str = ""                        # empty: val_split of the rows is held out (every k-th)
    val_split: float = 0.02
    extra_val_files: list[str] = field(default_factory=list)   # more held-out sets, reported by file stem
    thinker_ckpt: str = "checkpoints/thinker_tiny/thinker.pt"  # Stage A's final artifact
    use_thinker_for_text: bool = True         # False: tokenizer + trainable embedding text side
    caption_vocab_size: int = 1024            # for a tokenizer trained on the captions when none is found
    cache_pixels: bool = True                 # decode training images once into save_dir/cache (validation
                                              # sets always are); false decodes them in the loader each epoch
    val_batch_size: int = 256
    retrieval_group: int = 32                 # i2t_top1_in32: top-1 among this many random pairs
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    hard_negatives: bool = True               # train rows' "negatives" captions as extra wrong texts (NegCLIP)
    caption_weight: float = 1.0               # the caption decoder's loss beside the contrastive one (if any)
    caption_share: float = 1.0                # the share of each batch's images (rows are shuffled) it captions
    probe_scenes: int = 600                   # world training scenes the validation probes fit on (0: none)
    probe_tokens: int = 9                     # pooled patch tokens (+ CLS) they read, as Stage E does
    model: ClipConfig = field(default_factory=ClipConfig)


@dataclass
class Split:
    """One manifest, ready for the model: row i shows image `image_index[i]` of `images`, caption
    `caption_ids[i]` tokenized as `tokens[i]` (None = too long); `features`: cached Thinker states;
    `pixels`: validation sets' images row by row, in memory [N x 3 x S x S]."""
    images: ImageSource
    image_index: np.ndarray
    tokens: list
    caption_ids: np.ndarray
    features: torch.Tensor | None = None
    pixels: np.ndarray | None = None
    negatives: list | None = None       # per row: caption ids of its hard negatives
    caption_tokens: list | None = None  # per caption id: token ids (None = too long)
    texts: list | None = None           # per row: the caption

    def subset(self, keep: np.ndarray) -> "Split":
        idx = np.flatnonzero(keep)
        return Split(self.images, self.image_index[idx], [self.tokens[i] for i in idx], self.caption_ids[idx],
                     self.features, negatives=[self.negatives[i] for i in idx] if self.negatives else None,
                     caption_tokens=self.caption_tokens, texts=[self.texts[i] for i in idx])


class VisionStage(Stage):
    """Stage C: the ViT trained contrastively against captions."""
    name = "vision"
    config_cls = VisionConfig
    default_config = "configs/vision_tiny.json"
    unit = "img"

    def prepare(self):
        cfg = self.cfg
        if not 0 < cfg.caption_share <= 1:
            raise ConfigError(f"caption_share must be in (0, 1], got {cfg.caption_share}")
        self.thinker = None
        if cfg.use_thinker_for_text:
            if not Path(cfg.thinker_ckpt).exists():
                raise FileNotFoundError(
                    f"thinker_ckpt {cfg.thinker_ckpt} not found: train Stage A first (python train_text.py "
                    f"--config configs/demo/thinker.json for the demo), or set use_thinker_for_text=false")
            a = load_artifact(cfg.thinker_ckpt, "thinker", self.dist.device)
            self.thinker, self.tok = a.model, a.tokenizer
            self.log.info(f"text side: the frozen Thinker of {cfg.thinker_ckpt}")
        else:
            self.tok = self._tokenizer()
        max_len = cfg.model.text.max_len
        if self.thinker is not None:
            max_len = min(max_len, self.thinker.cfg.ctx_len)
        cache = Path(cfg.save_dir) / "cache"
        self.train_set, self.val_sets = dist.main_first(self.dist, lambda: self._splits(cache, max_len))
        too_long = sum(t is None for t in self.train_set.tokens)
        if too_long:
            self.log.info(f"WARNING: {too_long} training captions are over {max_len} tokens "
                          f"(model.text.max_len); they are skipped")
        negs = self.train_set.negatives
        if negs:
            self.log.info(f"hard negatives: {sum(map(bool, negs)):,} training rows have them (one drawn per row "
                          f"and step)")
        self.log.info(f"images: {len(self.train_set.tokens):,} train; " +
                      ", ".join(f"{len(s.tokens):,} {name}" for name, s in self.val_sets.items()))
        self.probe_train = self._probe_scenes()

    def _probe_scenes(self) -> tuple[np.ndarray, dict] | None:
        """(pixels, labels) of the first `probe_scenes` distinct world scenes of the training set, or None
        when there are none (COCO) or probing is off."""
        s, n = self.train_set, self.cfg.probe_scenes
        picked = [i for i in pick_scenes(s.image_index.tolist(), s.texts, n)
                  if s.images.get(int(s.image_index[i])) is not None]   # an unreadable image is left out
        if n <= 0 or len(picked) < min(n, 100):
            return None
        self.log.info(f"probes: fit on {len(picked)} training scenes, {self.cfg.probe_tokens} pooled tokens + CLS")
        return (np.stack([s.images.get(int(s.image_index[i])) for i in picked]),
                scene_labels([s.texts[i] for i in picked]))

    def _tokenizer(self) -> Tokenizer:
        """The Thinker's tokenizer.model beside thinker_ckpt; else one trained on the captions (kept in
        save_dir, so a resumed run finds the same one; --fresh trains it again)."""
        cfg, save_dir = self.cfg, Path(self.cfg.save_dir)
        beside = Path(cfg.thinker_ckpt).parent / "tokenizer.model" if cfg.thinker_ckpt else None
        if beside is not None and beside.exists():
            self.log.info(f"text side: trainable embedding over the tokenizer {beside}")
            return Tokenizer(beside)
        own = save_dir / "tokenizer.model"
        if self.dist.is_main and self.fresh and own.exists():
            own.unlink()  # the captions may have changed: train the tokenizer anew
        if self.dist.is_main and not own.exists():
            captions = save_dir / "cache" / "captions.txt"
            captions.parent.mkdir(parents=True, exist_ok=True)
            captions.write_text("".join(c + "\n" for _, c in read_manifest(cfg.train_file)), encoding="utf-8")
            self.log.info(f"no tokenizer found at {beside}: training a {cfg.caption_vocab_size}-token tokenizer "
                          f"on the captions of {cfg.train_file} into {own}")
            train_tokenizer([captions], own, cfg.caption_vocab_size, seed=cfg.seed)
        dist.barrier(self.dist)
        self.log.info(f"text side: trainable embedding over the tokenizer {own}")
        return Tokenizer(own)

    def _splits(self, cache: Path, max_len: int) -> tuple[Split, dict[str, Split]]:
        cfg = self.cfg
        train = self._split(cfg.train_file, cache, max_len, cfg.cache_pixels, train=True)
        if cfg.val_file:
            vals = {"val": self._split(cfg.val_file, cache, max_len)}
        else:
            held = held_out(len(train.tokens), cfg.val_split)
            vals = {"val": train.subset(held)} if held.any() else {}
            train = train.subset(~held)
        for f in cfg.extra_val_files:
            vals[Path(f).stem] = self._split(f, cache, max_len)
        # validation holds its pixels in memory and scores every usable pair; unusable ones are reported,
        # not silently counted as misses
        for name, s in vals.items():
            pixels = [s.images.get(int(j)) for j in s.image_index]
            good = np.array([p is not None and t is not None for p, t in zip(pixels, s.tokens)], dtype=bool)
            if not good.all():
                self.log.info(f"WARNING: {name}: {int((~good).sum())} rows with an unreadable image or an "
                              f"over-long caption are left out of validation")
            s = s.subset(good)
            s.pixels = np.stack([p for p, g in zip(pixels, good) if g])
            vals[name] = s
        return train, vals

    def _split(self, manifest: str, cache: Path, max_len: int, cache_pixels: bool = True,
               train: bool = False) -> Split:
        rows = read_manifest(manifest, negatives=True)
        if not (train and self.cfg.hard_negatives):
            rows = [(p, c, []) for p, c, _ in rows]
        paths = list(dict.fromkeys(p for p, _, _ in rows))  # distinct images (COCO has ~5 captions each)
        images = ImageSource(paths, self.cfg.model.vision.image_size, cache, Path(manifest).stem, cache_pixels,
                             log=self.log.info)
        where = {p: i for i, p in enumerate(paths)}
        captions = sorted({c for _, c, negs in rows for c in [c, *negs]})
        index = {c: i for i, c in enumerate(captions)}
        encoded = [ids + [EOS] for ids in self.tok.encode(captions)]  # EOS: its state has read the whole caption
        fits = [e if len(e) <= max_len else None for e in encoded]
        tokens = [fits[index[c]] for _, c, _ in rows]
        negatives = [[index[n] for n in negs if fits[index[n]] is not None] for _, _, negs in rows]
        features = self._thinker_features(encoded, max_len) if self.thinker is not None else None
        return Split(images, np.array([where[p] for p, _, _ in rows]), tokens,
                     np.array([index[c] for _, c, _ in rows]), features,
                     negatives=negatives if any(negatives) else None, caption_tokens=fits,
                     texts=[c for _, c, _ in rows])

    @torch.no_grad()
    def _thinker_features(self, encoded: list[list[int]], max_len: int, batch: int = 256) -> torch.Tensor:
        """Frozen Thinker hidden states of every distinct caption: Tensor[n_captions x T x d] on the CPU,
        zero past each caption's end (over-long captions are cut here but never used)."""
        encoded = [e[:max_len] for e in encoded]
        T, device = max(len(e) for e in encoded), self.dist.device
        out = torch.zeros(len(encoded), T, self.thinker.cfg.d_model)
        for i in range(0, len(encoded), batch):
            chunk = encoded[i:i + batch]
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            for j, e in enumerate(chunk):
                ids[j, :len(e)] = torch.tensor(e)
            h = self.thinker(ids.to(device), return_hidden=True, return_logits=False)["hidden"].float().cpu()
            for j, e in enumerate(chunk):
                out[i + j, :len(e)] = h[j, :len(e)]
        return out

    def build_model(self):
        text = dataclasses.replace(self.cfg.model.text, vocab_size=self.tok.vocab_size)
        vocab = sorted({t for ids in self.train_set.tokens if ids for t in ids} | {BOS, EOS, UNK})
        caption = dataclasses.replace(self.cfg.model.caption, vocab_size=len(vocab))
        self.model_cfg = dataclasses.replace(self.cfg.model, text=text, caption=caption)
        model = ClipModel(self.model_cfg, self.thinker)
        if model.captioner is not None:
            model.captioner.set_vocab(vocab)
            self.log.info(f"caption decoder: writes the {len(vocab)} tokens of the training captions")
        if self.thinker is not None:
            f = self.train_set.features
            model.text.set_feature_stats(f, f.abs().sum(-1) > 0)  # zero rows are padding past a caption's end
        return model

    def train_data(self, model):
        s, cfg = self.train_set, self.cfg
        return CaptionedImages(s.images, s.image_index, s.tokens, s.caption_ids, cfg.batch_size, cfg.seed,
                               cfg.augment, s.features, negatives=s.negatives, caption_tokens=s.caption_tokens)

    def loss(self, model, batch):
        B, p = batch["images"].shape[0], self.cfg.model.caption.parallel
        parallel = torch.rand(B) < p if p > 0 else None   # the global RNG: checkpointed, so resume is exact
        out = model(batch["images"], batch["ids"], batch["mask"], batch.get("features"), batch.get("neg_ids"),
                    batch.get("neg_mask"), batch.get("neg_features"),
                    parallel.to(batch["ids"].device) if parallel is not None else None,
                    caption_rows=max(1, round(self.cfg.caption_share * B)))
        if "caption_loss" not in out:
            return out["loss"], {"logit_scale": out["scale"]}, B
        loss = out["loss"] + self.cfg.caption_weight * out["caption_loss"]
        return loss, {"clip_loss": out["loss"].detach(), "caption_loss": out["caption_loss"].detach(),
                      "logit_scale": out["scale"]}, B

    @torch.no_grad()
    def validate(self, model):
        cfg, device = self.cfg, next(model.parameters()).device
        metrics = {}
        for name, s in self.val_sets.items():
            m = clip_metrics(model, s.pixels, s.tokens, s.caption_ids, device, cfg.val_batch_size,
                             cfg.retrieval_group, features=s.features)
            prefix = "" if name == "val" else f"{name}/"
            metrics.update({f"{prefix}{k}": v for k, v in m.items()})
            if self.probe_train is not None and (labels := scene_labels(s.texts)) is not None:
                metrics.update({f"{prefix}probe_{k}": v for k, v in self._probe(model, s.pixels, labels).items()})
        metrics["logit_scale"] = float(model.scale())
        return metrics

    def _probe(self, model, pixels: np.ndarray, labels: dict) -> dict:
        """Probe accuracies of the pooled ViT tokens (omni.probe) on a held-out world split."""
        cfg = self.cfg
        encode = lambda x: image_features(model.vision, x, cfg.probe_tokens, cls=True).flatten(1)  # noqa: E731
        return probe_images(encode, *self.probe_train, pixels, labels, cfg.val_batch_size,
                            next(model.parameters()).device)

    def artifact(self, model):
        return {"model": model.state_dict(), "model_config": to_dict(self.model_cfg),
                "thinker_config": to_dict(self.thinker.cfg) if self.thinker is not None else None,
                "tokenizer": self.tok.as_tensor(),
                "config": to_dict(self.cfg)}


if __name__ == "__main__":
    run(VisionStage)
