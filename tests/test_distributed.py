"""DDP on CPU (gloo) under torchrun: identical weights on both ranks, and resume."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import ROOT, assert_same_weights, final_weights, metrics, script_env, tiny_text_config


def torchrun(cfg, script="train_text.py", **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           script, "--config", str(cfg)]
    return subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_torchrun_two_ranks_train_identically_and_resume(text_data, tmp_path):
    ref = tmp_path / "ref"
    p = torchrun(tiny_text_config(text_data, ref, max_steps=12, batch_size=2))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    log = (ref / "training.log").read_text()
    assert "world 2" in log and "weights identical across 2 ranks" in log
    assert "samples, 21 batches of 4 per epoch" in log  # batch_size 2 per rank

    run = tmp_path / "run"
    p = torchrun(tiny_text_config(text_data, run, max_steps=12, batch_size=2, checkpoint_freq=1000))
    while p.poll() is None and not (metrics(run) and metrics(run)[-1]["step"] >= 5):
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)  # torchrun forwards it; the ranks agree, save and exit
    out, _ = p.communicate(timeout=120)
    assert "stopped by SIGTERM" in (run / "training.log").read_text(), out[-3000:]
    assert not (run / "thinker.pt").exists()

    p = torchrun(tiny_text_config(text_data, run, max_steps=12, batch_size=2, checkpoint_freq=1000))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    assert "resumed from thinker_step_" in (run / "training.log").read_text()
    assert_same_weights(final_weights(ref), final_weights(run))


def test_two_optimizers_with_unused_parameters_under_ddp(tmp_path):
    """The critic's step computes the generator's output without its gradient: DDP must be told that some
    parameters go unused (Stage.unused_parameters), or the next step fails; both ranks end identical."""
    from test_engine import toy_config
    save = tmp_path / "toy"
    p = torchrun(toy_config(save, max_steps=6, batch_size=4, sleep=0.0), script="tests/two_optimizer_stage.py")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    log = (save / "training.log").read_text()
    assert "world 2" in log and "weights identical across 2 ranks" in log
    assert [m["step"] for m in metrics(save) if "generator/loss" in m] == [2, 4, 6]
