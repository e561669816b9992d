#!/usr/bin/env bash
# make demo: build the built-in dataset and train every stage with configs/demo/*.json.
# Rerunning resumes unfinished stages and skips finished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1

$PY scripts/make_demo_data.py --out data/demo

stage() {  # stage NAME SCRIPT CONFIG
  echo "=== $1: $PY $2 --config $3"
  local t0=$SECONDS
  $PY "$2" --config "$3"
  echo "=== $1 done in $((SECONDS - t0))s"
}

stage "Stage A (Thinker)" train_text.py configs/demo/thinker.json
$PY scripts/evaluate.py text --ckpt runs/demo/thinker/thinker.pt --data data/demo/text/val.txt
