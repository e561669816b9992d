"""scripts/check_mel_lengths.py: lengths and the max_mel_length to set, in each stage's own unit."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SR


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_mel_lengths", ROOT / "scripts" / "check_mel_lengths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Three utterances of 101, 341 and 51 log-mel frames (n // 160 + 1): 13, 43 and 7 code frames of 80 ms."""
    d = tmp_path_factory.mktemp("lengths")
    rows = ["wav,text,speaker"]
    for i, (seconds, text) in enumerate([(1.0, "ab cd"), (3.4, "abcd " * 8), (0.5, "a")]):
        t = np.arange(int(seconds * SR)) / SR
        sf.write(d / f"u{i}.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
        rows.append(f"u{i}.wav,{text.strip()},tone")
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    return d / "train.csv"


def table(out: str) -> dict:
    """{"min": [frames, seconds], ..., "max": [...]} of the printed distribution."""
    names = ("min", "p50", "p90", "p99", "p99.9", "max")
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in names}


def test_audio_encoder_counts_log_mel_frames(check, manifest, capsys):
    assert check(["--csv", str(manifest), "--limit", "300"]) == 0
    out = capsys.readouterr().out
    assert "log-mel frames (10 ms, 100/s)" in out
    assert table(out)["min"] == ["51", "0.51"] and table(out)["max"] == ["341", "3.41"]
    assert "over max_mel_length 300: 1 " in out and "--set max_mel_length=384" in out   # 341 up to 64s
    assert "CTC cannot align at 4x" in out and "CTC cannot align at 8x" in out
    assert "train_audio_enc.py" in out


def test_talker_counts_code_frames(check, manifest, capsys):
    assert check(["--stage", "talker", "--csv", str(manifest), "--limit", "40"]) == 0
    out = capsys.readouterr().out
    assert "code frames (80 ms, 12.5/s" in out and "train_talker.py" in out
    assert "CTC" not in out
    assert table(out)["min"] == ["7", "0.56"] and table(out)["max"] == ["43", "3.44"]   # ceil(51/8), ceil(341/8)
    assert "over max_mel_length 40: 1 " in out and "--set max_mel_length=48" in out  # 43 up to 8s
    # the limit is in code frames: 43 keeps the longest (ceil, not floor, of 341 / 8)
    assert check(["--stage", "talker", "--csv", str(manifest), "--limit", "43"]) == 0
    assert "over max_mel_length 43: 0 " in capsys.readouterr().out
    assert check(["--stage", "talker", "--csv", str(manifest), "--limit", "42"]) == 0
    assert "over max_mel_length 42: 1 " in capsys.readouterr().out
