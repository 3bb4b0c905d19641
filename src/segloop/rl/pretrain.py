"""``segloop train pretrain``: dense pre-training of the compact policy on a render cache.

Each step scores ``root_batch`` cached full-view states and ``zoomed_batch`` zoomed-view states, all
expert-labelled (``rl.render_cache``), with the policy's own ``log_probs`` (so the symmetry augmentation
and the legal-action masks are the ones SFT and GRPO use; each stage's rows go to that stage's network)
and minimises the weighted negative log-probability of the labels: every state is one decision, and they
are the decisions the reward hangs on (where the first zoom goes, where the next one goes after a miss,
segment or leave a zoomed view). ``part_weights`` weigh the centre cell above the tool and the size bins
(measured: with uniform weights the first-view hit stalled). Adam, linear warm-up, cosine decay to
``final_lr_share``; each network's gradient is clipped on its own.

Every ``eval_every`` steps, greedy decisions on a held-out cache give the go/no-go figures (see
``probe``): first-view zoom hit and top-3 peaks, the hit after a miss, zoomed-view tool accuracy,
"no such object" accuracy. Logs to ``pretrain_log.csv`` with CPU and wall time; ``final/`` is the policy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class PretrainConfig(BaseModel):
    """Every setting of a pre-training run."""

    model_config = ConfigDict(extra="forbid")

    cache: Path = Field(description="a render cache (segloop train cache)")
    eval_cache: Path | None = Field(None, description="a held-out render cache for the go/no-go probes")
    out: Path = Field(description="output directory (pretrain_log.csv, curves, last/, final/)")
    model: Path | None = Field(None, description="a compact policy directory to continue from")
    compact_options: dict[str, Any] = Field(default_factory=dict, description="JSON CompactConfig fields of a fresh "
                                                                              "policy")
    steps: int = Field(4000, ge=1, description="optimiser steps")
    root_batch: int = Field(32, ge=0, description="full-view states per step (the root network)")
    zoomed_batch: int = Field(32, ge=0, description="zoomed-view states per step (the zoomed network)")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate after warm-up")
    final_lr_share: float = Field(0.05, ge=0, le=1, description="the cosine decay ends at this share of --lr")
    warmup: int = Field(100, ge=0, description="steps of linear warm-up")
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient norm clip, per network")
    eval_every: int = Field(500, ge=1, description="steps between probes and checkpoints (last/)")
    eval_n: int = Field(2000, ge=1, description="held-out states probed per evaluation")
    part_weights: list[float] = Field(default_factory=lambda: [1.0, 2.0, 0.5, 0.5, 0.5, 0.5],
                                      description="loss weight of tool, centre, width, height, use_point, point")
    seed: int = Field(0, description="seed of initialisation, batches and symmetries")
    threads: int = Field(1, ge=1, description="torch CPU threads")


def _zoom_holds(policy: Any, parts: Any, view: Any, target: np.ndarray, image_size: tuple[int, int]) -> bool:
    """Whether the zoom these parts write, executed by the graph's view code, holds the whole target and
    magnifies (its side at most 0.6 of the view's: a "zoom" onto the whole view holds everything)."""
    from segloop.agent.parser import parse_turn
    from segloop.tools.views import ViewError, zoom_in

    action = parse_turn(policy.call_text(parts, view)).action
    try:
        zoomed = zoom_in(view, action.bbox_2d, *image_size, policy.max_side)
    except ViewError:
        return False
    b = zoomed.box
    magnifies = max(b.width, b.height) <= 0.6 * max(view.box.width, view.box.height)
    return magnifies and b.x1 <= target[0] and b.y1 <= target[1] and b.x2 >= target[2] and b.y2 >= target[3]


def probe(policy: Any, cache: Any, n: int, image_size: tuple[int, int] = (768, 768)) -> dict[str, float]:
    """Greedy decisions on the first ``n`` states of a held-out cache, by walk step:
    ``root_hit`` (a zoom that holds the target, or a segment where the expert segments too),
    ``root_top3`` (one of the three highest local peaks of the centre map, zoomed with the size read
    there, holds it), ``after_miss_hit`` (the same after one or two look-alikes were visited),
    ``target_view_acc`` / ``lookalike_view_acc`` / ``swapped_view_acc`` (the expert's tool in a zoomed
    view; swapped: the view under a query naming another object), ``no_target_acc``
    and ``false_no_target`` (first views), ``segment_box_iou`` (box written vs the expert's, target views)."""
    import torch
    import torch.nn.functional as F

    from segloop.policies.compact import TOOLS
    from segloop.policies.compact.policy import N_PARTS
    from segloop.rl.render_cache import STEPS
    from segloop.tools.views import PixelBox, View

    policy.train(False)
    rows = list(range(min(n, len(cache))))
    tallies: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        tallies.setdefault(key, []).append(float(value))

    segment, zoom_in, no_target = TOOLS.index("segment"), TOOLS.index("zoom_in"), TOOLS.index("submit_no_target")
    for start in range(0, len(rows), 128):
        chunk = rows[start : start + 128]
        records = [cache.record(i) for i in chunk]
        with torch.no_grad():
            out = policy.outputs(policy.stack([policy.augmented(r, 0)[0] for r in records]))
            chosen = torch.stack([policy.choose(out, j, policy.generator, True) for j in range(len(chunk))])
        for j, i in enumerate(chunk):
            tags, label = cache.arrays["tags"][i], records[j].parts
            step = STEPS[int(tags[1])]
            v = cache.arrays["view"][i]
            view = View(PixelBox(*(int(x) for x in v[:4])), int(v[4]), int(v[5]))
            target = cache.arrays["target"][i]
            tool, expert = int(chosen[j, 0]), int(label[0])
            if step in ("root", "root_after_miss"):
                if target[0] < 0:
                    add("no_target_acc", tool == no_target)
                    continue
                add("false_no_target", tool == no_target)
                if expert != zoom_in:
                    hit = tool == expert
                else:
                    hit = tool == zoom_in and _zoom_holds(policy, chosen[j], view, target, image_size)
                add("root_hit" if step == "root" else "after_miss_hit", hit)
                if step == "root" and expert == zoom_in:
                    grid = policy.config.grid
                    heat = out["centre"][j].view(1, 1, grid, grid)
                    peaks = (heat == F.max_pool2d(heat, 3, 1, 1)).view(-1)
                    scores = torch.where(peaks, out["centre"][j], torch.full_like(out["centre"][j], -1e9))
                    found = False
                    for cell in scores.topk(3).indices.tolist():
                        parts = torch.full((N_PARTS,), -1, dtype=torch.long)
                        parts[0], parts[1] = zoom_in, cell
                        parts[2] = int(out["width"][j, :, cell].argmax())
                        parts[3] = int(out["height"][j, :, cell].argmax())
                        found = found or _zoom_holds(policy, parts, view, target, image_size)
                    add("root_top3", found)
            elif step == "target_view":
                add("target_view_acc", tool == expert)
                if tool == segment and expert == segment:
                    add("segment_box_iou", _box_iou(policy, chosen[j], label, view))
            elif step == "lookalike_view":
                add("lookalike_view_acc", tool == expert)
            else:
                add("swapped_view_acc", tool == expert)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(tallies.items())}


