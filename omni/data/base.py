"""Resumable, sharded batch streams: the one data mechanism every stage builds on.

A `BatchStream` is an IterableDataset that yields whole micro-batches for one epoch. The order of an epoch
is a function of (seed, epoch) only; global batch g holds `batch_size * world_size` sample indices, rank r
takes its slice, and DataLoader worker w produces batches g ≡ w (mod num_workers), which is exactly the
order in which a DataLoader collects from its workers. So the stream a rank sees is identical with any
number of workers, and resuming is just `skip_samples`: start at global batch skip_samples // (B * W).
Per-sample randomness (augmentation) draws from an RNG seeded by (seed, epoch, g, rank) for the same reason.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


def held_out(n: int, val_split: float) -> np.ndarray:
    """Which of n training items form the validation split when no validation file is given: every k-th
    (items 0, k, 2k, ...), k = max(2, round(1 / val_split)); none when val_split is 0. → Bool[n]"""
    if val_split <= 0:
        return np.zeros(n, dtype=bool)
    return np.arange(n) % max(2, round(1 / val_split)) == 0


class BadSample(Exception):
    """Raised by `BatchStream.load` for a sample that cannot be used; its message (naming the file) reaches
    training.log through the batch's "bad" list, and the sample is skipped and counted."""


class BatchStream(IterableDataset):
    def __init__(self, batch_size: int, seed: int = 0, shuffle: bool = True):
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip_samples = 0
        self.rank, self.world_size = 0, 1

    # --- what a subclass supplies -------------------------------------------------------------
    def __len__(self) -> int:
        """Number of samples in one pass."""
        raise NotImplementedError

    def load(self, index: int, rng: np.random.Generator):
        """Sample `index`; raise BadSample (or return None) when it cannot be used: it is skipped and counted."""
        raise NotImplementedError

    def collate(self, samples: list) -> dict:
        raise NotImplementedError

    # --- the mechanism --------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Global batches of one epoch; the incomplete tail is dropped so every rank steps together."""
        order = self.epoch_order(epoch)
        gb = self.global_batch
        return [order[i * gb:(i + 1) * gb] for i in range(len(order) // gb)]

    def batches_per_epoch(self) -> int:
        return len(self) // self.global_batch

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = self.epoch_batches(self.epoch)
        start = self.skip_samples // self.global_batch
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for g in range(start, len(batches)):
            if (g - start) % n_workers != worker:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, g, self.rank])
            good, bad = [], []
            for i in batches[g][lo:hi]:
                try:
                    sample = self.load(int(i), rng)
                except BadSample as e:
                    bad.append(str(e))
                    continue
                if sample is None:
                    bad.append(f"sample {int(i)}")
                else:
                    good.append(sample)
            batch = self.collate(good) if good else {}
            batch["n_bad"] = len(bad)
            batch["n_samples"] = len(good) + len(bad)
            if bad:
                batch["bad"] = bad  # the engine writes them to training.log (a worker cannot)
            yield batch


class LengthBucketed(BatchStream):
    """A BatchStream whose batches hold samples of similar length (little padding) yet come in random order:
    each epoch shuffles, sorts each run of `bucket` global batches by `lengths`, and shuffles the batches,
    all from (seed, epoch) only."""

    def __init__(self, lengths, batch_size: int, seed: int = 0, bucket: int = 50):
        super().__init__(batch_size, seed, shuffle=True)
        self.lengths, self.bucket = np.asarray(lengths), bucket

    def __len__(self) -> int:
        return len(self.lengths)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        gb = self.global_batch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self))[: len(self) // gb * gb]   # drop the tail: every rank steps together
        chunk = gb * self.bucket
        for s in range(0, len(order), chunk):
            part = order[s:s + chunk]
            order[s:s + chunk] = part[np.argsort(self.lengths[part], kind="stable")]
        batches = order.reshape(-1, gb)
        return list(batches[rng.permutation(len(batches))])


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}
