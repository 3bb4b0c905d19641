#!/usr/bin/env bash
# Reproduces the shipped compact agent (src/segloop/policies/compact/checkpoint/) from nothing, with GrabCut
# as the segmenter, on the synthetic world "easy" at 768 px with 10 % "no such object" queries:
#   1. render caches: 10k training scenes (seed 1) and 1k probe scenes (seed 1000): the policy's own inputs
#      for the states that matter, labelled by the compact expert (segloop train cache)
#   2. dense pre-training of the root and zoomed networks on the cache (segloop train pretrain)
#   3. SFT by DAgger: the student drives, the expert labels its states (seed 2 scenes)
#   4. GRPO on the submitted mask's IoU (Dr. GRPO advantages, per-episode loss, KL to the SFT policy;
#      seed 3 scenes)
#   5. the README's results table on held-out scenes (seed 2000), never used for any choice
# Stages whose output exists are skipped (delete the folder to redo one). Held-out curves during training use
# seed 1000. Every stage prints its CPU and wall time; WORKERS processes
# build the cache and the trainers use THREADS torch threads (2 on an otherwise idle 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/default_agent}
SEGLOOP=${SEGLOOP:-.venv/bin/segloop}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-2}
WORLD="easy:768"
PROBE="synth:${WORLD}:1000:200:0.1"

stage() { echo "== $1 ($(date +%T))"; }
START=$(date +%s)

stage "1. render caches"
[ -f "$OUT/cache/train/config.json" ] || $SEGLOOP train cache --data "synth:${WORLD}:1:10000:0.1" \
    --out "$OUT/cache/train" --workers "$WORKERS" --seed 0
[ -f "$OUT/cache/probe/config.json" ] || $SEGLOOP train cache --data "synth:${WORLD}:1000:1000:0.1" \
    --out "$OUT/cache/probe" --workers "$WORKERS" --seed 1

stage "2. dense pre-training"
[ -f "$OUT/pretrain/final/config.json" ] || $SEGLOOP train pretrain --cache "$OUT/cache/train" --eval-cache "$OUT/cache/probe" --out "$OUT/pretrain" \
    --steps 4000 --root-batch 32 --zoomed-batch 32 --lr 2e-3 --eval-every 1000 --eval-n 2000 --seed 0 \
    --threads "$THREADS"

stage "3. SFT (DAgger)"
[ -f "$OUT/sft/final/config.json" ] || $SEGLOOP train sft --mode dagger --model "$OUT/pretrain/final" --data "synth:${WORLD}:2:1000000:0.1" \
    --eval-data "$PROBE" --eval-n 100 --out "$OUT/sft" --steps 200 --batch-size 16 --lr 3e-4 --warmup 20 \
    --pool-size 192 --refresh-every 10 --refresh-size 32 --follow-expert 0.3 --greedy-share 0.5 \
    --replay-cache "$OUT/cache/train" --replay-batch 32 --eval-every 100 --seed 0 --threads "$THREADS" \
    --expert-options '{"compact": true}'

stage "4. GRPO"
[ -f "$OUT/grpo/final/config.json" ] || $SEGLOOP train grpo --model "$OUT/sft/final" --data "synth:${WORLD}:3:1000000:0.1" --eval-data "$PROBE" \
    --eval-n 100 --out "$OUT/grpo" --steps 120 --prompts-per-step 8 --group-size 8 --lr 1e-4 --adv-norm none \
    --loss-agg episode --min-spread 0.05 --kl-coef 0.04 --reward-format-weight 0 --update-epochs 1 \
    --eval-every 20 --save-every 20 --seed 0 --threads "$THREADS"

CHECKPOINT=src/segloop/policies/compact/checkpoint
rm -rf "$CHECKPOINT"
mkdir -p "$CHECKPOINT"
cp "$OUT/grpo/final/config.json" "$OUT/grpo/final/model.safetensors" "$CHECKPOINT/"
du -sh "$CHECKPOINT"
echo "training took $(( ($(date +%s) - START) / 60 )) min wall"

stage "5. results table (held-out seed 2000)"
.venv/bin/python scripts/results_table.py --pretrained "$OUT/pretrain/final" --sft "$OUT/sft/final" \
    --grpo "$CHECKPOINT" --threads "$THREADS" --medium --json "$OUT/results.json"
