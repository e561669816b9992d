"""scripts/gpu_check_summary.py: the table a GPU check prints, from status.txt and each stage's metrics.jsonl."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary(folder) -> tuple[int, dict[str, str]]:
    r = subprocess.run([sys.executable, "scripts/gpu_check_summary.py", str(folder)], cwd=ROOT, capture_output=True,
                       text=True)
    return r.returncode, {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ")}


def test_summary_rows_per_part_skip_the_compile_window_and_flag_failures(tmp_path):
    (tmp_path / "status.txt").write_text("talker rc=0 wall_s=40\nvision rc=1 wall_s=5\naudio_enc rc=1 wall_s=9\n")
    recs = [{"stage": "rvq_codec", "step": 50, "loss": 2.0, "audio_s/s": 10.0, "mem_gb": 0.5, "steps/s": 0.1},
            {"stage": "rvq_codec", "step": 100, "loss": 1.0, "audio_s/s": 900.0, "mem_gb": 0.7, "steps/s": 9.0},
            {"stage": "rvq_codec", "step": 150, "loss": 0.5, "audio_s/s": 1100.0, "mem_gb": 0.7, "steps/s": 11.0},
            {"stage": "rvq_codec", "step": 150, "split": "val", "val/mse": 0.04, "val/n": 32},
            {"stage": "talker", "step": 50, "loss": 4.0, "audio_s/s": 300.0, "mem_gb": 1.5, "steps/s": 2.0}]
    (tmp_path / "talker").mkdir()
    (tmp_path / "talker" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for name in ("rvq_codec.pt", "talker.pt", "talker_step_150.pt"):
        (tmp_path / "talker" / name).write_bytes(b"")
    (tmp_path / "audio_enc").mkdir()       # failed before its first logged step: only a validation record
    (tmp_path / "audio_enc" / "metrics.jsonl").write_text(json.dumps({"step": 0, "split": "val", "loss": 3.0}) + "\n")
    rc, rows = summary(tmp_path)
    assert rc == 1                                                                       # two stages failed
    assert "| 10 | 1,000 audio_s/s | 0.70 |" in rows["rvq_codec"]          # medians of 9, 11 and 900, 1100
    assert "val/mse 0.04" in rows["rvq_codec"] and "val/n" not in rows["rvq_codec"]
    assert "| rvq_codec.pt, talker.pt | 0 |" in rows["rvq_codec"]           # final artifacts, not step ones
    assert "300 audio_s/s" in rows["talker"] and "| 1.50 |" in rows["talker"]          # a single window is kept
    assert "failed (rc 1, 5 s)" in rows["vision"]
    assert "no logged step" in rows["audio_enc (failed)"]


def test_summary_passes_only_when_every_stage_ran_and_wrote_its_artifact(tmp_path):
    (tmp_path / "status.txt").write_text("ocr rc=0 wall_s=30\n")
    (tmp_path / "ocr").mkdir()
    (tmp_path / "ocr" / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 3.0, "lines/s": 50.0}) + "\n")
    rc, rows = summary(tmp_path)
    assert rc == 1 and "| none | 0 |" in rows["ocr"]                       # exit 0, but no ocr.pt written
    (tmp_path / "ocr" / "ocr.pt").write_bytes(b"")
    assert summary(tmp_path)[0] == 0
    (tmp_path / "status.txt").unlink()
    assert summary(tmp_path)[0] == 1                                        # nothing ran at all
