"""The engine with several optimizers (a GAN's alternation): each steps on its own schedule and parameter
groups, all are saved, and a run killed with SIGKILL resumes bitwise."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_same_weights, final_weights, kill_at, metrics, run_script

STEPS = 24


def toy_config(save, **overrides) -> str:
    cfg = {"save_dir": str(save), "batch_size": 8, "lr": 1e-2, "warmup_steps": 4, "max_steps": STEPS,
           "print_freq": 1, "val_freq": 1000, "checkpoint_freq": 5, "sleep": 0.03, **overrides}
    path = save.parent / f"{save.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    save = tmp_path_factory.mktemp("toy") / "ref"
    r = run_script(["tests/two_optimizer_stage.py", "--config", toy_config(save)])
    assert r.returncode == 0, r.stderr[-3000:]
    return save


def test_each_optimizer_steps_in_the_stage_order_with_its_own_schedule(reference):
    rows = metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # the critic steps every step (logged as the primary: loss, lr); the generator every other step
    assert all("loss" in r and "lr" in r for r in rows)
    assert all(("generator/loss" in r) == (r["step"] % 2 == 0) for r in rows)
    # schedules count each optimizer's own steps: after step 2 the critic has stepped twice (lr 3/4 of the
    # way up its 4-step warmup), the generator once (1/2 of the way up its own 2-step warmup = its full lr)
    assert rows[1]["lr"] == pytest.approx(1e-2 * 3 / 4)
    assert rows[1]["generator/lr"] == pytest.approx(1e-2 * 2 / 2)
    state = torch.load(sorted(reference.glob("toy_step_*.pt"))[-1], weights_only=True)
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"critic", "generator"}
    assert state["schedulers"]["critic"]["last_epoch"] == STEPS
    assert state["schedulers"]["generator"]["last_epoch"] == STEPS // 2
    # the generator's two modules are parameter groups at their own learning rates
    lrs = sorted({g["lr"] for g in state["optimizers"]["generator"]["param_groups"]})
    assert lrs[1] == pytest.approx(2 * lrs[0])
    assert json.loads((reference / "config.json").read_text())["gen_lr_ratio"] == 0.5


def test_every_parameter_trains_and_the_artifact_names_its_kind(reference, tmp_path):
    init_dir = tmp_path / "init"
    r = run_script(["tests/two_optimizer_stage.py", "--config", toy_config(init_dir, max_steps=1)])
    assert r.returncode == 0, r.stderr[-3000:]
    after_one, final = final_weights(init_dir, "toy"), final_weights(reference, "toy")
    moved = {k for k in final if not torch.equal(final[k], after_one[k])}
    assert {k.split(".")[0] for k in moved} == {"gen_in", "gen_out", "critic"}
    art = torch.load(reference / "toy.pt", weights_only=True)
    assert art["kind"] == "toy" and art["format"] == 1 and "optimizers" not in art


@pytest.mark.parametrize("kill_step", [7, 12])
def test_sigkill_then_rerun_resumes_both_optimizers_bitwise(reference, tmp_path, kill_step):
    save = tmp_path / "run"
    cmd = ["tests/two_optimizer_stage.py", "--config", toy_config(save)]
    killed_at = kill_at(cmd, save, kill_step)
    assert killed_at < STEPS and not (save / "toy.pt").exists(), "the run finished before the kill"
    r = run_script(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from toy_step_" in (save / "training.log").read_text()
    assert_same_weights(final_weights(reference, "toy"), final_weights(save, "toy"))
    keys = ("step", "loss", "generator/loss", "lr", "generator/lr")
    assert [[m.get(k) for k in keys] for m in metrics(save)] == [[m.get(k) for k in keys] for m in metrics(reference)]


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_named_in_the_training_log_and_stop_the_run_past_the_limit(tmp_path, workers):
    save = tmp_path / "bad"
    cfg = toy_config(save, max_steps=6, sleep=0.0, bad_every=10, max_bad_fraction=0.5, num_workers=workers)
    r = run_script(["tests/two_optimizer_stage.py", "--config", cfg])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (save / "training.log").read_text()
    assert "WARNING: skipped point 0: unusable (bad_every 10)" in log  # found in a data worker too
    assert "bad samples of 8 in the last window" in log
    over = tmp_path / "over"
    r = run_script(["tests/two_optimizer_stage.py", "--config",
                    toy_config(over, max_steps=6, sleep=0.0, bad_every=2, num_workers=workers)])
    assert r.returncode != 0 and "over max_bad_fraction" in r.stderr


def test_a_folder_of_only_unreadable_checkpoints_is_an_error_not_a_fresh_start(tmp_path):
    save = tmp_path / "torn"
    save.mkdir()
    (save / "toy_step_5.pt").write_bytes(b"torn")
    (save / "toy_step_10.pt").write_bytes(b"")
    cmd = ["tests/two_optimizer_stage.py", "--config", toy_config(save, max_steps=12, sleep=0.0)]
    r = run_script(cmd)
    assert r.returncode != 0 and "error: none of the 2 step checkpoints" in r.stderr and "--fresh" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (save / "toy.pt").exists() and (save / "toy_step_5.pt").read_bytes() == b"torn"  # nothing lost
    r = run_script(cmd + ["--fresh"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (save / "toy.pt").exists()
