"""Stage A: train the Thinker, a decoder-only text LM, on a plain-text corpus.

    python train_text.py --config configs/thinker_tiny.json [--set key=value ...] [--fresh]
    torchrun --nproc_per_node=N train_text.py --config ...

Trains a SentencePiece tokenizer on the corpus on first run, tokenizes the corpus once into a cached token
file, packs documents (joined by EOS) into full ctx_len windows, and reports held-out perplexity and bits
per byte plus a sample generation at each validation. Rerun the same command to resume.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omni.config import ConfigError, TrainConfig, to_dict
from omni.data.text import PackedTokens, token_cache
from omni.infer.evaluate import lm_metrics
from omni.infer.generate import generate
from omni.models.thinker import Thinker, ThinkerConfig
from omni.tokenizer import Tokenizer, train_tokenizer
from omni.train import dist
from omni.train.engine import Stage, run


@dataclass
class TextConfig(TrainConfig):
    save_dir: str = "checkpoints/thinker_tiny"
    train_file: str = "data/text/train.txt"
    val_file: str = ""                        # empty: val_split of the documents is held out (every k-th)
    val_split: float = 0.01
    extra_val_files: list[str] = field(default_factory=list)   # more held-out sets, reported by file stem
    tokenizer: str = ""                       # an existing tokenizer.model; empty: train one into save_dir
    tokenizer_max_sentences: int = 300_000    # documents sampled to train the tokenizer
    val_batch_size: int = 32
    sample_prompts: list[str] = field(default_factory=lambda: ["In the beginning", "The meaning of"])
    sample_tokens: int = 48
    model: ThinkerConfig = field(default_factory=ThinkerConfig)


class TextStage(Stage):
    """Stage A: the Thinker text LM."""
    name = "thinker"
    config_cls = TextConfig
    default_config = "configs/thinker_tiny.json"
    unit = "tok"

    def prepare(self):
        cfg, save_dir = self.cfg, Path(self.cfg.save_dir)
        tok_path = Path(cfg.tokenizer) if cfg.tokenizer else save_dir / "tokenizer.model"
        if self.dist.is_main:
            if self.fresh and not cfg.tokenizer and tok_path.exists():
                tok_path.unlink()  # the corpus may have changed: train the tokenizer anew
            if not tok_path.exists():
                if cfg.tokenizer:
                    raise FileNotFoundError(f"tokenizer not found: {tok_path} (config key 'tokenizer')")
                self.log.info(f"training a {cfg.model.vocab_size}-token SentencePiece tokenizer on {cfg.train_file}")
                train_tokenizer([cfg.train_file], tok_path, cfg.model.vocab_size, cfg.tokenizer_max_sentences,
                                cfg.seed)
            elif cfg.tokenizer and tok_path.resolve() != (save_dir / "tokenizer.model").resolve():
                shutil.copyfile(tok_path, save_dir / "tokenizer.model")
        dist.barrier(self.dist)
        self.tok = Tokenizer(tok_path)
        if self.tok.vocab_size != cfg.model.vocab_size:
            raise ConfigError(f"{tok_path} has {self.tok.vocab_size} tokens but model.vocab_size is "
                              f"{cfg.model.vocab_size}; make them agree")
        cache = save_dir / "cache"
        self.train_tokens, self.val_sets = dist.main_first(self.dist, lambda: self._tokens(cache))
        self.token_bytes = self.tok.token_bytes()
        self.log.info(f"tokens: {len(self.train_tokens):,} train; " +
                      ", ".join(f"{len(t):,} {name}" for name, t in self.val_sets.items()))

    def _tokens(self, cache):
        cfg = self.cfg
        if cfg.val_file:
            train = token_cache(cfg.train_file, self.tok, cache)
            vals = {"val": token_cache(cfg.val_file, self.tok, cache)}
        else:
            train = token_cache(cfg.train_file, self.tok, cache, cfg.val_split)
            vals = {"val": token_cache(cfg.train_file, self.tok, cache, cfg.val_split, validation=True)
                    } if cfg.val_split > 0 else {}
        for f in cfg.extra_val_files:
            vals[Path(f).stem] = token_cache(f, self.tok, cache)
        return train, vals

    def build_model(self):
        return Thinker(self.cfg.model)

    def train_data(self, model):
        return PackedTokens(self.train_tokens, self.cfg.model.ctx_len, self.cfg.batch_size, self.cfg.seed)

    def loss(self, model, batch):
        out = model(batch["input_ids"], targets=batch["targets"])
        extra = {"aux_loss": out["aux_loss"]} if self.cfg.model.n_experts > 1 else {}
        return out["loss"], extra, batch["targets"].numel()

    @torch.no_grad()
    def validate(self, model):
        cfg, device = self.cfg, next(model.parameters()).device
        metrics = {}
        for name, tokens in self.val_sets.items():
            m = lm_metrics(model, tokens, cfg.model.ctx_len, cfg.val_batch_size, self.token_bytes, device)
            prefix = "" if name == "val" else f"{name}/"
            metrics.update({f"{prefix}{k}": v for k, v in m.items()})
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        for prompt in cfg.sample_prompts[:2]:
            ids = torch.tensor([self.tok.encode(prompt)], device=device)
            out = generate(model, ids, cfg.sample_tokens, temperature=0.8, top_k=50, eos_id=self.tok.eos_id,
                           generator=g)
            self.log.info(f"sample: {self.tok.decode(out[0])!r}")
        return metrics

    def artifact(self, model):
        return {"model": model.state_dict(), "model_config": to_dict(self.cfg.model),
                "tokenizer": self.tok.as_tensor(),
                "config": to_dict(self.cfg)}


if __name__ == "__main__":
    run(TextStage)
