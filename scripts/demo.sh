#!/usr/bin/env bash
# make demo: build the built-in dataset, train every stage with configs/demo/*.json, evaluate each on its
# held-out splits and write runs/demo/report.md. Rerunning resumes unfinished stages and skips finished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
EVAL=runs/demo/eval
mkdir -p "$EVAL"

t0=$SECONDS
$PY scripts/make_demo_data.py --out data/demo
data_seconds=$((SECONDS - t0))

record() {  # record KEY SECONDS [keep]: the seconds a part took, into eval/times.json ("keep": only if absent)
  $PY - "$EVAL/times.json" "$@" <<'PY'
import fcntl, json, sys, pathlib
p, key, sec = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with open(p.with_suffix(".lock"), "w") as lock:   # two evaluations side by side may record at once
    fcntl.flock(lock, fcntl.LOCK_EX)
    t = json.loads(p.read_text()) if p.exists() else {}
    if sys.argv[4:] != ["keep"] or key not in t:
        t[key] = sec
    p.write_text(json.dumps(t, indent=1))
PY
}

stage() {  # stage KEY SCRIPT CONFIG ARTIFACT: train, and record the seconds it took
  local key=$1 t0=$SECONDS keep=
  [ -e "$4" ] && keep=keep  # finished before: the script only confirms it, and the measured time stays
  echo "=== $key: $PY $2 --config $3"
  $PY "$2" --config "$3"
  record "$key" "$((SECONDS - t0))" $keep
}

evaluate() {  # evaluate NAME STAGE CKPT DATA [FLAGS]: one JSON object into eval/NAME.json, its seconds as eval/NAME
  local t0=$SECONDS
  $PY scripts/evaluate.py "$2" --ckpt "$3" --data "$4" "${@:5}" | tee "$EVAL/$1.json"
  record "eval/$1" "$((SECONDS - t0))"
}

side_by_side() {  # side_by_side "CMD ..." "CMD ...": two commands at once, one torch thread each (on 2 cores the
  # small models here gain more from a second process than from a second thread); fails if either fails
  local rc=0
  OMP_NUM_THREADS=1 eval "$1" & local first=$!
  OMP_NUM_THREADS=1 eval "$2" & local second=$!
  wait $first || rc=$?
  wait $second || rc=$?
  return $rc
}

record data "$data_seconds"

stage thinker train_text.py configs/demo/thinker.json runs/demo/thinker/thinker.pt
side_by_side "evaluate text_val text runs/demo/thinker/thinker.pt data/demo/text/val.txt" \
  "evaluate text_world_val text runs/demo/thinker/thinker.pt data/demo/text/world_val.txt"

stage audio_enc train_audio_enc.py configs/demo/audio_enc.json runs/demo/audio_enc/audio_enc.pt
# each stage's own final validation (training.log, metrics.jsonl) has val_*
side_by_side "evaluate asr_test_world asr runs/demo/audio_enc/audio_enc.pt data/demo/asr/test_world.csv" \
  "evaluate asr_test_english asr runs/demo/audio_enc/audio_enc.pt data/demo/asr/test_english.csv"

stage vision train_vision.py configs/demo/vision.json runs/demo/vision/vision.pt  # needs Stage A's thinker.pt
# configs are chosen on val_* (the stage's validation); the targets are on test_world
evaluate vision_test_world vision runs/demo/vision/vision.pt data/demo/images/test_world.jsonl

stage omni_sft sft_omni.py configs/demo/omni_sft.json runs/demo/omni_sft/omni_final.pt  # needs A, B and C
# chosen on val (val_voices); the targets are on test (test voices, unseen scenes)
evaluate sft_test sft runs/demo/omni_sft data/demo/sft/test.jsonl

stage talker train_talker.py configs/demo/talker.json runs/demo/talker/talker.pt  # codec, then Talker reading E's Thinker; round trip through B

stage vocoder train_vocoder.py configs/demo/vocoder.json runs/demo/vocoder/hifigan.pt  # needs D's codec
# the first 100 rows (each held-out sentence comes in each of the Talker's voices in turn)
evaluate vocoder_test_world vocoder runs/demo/vocoder/hifigan.pt data/demo/tts/test_world.csv --max_utterances 100
samples() {  # a few held-out sentences voiced each way (the report links them), from true and from codec mels,
  # and one sentence in each of the Talker's voices
  local t0=$SECONDS how voice
  local wavs=$(sed -n 2,4p data/demo/tts/test_world.csv | cut -d, -f1 | sed 's|^|data/demo/tts/|')
  for how in "vocoder --ckpt runs/demo/vocoder/hifigan.pt" "generator_alone --ckpt runs/demo/vocoder/hifigan.pt --refine 0" \
             "griffinlim --griffin_lim"; do
    set -- $how
    $PY -m omni.vocode "${@:2}" --out_dir "runs/demo/vocoder/samples/$1" $wavs
    $PY -m omni.vocode "${@:2}" --codec runs/demo/talker --out_dir "runs/demo/vocoder/samples/$1_codec" $wavs
  done
  for voice in $($PY -m omni.tts --ckpt_dir runs/demo/talker --list_voices); do
    $PY -m omni.tts --ckpt_dir runs/demo/talker --vocoder runs/demo/vocoder/hifigan.pt --voice "$voice" \
      --text "a small red star on the left and a large blue circle in the centre" \
      --out "runs/demo/voices/${voice//:/_}.wav"
  done
  record eval/vocoder_samples "$((SECONDS - t0))"
}
# the Talker, each held-out sentence in each voice, through the vocoder and (the same codes) Griffin-Lim; the
# Griffin-Lim bounds only on the default voice's open-vocabulary English, where they say what the codec costs
side_by_side "evaluate tts_test_world tts runs/demo/talker data/demo/tts/test_world.csv \
                --vocoder runs/demo/vocoder/hifigan.pt --no_bounds" \
  "evaluate tts_test_english tts runs/demo/talker data/demo/tts/test_english.csv \
     --vocoder runs/demo/vocoder/hifigan.pt --voice default; samples"

stage ocr train_ocr.py configs/demo/ocr.json runs/demo/ocr/ocr.pt
ocr_test() { evaluate "ocr_$1" ocr runs/demo/ocr/ocr.pt "data/demo/ocr/$1.csv"; }
# chosen on val_* (the stage's validation); reported on test_*
side_by_side "ocr_test test_clean; ocr_test test_long" "ocr_test test_degraded; ocr_test test_font"

# μOmni answers: export the demo model, then ask a copy of the export in every mode (runs/demo/chat/)
t0=$SECONDS
$PY export.py --omni_ckpt runs/demo/omni_sft --talker_ckpt runs/demo/talker --vocoder_ckpt runs/demo/vocoder \
  --ocr_ckpt runs/demo/ocr --output_dir runs/demo/export
$PY scripts/demo_chat.py --export runs/demo/export --sft data/demo/sft/test.jsonl \
  --ocr data/demo/ocr/test_clean.csv --out runs/demo/chat || echo "the chat demo failed (above); the report follows"
record eval/export_and_chat "$((SECONDS - t0))"

$PY scripts/report.py --runs runs/demo

echo
echo "Talk to the demo model:  $PY infer_chat.py --ckpt_dir runs/demo/export"
echo "Serve it (a chat page and an OpenAI-compatible API on http://localhost:8000/):"
echo "  $PY serve.py --ckpt_dir runs/demo/export"
