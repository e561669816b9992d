"""Resume exactness, crash safety and gradient accumulation of the shared engine, through Stage A."""
from __future__ import annotations

import random
import signal

import pytest
import torch

from conftest import assert_same_weights, final_weights, kill_at, metrics, run_script, signal_at, tiny_text_config


@pytest.fixture(scope="module")
def reference(text_data, tmp_path_factory):
    """An uninterrupted 40-step run (an epoch is 21 batches, so it runs into a second)."""
    save = tmp_path_factory.mktemp("ref") / "run"
    r = run_script(["train_text.py", "--config", str(tiny_text_config(text_data, save))])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


def assert_same_run(ref, run):
    assert_same_weights(final_weights(ref), final_weights(run))
    ref_loss = [(m["step"], m["loss"]) for m in metrics(ref)]
    run_loss = [(m["step"], m["loss"]) for m in metrics(run)]
    assert run_loss == ref_loss


@pytest.mark.parametrize("workers,lo,hi", [(0, 4, 20), (2, 4, 20), (0, 24, 36)],
                         ids=["first-epoch", "two-workers", "second-epoch"])
def test_sigkill_then_rerun_is_bitwise_identical(text_data, reference, tmp_path, workers, lo, hi):
    save = tmp_path / "run"
    cfg = tiny_text_config(text_data, save, num_workers=workers)
    cmd = ["train_text.py", "--config", str(cfg)]
    killed_at = kill_at(cmd, save, random.Random(workers * 100 + lo).randint(lo, hi))
    assert killed_at < 40 and not (save / "thinker.pt").exists(), "the run finished before the kill"
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from thinker_step_" in (save / "training.log").read_text()
    assert_same_run(reference, save)


def test_sigterm_saves_current_step_and_resumes(text_data, reference, tmp_path):
    save = tmp_path / "run"
    cmd = ["train_text.py", "--config", str(tiny_text_config(text_data, save, checkpoint_freq=1000))]
    code, err = signal_at(cmd, save, 7, signal.SIGTERM)
    assert code == 143, err[-2000:]
    log = (save / "training.log").read_text()
    assert "stopped by SIGTERM" in log
    stopped = metrics(save)[-1]["step"]
    assert (save / f"thinker_step_{stopped}.pt").exists()  # not a multiple of checkpoint_freq: saved on signal
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(reference, save)


def test_corrupt_newest_checkpoint_falls_back(text_data, reference, tmp_path):
    save = tmp_path / "run"
    cmd = ["train_text.py", "--config", str(tiny_text_config(text_data, save))]
    assert run_script(cmd).returncode == 0
    (save / "thinker_step_40.pt").write_bytes(b"not a checkpoint")
    (save / "thinker.pt").unlink()
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (save / "training.log").read_text()
    assert "thinker_step_40.pt is unreadable or corrupt" in log
    assert "resumed from thinker_step_39.pt" in log
    assert_same_run(reference, save)


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    from omni import artifacts as ckpt
    good = {"model": {"w": torch.ones(3)}, "step": 1}
    path = tmp_path / "m_step_1.pt"
    ckpt.atomic_save(good, path)

    def torn_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(OSError):
        ckpt.atomic_save({"model": {}, "step": 2}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.read_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m_step_1.pt"]  # no temp file left behind


def test_gradient_accumulation_matches_larger_batch(text_data, tmp_path):
    runs = {}
    for name, bs, accum in (("accum", 4, 2), ("big", 8, 1)):
        save = tmp_path / name
        cfg = tiny_text_config(text_data, save, batch_size=bs, gradient_accumulation_steps=accum,
                               max_steps=8, val_freq=1000, **{"model.dropout": 0.0})
        r = run_script(["train_text.py", "--config", str(cfg)])
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = [m["loss"] for m in metrics(save)]
    assert len(runs["accum"]) == 8
    assert runs["accum"] == pytest.approx(runs["big"], rel=1e-5, abs=1e-6)
    assert runs["accum"][-1] < runs["accum"][0]  # and it learns


def test_assert_same_weights_names_the_first_difference():
    a = {"w": torch.ones(3), "b": torch.zeros(2), "n": torch.tensor(4)}
    assert_same_weights(a, {k: v.clone() for k, v in a.items()})
    with pytest.raises(AssertionError, match=r"differ in b \(largest difference 0.5\)"):
        assert_same_weights(a, {**a, "b": torch.tensor([0.0, 0.5])})
    with pytest.raises(AssertionError, match="differ in w: .*torch.float32 vs .*torch.float64"):
        assert_same_weights(a, {**a, "w": torch.ones(3, dtype=torch.float64)})
    with pytest.raises(AssertionError, match=r"keys differ: only in the first \['n'\], only in the second \[\]"):
        assert_same_weights(a, {"w": a["w"], "b": a["b"]})
