#!/usr/bin/env bash
# Reproduces the shipped compact agent (src/segloop/policies/compact/checkpoint/) from nothing, with GrabCut
# as the segmenter, on the synthetic world "easy" at 768 px with 10 % "no such object" requests:
#   1. perception caches: 12k training scenes (seed 1) and 600 probe scenes (seed 1000): full and zoomed views
#      as perception sees them, every object labelled (segloop train cache)
#   2. dense pre-training of the root and zoom perception networks (segloop train pretrain)
#   3. SFT of the decisions by DAgger: the student drives, the compact expert labels its states (seed 2 scenes)
#   4. GRPO of the decisions on the submitted mask's IoU (Dr. GRPO advantages, per-episode loss, KL to the SFT
#      policy; seed 3 scenes); the checkpoint shipped is the best by the probe scenes' held-out gIoU
#   5. the README's results table on held-out scenes (seed 2000), never used for any choice
# Stages whose output exists are skipped (delete the folder to redo one). SEED seeds every training stage (the
# scenes stay the same). Every stage prints its progress, CPU and wall time; WORKERS processes build the
# caches and the trainers use THREADS torch threads (2 on an otherwise idle 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/default_agent}
SEGLOOP=${SEGLOOP:-.venv/bin/segloop}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-2}
SEED=${SEED:-0}
SHIP=${SHIP:-1}
WORLD="easy:768"
PROBE="synth:${WORLD}:1000:200:0.1"

stage() { echo "== $1 ($(date +%T))"; }
START=$(date +%s)

stage "1. perception caches"
[ -f "$OUT/cache/train/config.json" ] || $SEGLOOP train cache --data "synth:${WORLD}:1:12000:0.1" \
    --out "$OUT/cache/train" --workers "$WORKERS" --seed 0
[ -f "$OUT/cache/probe/config.json" ] || $SEGLOOP train cache --data "synth:${WORLD}:1000:600:0.1" \
    --out "$OUT/cache/probe" --workers "$WORKERS" --seed 1

stage "2. dense pre-training of perception"
[ -f "$OUT/pretrain/final/config.json" ] || $SEGLOOP train pretrain --cache "$OUT/cache/train" \
    --eval-cache "$OUT/cache/probe" --out "$OUT/pretrain" --steps 3000 --batch 32 --lr 2e-3 --eval-every 500 \
    --eval-n 300 --seed "$SEED" --threads "$THREADS"

stage "3. SFT of the decisions (DAgger)"
[ -f "$OUT/sft/final/config.json" ] || $SEGLOOP train sft --mode dagger --model "$OUT/pretrain/final" \
    --data "synth:${WORLD}:2:1000000:0.1" --expert compact-expert --eval-data "$PROBE" --eval-n 100 \
    --out "$OUT/sft" --steps 300 --batch-size 16 --lr 1e-2 --warmup 20 --pool-size 192 --refresh-every 10 \
    --refresh-size 32 --follow-expert 0.3 --greedy-share 0.5 --eval-every 100 --seed "$SEED" --threads "$THREADS"

stage "4. GRPO of the decisions"
[ -f "$OUT/grpo/final/config.json" ] || $SEGLOOP train grpo --model "$OUT/sft/final" \
    --data "synth:${WORLD}:3:1000000:0.1" --eval-data "$PROBE" --eval-n 200 --out "$OUT/grpo" --steps 200 \
    --prompts-per-step 16 --group-size 8 --lr 3e-3 --adv-norm none --loss-agg episode --min-spread 0.05 \
    --kl-coef 0.02 --reward-format-weight 0 --update-epochs 2 --eval-every 25 --save-every 25 --final best \
    --seed "$SEED" --threads "$THREADS"

echo "training took $(( ($(date +%s) - START) / 60 )) min wall"
if [ "$SHIP" = 1 ]; then
  CHECKPOINT=src/segloop/policies/compact/checkpoint
  rm -rf "$CHECKPOINT"
  mkdir -p "$CHECKPOINT"
  cp "$OUT/grpo/final/config.json" "$OUT/grpo/final/model.safetensors" "$CHECKPOINT/"
  du -sh "$CHECKPOINT"
fi

stage "5. results table (held-out seed 2000)"
.venv/bin/python scripts/results_table.py --pretrained "$OUT/pretrain/final" --sft "$OUT/sft/final" \
    --grpo "$OUT/grpo/final" --probe-cache "$OUT/cache/probe" --threads "$THREADS" --medium --json "$OUT/results.json"
