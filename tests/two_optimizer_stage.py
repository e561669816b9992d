"""A toy stage with two optimizers, stepped in its own order, for the engine's tests (run as a script).

A "generator" (two modules at different learning rates) and a "critic" with their own optimizers: the critic
steps at every step, the generator at every other one, after the critic (a GAN's alternation). Dropout draws
from the torch RNG, so resume must restore it; a short sleep per batch gives a test time to kill the run.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni.artifacts import KINDS, Kind  # noqa: E402
from omni.config import TrainConfig  # noqa: E402
from omni.data.base import BadSample, BatchStream  # noqa: E402
from omni.train.engine import Stage, run  # noqa: E402
from omni.train.optim import OptimizerSpec  # noqa: E402


@dataclass
class ToyConfig(TrainConfig):
    n_samples: int = 96
    sleep: float = 0.0   # seconds per loss call
    gen_lr_ratio: float = 0.5   # the generator's second module trains at this fraction of its first's lr
    bad_every: int = 0          # > 0: every bad_every-th sample is unusable (BadSample), for the skip reports


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.gen_in, self.gen_out = nn.Linear(8, 16), nn.Linear(16, 8)
        self.critic = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x, part: str):
        fake = self.gen_out(torch.relu(self.gen_in(x)))
        if part == "critic":  # least-squares critic: real data scores 1, generated 0
            return (self.critic(x * 2 + 1) - 1).pow(2).mean() + self.critic(fake.detach()).pow(2).mean()
        return (self.critic(fake) - 1).pow(2).mean()


class Points(BatchStream):
    def __init__(self, n, batch_size, seed, bad_every=0):
        super().__init__(batch_size, seed)
        self.x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
        self.bad_every = bad_every

    def __len__(self):
        return len(self.x)

    def load(self, index, rng):
        if self.bad_every and index % self.bad_every == 0:
            raise BadSample(f"point {index}: unusable (bad_every {self.bad_every})")
        return self.x[index] + rng.normal(scale=0.1, size=8).astype(np.float32)

    def collate(self, samples):
        return {"x": torch.from_numpy(np.stack(samples))}


class ToyStage(Stage):
    name = "toy"
    config_cls = ToyConfig
    unused_parameters = True  # the critic's step leaves the generator without gradients (DDP must know)

    def build_model(self):
        return Toy()

    def train_data(self, model):
        return Points(self.cfg.n_samples, self.cfg.batch_size, self.cfg.seed, self.cfg.bad_every)

    def optimizers(self, model):
        lr = self.cfg.lr
        return {"critic": OptimizerSpec([(model.critic, lr)]),
                "generator": OptimizerSpec([(model.gen_in, lr), (model.gen_out, lr * self.cfg.gen_lr_ratio)],
                                           warmup_steps=2)}

    def steps(self, step):
        return ["critic", "generator"] if step % 2 else ["critic"]

    def optimizer_loss(self, name, model, batch, step):
        time.sleep(self.cfg.sleep)
        return model(batch["x"], name), {}, len(batch["x"])

    def artifact(self, model):
        return {"model": model.state_dict(), "model_config": {}, "config": {}}


KINDS["toy"] = Kind("toy.pt", (), lambda state, where: (Toy(), {}))

if __name__ == "__main__":
    run(ToyStage)
