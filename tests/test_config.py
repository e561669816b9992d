"""Strict configs: unknown keys, wrong types and overrides; the errors a user meets on bad input."""
from __future__ import annotations

import json

import pytest

from conftest import run_script, tiny_text_config
from omni.config import ConfigError, load_config
from train_text import TextConfig


def write(tmp_path, data) -> str:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(data))
    return str(p)


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    path = write(tmp_path, {"learning_rate": 1e-3})
    with pytest.raises(ConfigError) as e:
        load_config(TextConfig, path)
    msg = str(e.value)
    assert "learning_rate" in msg and path in msg


def test_mistyped_nested_key_suggests_the_valid_one(tmp_path):
    path = write(tmp_path, {"model": {"n_layer": 2}})
    with pytest.raises(ConfigError, match=r"model\.n_layer.*did you mean 'model\.n_layers'"):
        load_config(TextConfig, path)


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="batch_size.*expects int"):
        load_config(TextConfig, write(tmp_path, {"batch_size": "16"}))
    with pytest.raises(ConfigError, match="use_amp.*expects bool"):
        load_config(TextConfig, write(tmp_path, {"use_amp": 1}))


def test_set_overrides_nested_keys_with_types(tmp_path):
    cfg = load_config(TextConfig, write(tmp_path, {"lr": 1e-3}),
                      ["lr=5e-4", "model.n_layers=2", "save_dir=runs/x", "extra_val_files=[\"a.txt\"]"])
    assert cfg.lr == 5e-4 and cfg.model.n_layers == 2 and cfg.save_dir == "runs/x"
    assert cfg.extra_val_files == ["a.txt"]
    assert cfg.warmup_steps == TextConfig().warmup_steps  # untouched keys keep defaults
    with pytest.raises(ConfigError, match="model.n_layres"):
        load_config(TextConfig, None, ["model.n_layres=2"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(TextConfig, None, ["max_steps=many"])


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "lr": 1e-3,\n}')
    with pytest.raises(ConfigError, match=r"bad\.json: invalid JSON at line 3"):
        load_config(TextConfig, str(p))


def test_script_reports_config_error_and_missing_corpus(text_data, tmp_path):
    cfg = tiny_text_config(text_data, tmp_path / "run", warmup_step=3)
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode != 0
    assert "warmup_step" in r.stderr and str(cfg) in r.stderr and "warmup_steps" in r.stderr

    cfg = tiny_text_config(text_data, tmp_path / "run2", train_file=str(tmp_path / "missing.txt"))
    r = run_script(["train_text.py", "--config", str(cfg)])
    assert r.returncode != 0
    assert "missing.txt" in r.stderr and "scripts/make_demo_data.py" in r.stderr