def _box_iou(policy: Any, a: Any, b: Any, view: Any) -> float:
    from segloop.agent.parser import parse_turn

    boxes = [parse_turn(policy.call_text(p, view)).action.bbox_2d for p in (a, b)]
    ix = max(0.0, min(boxes[0][2], boxes[1][2]) - max(boxes[0][0], boxes[1][0]))
    iy = max(0.0, min(boxes[0][3], boxes[1][3]) - max(boxes[0][1], boxes[1][1]))
    area = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    return ix * iy / (area[0] + area[1] - ix * iy)


def weighted_loss(policy: Any, records: list, weights: Any) -> Any:
    """Negative log-likelihood of the recorded parts, each part weighted (positions are turns x parts)."""
    scored = policy.log_probs(records)
    per_part = weights.repeat(scored.mask.shape[1] // len(weights))[None, :] * scored.mask
    return -(scored.log_probs * per_part).sum() / per_part.sum().clamp_min(1e-6)


def _sampler(cache: Any, config: PretrainConfig, rng: np.random.Generator) -> Any:
    """Draws ``root_batch`` full-view and ``zoomed_batch`` zoomed-view state indices per step."""
    from segloop.rl.render_cache import STEPS

    steps = np.asarray(cache.arrays["tags"][:, 1])
    roots = np.flatnonzero((steps == STEPS.index("root")) | (steps == STEPS.index("root_after_miss")))
    views = np.setdiff1d(np.arange(len(cache)), roots)
    if (config.root_batch and not len(roots)) or (config.zoomed_batch and not len(views)):
        raise ValueError(f"{cache.directory}: no states for one of the two networks")

    def draw() -> np.ndarray:
        return np.concatenate([rng.choice(roots, config.root_batch), rng.choice(views, config.zoomed_batch)])

    return draw


def train(config: PretrainConfig) -> dict[str, Any]:
    import torch

    from segloop.data.synth import VOCABULARY
    from segloop.policies.compact import CompactPolicy
    from segloop.policies.compact.policy import STAGES
    from segloop.rl.render_cache import RenderCache
    from segloop.rl.scaffold import TrainingRun

    run = TrainingRun("pretrain", config, config.out, steps=config.steps, seed=config.seed, threads=config.threads)
    if config.model is not None:
        policy = CompactPolicy.from_pretrained(config.model, greedy=False, seed=config.seed)
    else:
        policy = CompactPolicy.create(list(VOCABULARY), seed=config.seed, **config.compact_options)
    cache = RenderCache(config.cache)
    cache.check(policy.config)
    held_out = None
    if config.eval_cache is not None:
        held_out = RenderCache(config.eval_cache)
        held_out.check(policy.config)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr_share(step: int) -> float:
        warm = min(1.0, (step + 1) / max(config.warmup, 1))
        cosine = 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
        return warm * (config.final_lr_share + (1 - config.final_lr_share) * cosine)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_share)
    rng = np.random.default_rng(config.seed)
    draw = _sampler(cache, config, rng)
    weights = torch.tensor(config.part_weights)
    if len(weights) != 6:
        raise ValueError("part_weights needs one weight per part: tool, centre, width, height, use_point, point")
    summary: dict[str, Any] = {"cache_states": len(cache)}
    columns = ["step", "loss", "lr", "samples_per_cpu_s", "root_hit",
               "root_top3", "after_miss_hit", "target_view_acc", "lookalike_view_acc", "swapped_view_acc",
               "segment_box_iou", "no_target_acc", "false_no_target"]
    losses: list[float] = []
    batch_size = config.root_batch + config.zoomed_batch
    tic = time.process_time()

    def evaluate(step: int) -> None:
        nonlocal tic
        row = dict.fromkeys(columns)
        spent = time.process_time() - tic
        row.update(step=step, loss=float(np.mean(losses)) if losses else None, lr=schedule.get_last_lr()[0],
                   samples_per_cpu_s=config.eval_every * batch_size / spent if step else None)
        if held_out is not None:
            row.update(probe(policy, held_out, config.eval_n))
            policy.train(True)
        summary["last"] = run.write(row)
        run.progress(step, {k: v for k, v in row.items() if k != "step"}, force=True)
        losses.clear()
        tic = time.process_time()

    evaluate(0)
    policy.train(True)
    for step in range(1, config.steps + 1):
        batch = [[cache.record(int(i))] for i in draw()]
        loss = weighted_loss(policy, batch, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for stage in STAGES:
            torch.nn.utils.clip_grad_norm_(list(policy.parameters((stage,))), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            evaluate(step)
            policy.save_pretrained(config.out / "last")
        else:
            run.progress(step, {"loss": loss.item()})
    summary["final"] = run.save_final(policy, config.steps)
    return run.finish(summary, ["loss", "root_hit", "root_top3", "after_miss_hit", "target_view_acc",
                                "lookalike_view_acc"], "dense pre-training",
                      f"model in {config.out / 'final'} (the last step, {config.steps})")
