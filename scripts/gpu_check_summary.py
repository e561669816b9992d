"""Summarise a scripts/gpu_check.sh run: one Markdown row per training part (steps/s and throughput after the
first logging window, which holds torch.compile's warm-up; peak GPU memory; the final validation; the artifacts
written; the exit status). Exits 1 when a stage failed or wrote no artifact.

    python scripts/gpu_check_summary.py runs/gpu_check
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def parts(metrics: Path) -> dict[str, list[dict]]:
    """Records of a metrics.jsonl by training part (Stage D logs the codec, then the Talker, into one file)."""
    out: dict[str, list[dict]] = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec.get("stage", metrics.parent.name), []).append(rec)
    return out


def row(key: str, recs: list[dict], rc: str, artifacts: str) -> str:
    train = [r for r in recs if "split" not in r]
    vals = [r for r in recs if "split" in r]
    if not train:
        return f"| {key} | 0 | no logged step | | | | | {artifacts} | {rc} |"
    unit = next(k for k in train[0] if k.endswith("/s") and k != "steps/s")
    later = train[1:] or train   # the first window holds torch.compile's warm-up
    rate = statistics.median(r[unit] for r in later)
    steps_s = statistics.median(r.get("steps/s", 0.0) for r in later)
    mem = max((r.get("mem_gb", 0.0) for r in train), default=0.0)
    val = {k: v for k, v in (vals[-1] if vals else {}).items() if isinstance(v, float) and "ppl_" not in k
           and not k.endswith("/n") and not k.endswith("n_tokens")}
    val_s = ", ".join(f"{k} {v:.4g}" for k, v in list(val.items())[:6]) or "none"
    rate_s = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"   # a few CPU steps run slowly: keep 3 digits
    return (f"| {key} | {train[-1]['step']} | {steps_s:.3g} | {rate_s} {unit} | {mem:.2f} | "
            f"{train[-1]['loss']:.3f} | {val_s} | {artifacts} | {rc} |")


def main(out: str) -> int:
    """Print the table; 1 when a stage failed or wrote no artifact, else 0."""
    out = Path(out)
    status = {}
    status_file = out / "status.txt"
    if status_file.exists():
        for line in status_file.read_text().splitlines():
            key, rc, wall = line.split()
            status[key] = (rc.split("=")[1], wall.split("=")[1])
    print("| part | steps | steps/s | throughput (median) | peak GB | last loss | final validation | artifact | exit |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = not status
    for key, (rc, wall) in status.items():
        written = sorted(p.name for p in (out / key).glob("*.pt") if "_step_" not in p.name)
        failed |= rc != "0" or not written
        metrics = out / key / "metrics.jsonl"
        if not metrics.exists():
            print(f"| {key} | failed (rc {rc}, {wall} s): see {out / (key + '.out')} | | | | | | none | {rc} |")
            continue
        for part, recs in parts(metrics).items():
            print(row(part if rc == "0" else f"{part} (failed)", recs, rc, ", ".join(written) or "none"))
    print()
    print("wall seconds per stage (data preparation, torch.compile, training, validation): "
          + ", ".join(f"{k} {w} (rc {rc})" for k, (rc, w) in status.items()))
    if failed:
        bad = [k for k, (rc, _) in status.items() if rc != "0"]
        print("FAILED: " + (", ".join(bad) if bad else "a stage wrote no artifact" if status
                            else f"no stage ran ({status_file} is missing)"))
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_check"))
