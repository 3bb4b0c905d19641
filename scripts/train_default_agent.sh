#!/usr/bin/env bash
# Reproduces the shipped compact agent (src/segloop/policies/compact/checkpoint/): SFT from the oracle on synthetic
# scenes generated on the fly, then GRPO on the IoU of the submitted mask, GrabCut as the segmenter.
# World: difficulty "easy", 768 px scenes, no "no such object" queries. Training scenes: seed 1 (SFT)
# and seed 2 (GRPO); held-out curves: seed 1000; results table: seed 2000. One thread: the cores are shared.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/default_agent}
SEGLOOP=${SEGLOOP:-.venv/bin/segloop}
WORLD="easy:768"
HELD_OUT="synth:${WORLD}:1000:100"

$SEGLOOP train sft --init compact --data "synth:${WORLD}:1:1000000" --eval-data "$HELD_OUT" --eval-n 100 \
    --out "$OUT/sft" --steps 600 --batch-size 16 --lr 2e-3 --eval-every 200 --seed 0 --threads 1 \
    --pool-size 768 --refresh-every 20 --refresh-size 32 \
    --compact-options '{"max_side": 224, "input_size": 128, "grid": 32, "channels": 32, "augment": true}'

$SEGLOOP train grpo --model "$OUT/sft/final" --data "synth:${WORLD}:2:1000000" --eval-data "$HELD_OUT" \
    --eval-n 100 --out "$OUT/grpo" --steps 60 --prompts-per-step 8 --group-size 8 --lr 3e-4 \
    --eval-every 20 --save-every 20 --seed 0 --threads 1

rm -rf src/segloop/policies/compact/checkpoint
mkdir -p src/segloop/policies/compact/checkpoint
cp "$OUT/grpo/final/config.json" "$OUT/grpo/final/model.safetensors" src/segloop/policies/compact/checkpoint/
du -sh src/segloop/policies/compact/checkpoint

# The README's results table (200 held-out scenes, seed 2000) and GRPO - SFT with its bootstrap interval:
.venv/bin/python scripts/results_table.py --sft "$OUT/sft/final" --grpo src/segloop/policies/compact/checkpoint
