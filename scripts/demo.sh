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
import json, sys, pathlib
p, key, sec = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
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

record data "$data_seconds"

stage thinker train_text.py configs/demo/thinker.json runs/demo/thinker/thinker.pt
evaluate text_val text runs/demo/thinker/thinker.pt data/demo/text/val.txt
evaluate text_world_val text runs/demo/thinker/thinker.pt data/demo/text/world_val.txt

stage audio_enc train_audio_enc.py configs/demo/audio_enc.json runs/demo/audio_enc/audio_enc.pt
for split in test_world test_english; do  # each stage's own final validation (training.log, metrics.jsonl) has val_*
  evaluate "asr_$split" asr runs/demo/audio_enc/audio_enc.pt "data/demo/asr/$split.csv"
done

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
# the Talker, each held-out sentence in each voice, through the vocoder and (the same codes) Griffin-Lim; the
# Griffin-Lim bounds only on English, where they say what the codec costs
evaluate tts_test_world tts runs/demo/talker data/demo/tts/test_world.csv --vocoder runs/demo/vocoder/hifigan.pt \
  --no_bounds
evaluate tts_test_english tts runs/demo/talker data/demo/tts/test_english.csv --vocoder runs/demo/vocoder/hifigan.pt \
  --voice default   # open vocabulary, the default voice
t0=$SECONDS
# a few held-out sentences voiced each way (the report links them), from true mels and from codec mels
samples=$(sed -n 2,4p data/demo/tts/test_world.csv | cut -d, -f1 | sed 's|^|data/demo/tts/|')
for how in "vocoder --ckpt runs/demo/vocoder/hifigan.pt" "generator_alone --ckpt runs/demo/vocoder/hifigan.pt --refine 0" \
           "griffinlim --griffin_lim"; do
  set -- $how
  $PY -m omni.vocode "${@:2}" --out_dir "runs/demo/vocoder/samples/$1" $samples
  $PY -m omni.vocode "${@:2}" --codec runs/demo/talker --out_dir "runs/demo/vocoder/samples/$1_codec" $samples
done
for voice in $($PY -m omni.tts --ckpt_dir runs/demo/talker --list_voices); do   # one sentence in each voice
  $PY -m omni.tts --ckpt_dir runs/demo/talker --vocoder runs/demo/vocoder/hifigan.pt --voice "$voice" \
    --text "a small red star on the left and a large blue circle in the centre" \
    --out "runs/demo/voices/${voice//:/_}.wav"
done
record eval/vocoder_samples "$((SECONDS - t0))"

stage ocr train_ocr.py configs/demo/ocr.json runs/demo/ocr/ocr.pt
for split in test_{clean,degraded,long,font}; do  # chosen on val_* (the stage's validation); reported on test_*
  evaluate "ocr_$split" ocr runs/demo/ocr/ocr.pt "data/demo/ocr/$split.csv"
done

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
