"""training.log (human-readable, appended across resumes, flushed per line) and metrics.jsonl."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from tqdm import tqdm


class RunLogger:
    """Rank 0 writes; other ranks get a logger that stays silent."""

    def __init__(self, save_dir: str | Path, enabled: bool = True, stage: str | None = None):
        self.enabled = enabled
        self.stage = stage  # tags metrics records, so several stages can share one folder (codec + Talker)
        self.dir = Path(save_dir)
        self.log_path = self.dir / "training.log"
        self.metrics_path = self.dir / "metrics.jsonl"
        self._log = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", buffering=1)  # line-buffered: made for tail -f

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        self._log.write(line + "\n")
        tqdm.write(line)

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        if self.stage:
            record = {"stage": self.stage, **record}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(clean) + "\n")

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop this stage's records a killed run wrote past its last checkpoint, so the file is one
        history (step -1: all of this stage's records, for --fresh). Other stages' records stay."""
        if not self.enabled or not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rec = json.loads(line)
                if rec.get("step", 0) <= step or rec.get("stage", self.stage) != self.stage:
                    keep.append(line)
            except json.JSONDecodeError:
                pass  # a line cut by a kill mid-write
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(l + "\n" for l in keep))
        os.replace(tmp, self.metrics_path)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def format_metrics(record: dict) -> str:
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}" if abs(v) < 1e4 else f"{k} {v:.3e}")
        else:
            parts.append(f"{k} {v}")
    return " | ".join(parts)
