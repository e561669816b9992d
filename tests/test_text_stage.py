"""Stage A end to end at toy size: artifacts, evaluation, rerun of a finished run, held-out split."""
from __future__ import annotations

import json

import torch

from conftest import metrics, run_script, tiny_text_config


def test_train_evaluate_and_rerun(text_data, tmp_path):
    save = tmp_path / "run"
    (tmp_path / "other.txt").write_text((text_data / "val.txt").read_text())
    cfg = tiny_text_config(text_data, save, max_steps=30, val_freq=15,
                           extra_val_files=[str(tmp_path / "other.txt")])
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("thinker.pt", "tokenizer.model", "config.json", "training.log", "metrics.jsonl"):
        assert (save / name).exists(), name
    assert sorted(p.name for p in save.glob("thinker_step_*.pt")) == \
        ["thinker_step_24.pt", "thinker_step_27.pt", "thinker_step_30.pt"]  # keep_checkpoints 3
    art = torch.load(save / "thinker.pt", weights_only=True)
    assert "optimizer" not in art and art["model_config"]["d_model"] == 64

    vals = metrics(save, "val")
    assert [v["step"] for v in vals] == [15, 30]
    assert vals[-1]["perplexity"] < vals[0]["perplexity"]
    assert vals[-1]["other/perplexity"] == vals[-1]["perplexity"]  # the extra file, reported by its stem
    train = metrics(save)
    assert train[-1]["loss"] < train[0]["loss"] and "tok/s" in train[-1]
    log = (save / "training.log").read_text()
    assert "sample: " in log and "bits_per_byte" in log

    r = run_script(["scripts/evaluate.py", "text", "--ckpt", str(save / "thinker.pt"),
                    "--data", str(text_data / "val.txt")])
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert abs(result["bits_per_byte"] - vals[-1]["bits_per_byte"]) < 1e-6
    assert result["n_tokens"] == vals[-1]["n_tokens"] and result["perplexity"] > 1

    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode == 0 and "already complete at step 30" in (save / "training.log").read_text()


def test_val_split_holds_out_documents(text_data, tmp_path):
    save = tmp_path / "run"
    cfg = tiny_text_config(text_data, save, val_file="", val_split=0.1, max_steps=3)
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (save / "training.log").read_text()
    assert "val" in log and metrics(save, "val")[-1]["n_tokens"] > 0


def test_non_finite_steps_are_skipped_then_stop_the_run(text_data, tmp_path):
    save = tmp_path / "run"
    cfg = tiny_text_config(text_data, save, lr=1e6, max_grad_norm=0.0, warmup_steps=0, max_nonfinite_steps=3)
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode != 0
    log = (save / "training.log").read_text()
    assert "step skipped (1 in a row)" in log and "step skipped (3 in a row)" in log
    assert "3 non-finite steps in a row" in r.stderr


def test_cpu_amp_autocasts_only_where_the_cpu_has_native_bf16(monkeypatch):
    from omni.train import engine
    cpu, x = torch.device("cpu"), torch.randn(4, 8)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    with engine.autocast_context(cpu, True, cpu=True):
        assert (x @ x.T).dtype == torch.bfloat16
    for enabled, flag in ((True, False), (False, True)):       # off unless both use_amp and cpu_amp
        with engine.autocast_context(cpu, enabled, cpu=flag):
            assert (x @ x.T).dtype == torch.float32
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)  # emulated bf16 would be slower: fp32
    with engine.autocast_context(cpu, True, cpu=True):
        assert (x @ x.T).dtype == torch.float32
