"""Stage A end to end at toy size: artifacts, evaluation, rerun of a finished run, held-out split."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from conftest import WORDS, assert_trains_on_the_gpu_path, metrics, run_script, tiny_text_config
from omni.data.text import token_cache
from omni.tokenizer import EOS, Tokenizer


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
    assert "optimizers" not in art and art["model_config"]["d_model"] == 64

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
    assert result["n_tokens"] == vals[-1]["n_tokens"]
    # perplexity is exp of the mean token loss, the run's own number, and far below the ~320 of a model that
    # knows nothing (40 here, 39-43 for seeds 1-3; the untrained Thinker scores 321-323, near-uniform logits)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-9)
    assert result["perplexity"] == pytest.approx(vals[-1]["perplexity"], rel=1e-5)
    assert result["perplexity"] < 320 / 4, result

    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode == 0 and "already complete at step 30" in (save / "training.log").read_text()


def documents(tokens) -> list[tuple[int, ...]]:
    """The EOS-terminated documents of a token stream, as tuples of ids."""
    ids = np.asarray(tokens).tolist()
    assert ids and ids[-1] == EOS
    docs, start = [], 0
    for i, t in enumerate(ids):
        if t == EOS:
            docs.append(tuple(ids[start:i]))
            start = i + 1
    return docs


def occurs_in(doc, tokens) -> bool:
    """Whether `doc` stands as a whole document (between EOS or at the start) anywhere in `tokens`."""
    return f",{EOS},{','.join(map(str, doc))},{EOS}," in f",{EOS},{','.join(map(str, np.asarray(tokens).tolist()))},"


def test_token_cache_holds_out_every_kth_document(text_data, tmp_path):
    tok = Tokenizer(text_data / "tokenizer.model")
    # 40 marker documents, no two alike: three distinct words each, a different triple per line
    docs = [" ".join(words) for words in itertools.islice(itertools.permutations(WORDS, 3), 0, 4000, 100)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(d + "\n" for d in docs))
    enc = [tuple(ids) for ids in tok.encode(docs)]
    assert len(docs) == len(set(enc)) == 40
    cache = tmp_path / "cache"
    train = token_cache(corpus, tok, cache, val_split=0.25)
    held = token_cache(corpus, tok, cache, val_split=0.25, validation=True)
    assert documents(held) == enc[0::4]                                       # lines 1, 5, 9, ...
    assert documents(train) == [e for i, e in enumerate(enc) if i % 4]
    for doc in documents(held):
        assert not occurs_in(doc, train), f"held-out {tok.decode(list(doc))!r} is in the training tokens"
    assert documents(token_cache(corpus, tok, cache)) == enc                 # no hold-out: everything
    assert len(list(cache.iterdir())) == 3                                    # one cache per part


def test_val_split_holds_out_documents(text_data, tmp_path):
    save = tmp_path / "run"
    cfg = tiny_text_config(text_data, save, val_file="", val_split=0.1, max_steps=3)
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode == 0, r.stderr[-3000:]
    # the stage cached exactly the two parts of every 10th document: asking for them builds nothing new
    cache = save / "cache"
    built = sorted(cache.iterdir())
    tok = Tokenizer(save / "tokenizer.model")
    train = token_cache(text_data / "train.txt", tok, cache, val_split=0.1)
    held = token_cache(text_data / "train.txt", tok, cache, val_split=0.1, validation=True)
    assert sorted(cache.iterdir()) == built and len(built) == 2
    docs = [tuple(ids) for ids in tok.encode((text_data / "train.txt").read_text().splitlines())]
    assert documents(held) == docs[0::10] and len(documents(train)) == 81
    for doc in documents(held):
        assert not occurs_in(doc, train), f"held-out {tok.decode(list(doc))!r} is in the training tokens"
    val = metrics(save, "val")[-1]
    assert val["n_tokens"] == len(held) - 1                                    # every held-out token scored
    assert f"{len(train):,} train; {len(held):,} val" in (save / "training.log").read_text()


def test_non_finite_steps_are_skipped_then_stop_the_run(text_data, tmp_path):
    save = tmp_path / "run"
    cfg = tiny_text_config(text_data, save, lr=1e6, max_grad_norm=0.0, warmup_steps=0, max_nonfinite_steps=3)
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode != 0
    log = (save / "training.log").read_text()
    assert "step skipped (1 in a row)" in log and "step skipped (3 in a row)" in log
    assert "3 non-finite steps in a row" in r.stderr


def test_cpu_amp_autocasts_only_where_the_cpu_has_native_bf16_and_gpu_path_always(monkeypatch):
    from omni.config import TrainConfig
    from omni.train import engine
    cpu, x = torch.device("cpu"), torch.randn(4, 8)

    def dtype(training=True, **keys):
        with engine.autocast_context(cpu, TrainConfig(**keys), training=training):
            return (x @ x.T).dtype
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert dtype(cpu_amp=True) == torch.bfloat16
    assert dtype(cpu_amp=True, use_amp=False) == dtype(cpu_amp=False) == torch.float32  # off unless both are set
    assert dtype(cpu_amp=True, training=False) == torch.float32                         # validation stays fp32
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)  # emulated bf16 would be slower: fp32
    assert dtype(cpu_amp=True) == torch.float32
    # the GPU path on the CPU: bf16 whatever the CPU, in training and validation, and compiled
    assert dtype(gpu_path=True) == dtype(gpu_path=True, training=False) == torch.bfloat16
    assert dtype(gpu_path=True, use_amp=False) == torch.float32
    assert engine.compiles(cpu, TrainConfig(gpu_path=True)) and not engine.compiles(cpu, TrainConfig())
    assert not engine.compiles(cpu, TrainConfig(gpu_path=True, use_compile=False))


def test_trains_on_the_gpu_path(text_data, tmp_path):
    save = tmp_path / "run"
    assert_trains_on_the_gpu_path(["train_text.py", "--config", str(tiny_text_config(text_data, save))], save,
                                  ("thinker.pt",))
    r = run_script(["train_text.py", "--config", str(tiny_text_config(text_data, save)), "--fresh", "--set",
                    "gpu_path=true", "compile_backend=nope"])
    assert r.returncode == 1 and "compile_backend 'nope' is not a torch.compile backend" in r.stderr
