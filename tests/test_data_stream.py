"""BatchStream: the resumable, sharded data mechanism every stage uses."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from omni.data.base import BatchStream


class Numbers(BatchStream):
    """Samples are their own indices plus a draw from the per-batch RNG (stands in for augmentation)."""

    def __init__(self, n, batch_size, seed=0, bad=()):
        super().__init__(batch_size, seed)
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def load(self, index, rng):
        return None if index in self.bad else (index, float(rng.random()))

    def collate(self, samples):
        return {"idx": torch.tensor([s[0] for s in samples]), "aug": torch.tensor([s[1] for s in samples])}


def epoch(ds, workers=0, epoch=0, skip=0):
    ds.set_epoch(epoch)
    ds.skip_samples = skip
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return [(b["idx"].tolist(), b["aug"].tolist(), b["n_bad"]) for b in loader]


def test_same_stream_with_any_number_of_workers():
    ds = Numbers(50, 4)
    ref = epoch(ds)
    assert len(ref) == 12  # 50 // 4, the tail dropped
    assert epoch(ds, workers=2) == ref


def test_skip_samples_resumes_mid_epoch():
    ds = Numbers(50, 4)
    ref = epoch(ds, epoch=1)
    assert epoch(ds, epoch=1, skip=5 * 4) == ref[5:]
    assert epoch(ds, workers=2, epoch=1, skip=7 * 4) == ref[7:]


def test_order_is_a_function_of_seed_and_epoch():
    a, b = epoch(Numbers(50, 4), epoch=0), epoch(Numbers(50, 4), epoch=1)
    for e in (a, b):  # each epoch draws 48 distinct samples of the 50 (the tail is dropped)
        assert len({i for x in e for i in x[0]}) == 48
    assert a != b
    assert epoch(Numbers(50, 4, seed=3)) != a
    assert epoch(Numbers(50, 4)) == a


def test_ranks_get_disjoint_shards_of_each_global_batch():
    shards = []
    for rank in range(2):
        ds = Numbers(50, 4)
        ds.set_distributed(rank, 2)
        shards.append(epoch(ds))
    assert len(shards[0]) == len(shards[1]) == 50 // 8
    for b0, b1 in zip(*shards):
        assert not set(b0[0]) & set(b1[0])
    single = Numbers(50, 8)  # one rank with the global batch sees the union, batch for batch
    for (b0, b1), g in zip(zip(*shards), epoch(single)):
        assert b0[0] + b1[0] == g[0]


def test_bad_samples_are_skipped_and_counted():
    out = epoch(Numbers(12, 4, bad={0, 1, 2, 3, 5}), workers=0)
    assert sum(b[2] for b in out) == 5
    assert all(i not in {0, 1, 2, 3, 5} for b in out for i in b[0])
