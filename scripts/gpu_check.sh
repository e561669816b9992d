#!/usr/bin/env bash
# A short check of every stage on the GPU path: each trains STEPS steps at the seed (_tiny) sizes with the GPU
# settings (bf16 autocast, torch.compile) on data laid out like the built-in dataset, validates and writes its
# artifact; scripts/gpu_check_summary.py then prints one row per stage (steps/s, throughput, peak GPU memory,
# last loss, validation, artifact, exit status) and ends non-zero if any stage failed.
#
#   bash scripts/gpu_check.sh [DATA=data/demo] [OUT=runs/gpu_check] [STEPS=300]    # on a GPU
#   bash scripts/gpu_check.sh --cpu [DATA] [OUT=runs/gpu_check_cpu] [STEPS=4]       # the same path on the CPU
#   TOKENIZER=runs/demo/thinker/tokenizer.model VOCAB=4096 bash scripts/gpu_check.sh   # reuse a tokenizer
#   STAGES="audio_enc talker" bash scripts/gpu_check.sh   # some stages only (vision needs thinker's output,
#                                                          # vocoder talker's, omni_sft thinker's, audio_enc's
#                                                          # and vision's)
#
# --cpu runs on the CPU with `gpu_path` (bf16 autocast whatever the CPU, and torch.compile), so that a GPU-only
# bug (a bf16 tensor written into an fp32 buffer, a graph that does not compile) shows without a GPU; it trains
# a 4,096-token tokenizer, as the demo does, unless TOKENIZER is given. DATA needs text/{train,val}.txt,
# asr/{train,val_world}.csv, images/{train,val_world}.jsonl, tts/{train,val_world}.csv, sft/{train,val}.jsonl
# and ocr/{train,val_clean}.csv (`make data` writes them). A stage that fails is reported and the rest still run.
set -uo pipefail
cpu=()
if [ "${1:-}" = "--cpu" ]; then cpu=(device=cpu gpu_path=true); shift; fi
DATA=${1:-data/demo}
OUT=${2:-runs/gpu_check${cpu:+_cpu}}
STEPS=${3:-$([ -n "${cpu[*]:-}" ] && echo 4 || echo 300)}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$OUT"
warm=$((STEPS < 100 ? STEPS / 2 : 50))   # warm-up steps, and steps per logged window (the first: compiling)
common=(--fresh --set max_steps="$STEPS" warmup_steps="$warm" print_freq="$((warm > 0 ? warm : 1))"
        val_freq="$STEPS" checkpoint_freq="$STEPS" "${cpu[@]}")
tok=()
if [ -n "${TOKENIZER:-}" ]; then tok=(tokenizer="$TOKENIZER" model.vocab_size="${VOCAB:?set VOCAB to the tokenizer size}")
elif [ -n "${cpu[*]:-}" ]; then tok=(model.vocab_size=4096); fi

STAGES=${STAGES:-thinker audio_enc vision talker vocoder omni_sft ocr}

stage() {  # KEY SCRIPT CONFIG [--set overrides...]
  local key=$1 script=$2 config=$3; shift 3
  [[ " $STAGES " == *" $key "* ]] || return 0
  local t0=$SECONDS
  echo "=== $key: $script --config $config"
  $PY "$script" --config "$config" "${common[@]}" save_dir="$OUT/$key" "$@" > "$OUT/$key.out" 2>&1
  local rc=$?
  echo "$key rc=$rc wall_s=$((SECONDS - t0))" | tee -a "$OUT/status.txt"
  [ $rc -eq 0 ] || tail -n 30 "$OUT/$key.out"
}

rm -f "$OUT/status.txt"
stage thinker train_text.py configs/thinker_tiny.json \
  train_file="$DATA/text/train.txt" val_file="$DATA/text/val.txt" "${tok[@]}"
stage audio_enc train_audio_enc.py configs/audio_enc_tiny.json \
  train_csv="$DATA/asr/train.csv" "val_csvs=[\"$DATA/asr/val_world.csv\"]"
stage vision train_vision.py configs/vision_tiny.json \
  train_file="$DATA/images/train.jsonl" val_file="$DATA/images/val_world.jsonl" \
  thinker_ckpt="$OUT/thinker/thinker.pt"
stage talker train_talker.py configs/talker_tiny.json \
  train_csv="$DATA/tts/train.csv" "val_csvs=[\"$DATA/tts/val_world.csv\"]" max_mel_length=1024 \
  codec.max_steps="$STEPS" codec.warmup_steps="$warm" codec.val_freq="$STEPS" roundtrip=16 \
  audio_enc_ckpt="$OUT/audio_enc/audio_enc.pt"
stage vocoder train_vocoder.py configs/vocoder_tiny.json \
  train_csv="$DATA/tts/train.csv" val_csv="$DATA/tts/val_world.csv" codec_ckpt="$OUT/talker/rvq_codec.pt" \
  adv_start=$((STEPS / 2)) num_workers=0
stage omni_sft sft_omni.py configs/omni_sft_tiny.json \
  "train_files=[\"$DATA/sft/train.jsonl\"]" val_file="$DATA/sft/val.jsonl" thinker_ckpt="$OUT/thinker/thinker.pt" \
  vision_ckpt="$OUT/vision/vision.pt" audio_enc_ckpt="$OUT/audio_enc/audio_enc.pt" align_steps=$((STEPS / 3))
stage ocr train_ocr.py configs/ocr_tiny.json \
  train_csv="$DATA/ocr/train.csv" "val_csvs=[\"$DATA/ocr/val_clean.csv\"]" cache_lines=true num_workers=0
$PY scripts/gpu_check_summary.py "$OUT" > "$OUT/summary.md"
rc=$?
cat "$OUT/summary.md"
exit $rc
