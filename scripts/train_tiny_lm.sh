#!/usr/bin/env bash
# The tiny language model's learning curves (issue 5): a ~0.6M-parameter Qwen2.5-VL built offline
# (`segloop make-tiny`), SFT on the oracle's trajectories (zoom_in, segment, inspect_mask, submit), then a
# short GRPO run on the IoU of the submitted mask, through the same graph, tools and transformers policy a
# hub checkpoint uses. What it can learn here is the multi-turn tool grammar, not where the target is
# (docs/notes/tiny-vlm-learnability.md), so the held-out gIoU is expected to stay near 0.
# World: difficulty "easy", 256 px scenes. Training scenes: seed 1 (SFT), seed 2 (GRPO); held-out: seed 1000.
# One or two threads: the cores are shared. Curves: OUT/{sft,sft2,sft3,sft4,grpo}/*_curves.png (CSV beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/tiny_lm}
SEGLOOP=${SEGLOOP:-.venv/bin/segloop}
HELD_OUT="synth:easy:256:1000:16"

$SEGLOOP make-tiny --out "$OUT/model" --seed 0

$SEGLOOP train sft --model "$OUT/model" --expert oracle --data synth:easy:256:1:256 --eval-data "$HELD_OUT" \
    --eval-n 16 --out "$OUT/sft" --steps 200 --batch-size 8 --lr 2e-3 --eval-every 50 --seed 0 --threads 1

# A second SFT stage from the first one's weights (same cached expert episodes, fresh warm-up and decay).
# This run was stopped after its step-100 evaluation; step_00100 does not depend on where it is stopped.
$SEGLOOP train sft --model "$OUT/sft/final" --expert oracle --data synth:easy:256:1:256 \
    --cache "$OUT/sft/expert_cache" --eval-data "$HELD_OUT" --eval-n 16 --out "$OUT/sft2" --steps 200 \
    --batch-size 8 --lr 2e-3 --eval-every 50 --seed 1 --threads 1

# A third stage on a pool of fresh expert episodes (256 at a time, 32 new every 25 steps), two threads.
$SEGLOOP train sft --model "$OUT/sft2/step_00100" --expert oracle --data synth:easy:256:1:1000000 \
    --pool-size 256 --refresh-every 25 --refresh-size 32 --eval-data "$HELD_OUT" --eval-n 16 --out "$OUT/sft3" \
    --steps 800 --batch-size 8 --lr 2e-3 --eval-every 200 --seed 2 --threads 2

# A fourth stage on a noisy expert (box_jitter 0.4: its first masks are often poor or empty, and it re-prompts), so
# the student also sees the observations its own missed boxes produce, and how to go on from them.
$SEGLOOP train sft --model "$OUT/sft3/final" --expert oracle --expert-options '{"box_jitter": 0.4}' \
    --data synth:easy:256:3:1000000 --pool-size 256 --refresh-every 25 --refresh-size 32 --eval-data "$HELD_OUT" \
    --eval-n 16 --out "$OUT/sft4" --steps 400 --batch-size 8 --lr 1e-3 --eval-every 200 --seed 3 --threads 2

# The grammar on the expert's own states, checkpoint by checkpoint (see the script's docstring).
for model in "$OUT/model" "$OUT"/sft/step_00{050,100,200} "$OUT/sft2/step_00100" "$OUT"/sft3/step_00{200,400,600,800} \
    "$OUT/sft4/final"; do
    .venv/bin/python scripts/probe_lm_grammar.py --model "$model" --data "$HELD_OUT"
done

$SEGLOOP train grpo --model "$OUT/sft4/final" --data synth:easy:256:2:100000 --eval-data "$HELD_OUT" --eval-n 16 \
    --out "$OUT/grpo" --steps 12 --prompts-per-step 2 --group-size 4 --lr 1e-4 --kl-coef 0.01 \
    --eval-every 6 --save-every 6 --seed 0 --threads 1

# Rollout batching, side by side: a group's turns generated as one batch vs one sequence at a time.
.venv/bin/python scripts/bench_rollout_batching.py --group 8
.venv/bin/python scripts/bench_rollout_batching.py --group 8 --model "$OUT/sft3/final"

# The stopped second stage wrote no PNG of its own: draw it from its CSV.
.venv/bin/python -c "
from rl.curves import CurveLog, plot_curves
plot_curves(CurveLog('$OUT/sft2/sft_log.csv').rows(), ['loss', 'eval_valid_rate', 'eval_giou', 'eval_zoom_rate'],
            '$OUT/sft2/sft_curves.png', 'SFT, second stage')"
