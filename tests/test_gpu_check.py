"""scripts/gpu_check_summary.py: the table a GPU check prints, from status.txt and each stage's metrics.jsonl."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_summary_rows_per_part_skip_the_compile_window_and_flag_failures(tmp_path):
    (tmp_path / "status.txt").write_text("talker rc=0 wall_s=40\nvision rc=1 wall_s=5\naudio_enc rc=1 wall_s=9\n")
    recs = [{"stage": "rvq_codec", "step": 50, "loss": 2.0, "audio_s/s": 10.0, "mem_gb": 0.5},   # compiling
            {"stage": "rvq_codec", "step": 100, "loss": 1.0, "audio_s/s": 900.0, "mem_gb": 0.7},
            {"stage": "rvq_codec", "step": 150, "loss": 0.5, "audio_s/s": 1100.0, "mem_gb": 0.7},
            {"stage": "rvq_codec", "step": 150, "split": "val", "val/mse": 0.04, "val/n": 32},
            {"stage": "talker", "step": 50, "loss": 4.0, "audio_s/s": 300.0, "mem_gb": 1.5}]
    (tmp_path / "talker").mkdir()
    (tmp_path / "talker" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "audio_enc").mkdir()       # failed before its first logged step: only a validation record
    (tmp_path / "audio_enc" / "metrics.jsonl").write_text(json.dumps({"step": 0, "split": "val", "loss": 3.0}) + "\n")
    out = subprocess.run([sys.executable, "scripts/gpu_check_summary.py", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "1,000 audio_s/s" in rows["rvq_codec"] and "| 0.70 |" in rows["rvq_codec"]   # median of 900, 1100
    assert "val/mse 0.04" in rows["rvq_codec"] and "val/n" not in rows["rvq_codec"]
    assert "300 audio_s/s" in rows["talker"] and "| 1.50 |" in rows["talker"]          # a single window is kept
    assert "failed (rc 1, 5 s)" in rows["vision"]
    assert "no logged step" in rows["audio_enc (failed, rc 1)"]
