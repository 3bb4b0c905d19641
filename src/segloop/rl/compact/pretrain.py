"""``segloop train pretrain``: dense pre-training of the compact policy's perception on a perception cache.

Each step trains the root network on ``batch`` full views and the zoom network on ``batch`` zoomed views,
every object of every view a labelled example: objectness is a per-cell binary cross-entropy (the cell of
each object's centre is positive, ``objectness_weight`` weighs positives against the many empty cells),
and at each object's cell its shape, colour, fill and size class and its box's width and height bins are
cross-entropies (the bin is the smallest that holds the side: boxes must not cut into objects). Every view
is shown under a random symmetry of the square (labels mapped with it: perception is query-free, so nothing
else changes). Adam, linear warm-up, cosine decay to ``final_lr_share``.

Every ``eval_every`` steps the probes (``probe``) on a held-out cache say what perception gives the
decisions: objects found, attributes read (by object size), and the referent scores' ranking of the first
view (the target among the first one and three candidates, by kind of request) and their verdict on zoomed
views. Logs to ``pretrain_log.csv`` with CPU and wall time; ``final/`` is the policy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from segloop.policies.compact import CompactPolicy
from segloop.policies.compact.actions import size_bin
from segloop.policies.compact.perception import detect
from segloop.policies.compact.query import read_query
from segloop.policies.compact.reasoning import ATTRIBUTES, merge_view, referent_scores
from segloop.rl.compact.cache import LABEL_COLUMNS, PerceptionCache

if TYPE_CHECKING:
    from segloop.policies.compact.perception import PerceptionNet

COLUMN = {name: i for i, name in enumerate(LABEL_COLUMNS)}
# The figures each evaluation prints and the curves draw.
FIGURES = ("loss_root", "loss_zoom", "recall", "top1", "top3", "judge_attribute_target", "judge_attribute_lookalike")


class PretrainConfig(BaseModel):
    """Every setting of a pre-training run."""

    model_config = ConfigDict(extra="forbid")

    cache: Path = Field(description="a perception cache (segloop train cache)")
    eval_cache: Path | None = Field(None, description="a held-out perception cache for the probes")
    out: Path = Field(description="output directory (pretrain_log.csv, curves, last/, final/)")
    model: Path | None = Field(None, description="a compact policy directory to continue from")
    compact_options: dict[str, Any] = Field(default_factory=dict, description="JSON CompactConfig fields of a fresh "
                                                                              "policy")
    steps: int = Field(6000, ge=1, description="optimiser steps (each trains both networks)")
    batch: int = Field(32, ge=1, description="views per network per step")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate after warm-up")
    final_lr_share: float = Field(0.05, ge=0, le=1, description="the cosine decay ends at this share of --lr")
    warmup: int = Field(100, ge=0, description="steps of linear warm-up")
    weight_decay: float = Field(1e-4, ge=0, description="Adam weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient norm clip, per network")
    objectness_weight: float = Field(4.0, gt=0, description="weight of an object's cell against empty ones")
    eval_every: int = Field(1000, ge=1, description="steps between probes and checkpoints (last/)")
    eval_n: int = Field(400, ge=1, description="held-out scenes probed per evaluation")
    seed: int = Field(0, description="seed of initialisation, batches and symmetries")
    threads: int = Field(1, ge=1, description="torch CPU threads")


def symmetric(images: torch.Tensor, labels: list[np.ndarray], k: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Views and their label rows under symmetry ``k`` of the square (bit 0 flips x, bit 1 flips y, bit 2
    transposes, applied in that order)."""
    labels = [rows.copy() for rows in labels]
    cx, cy, w, h = COLUMN["cx"], COLUMN["cy"], COLUMN["width"], COLUMN["height"]
    if k & 1:
        images = images.flip(-1)
        for rows in labels:
            rows[:, cx] = 1 - rows[:, cx] - 1e-6
    if k & 2:
        images = images.flip(-2)
        for rows in labels:
            rows[:, cy] = 1 - rows[:, cy] - 1e-6
    if k & 4:
        images = images.transpose(-1, -2)
        for rows in labels:
            rows[:, [cx, cy, w, h]] = rows[:, [cy, cx, h, w]]
    return images.contiguous(), labels


def perception_loss(out: dict[str, torch.Tensor], labels: list[np.ndarray], grid: int, shares: np.ndarray,
                    objectness_weight: float) -> torch.Tensor:
    """The dense loss of a batch of views (see the module docstring)."""
    n = len(labels)
    objectness = torch.zeros(n, grid * grid)
    rows, views, cells = [], [], []
    for view, view_rows in enumerate(labels):
        for row in view_rows:
            cell = (min(int(row[COLUMN["cy"]] * grid), grid - 1) * grid
                    + min(int(row[COLUMN["cx"]] * grid), grid - 1))
            objectness[view, cell] = 1.0
            rows.append(row)
            views.append(view)
            cells.append(cell)
    loss = F.binary_cross_entropy_with_logits(out["objectness"], objectness,
                                              pos_weight=torch.tensor(objectness_weight))
    if not rows:
        return loss
    table = np.stack(rows)
    view_index, cell_index = torch.tensor(views), torch.tensor(cells)
    for name in ATTRIBUTES:
        target = torch.from_numpy(table[:, COLUMN[name]].astype(np.int64))
        loss = loss + F.cross_entropy(out[name][view_index, :, cell_index], target)
    for name in ("width", "height"):
        target = torch.tensor([size_bin(float(s), shares) for s in table[:, COLUMN[name]]])
        loss = loss + 0.5 * F.cross_entropy(out[name][view_index, :, cell_index], target)
    return loss


def _size_class(width_share_of_image: float) -> str:
    """The object's size as the first view shows it (share of the image's side)."""
    return "xxs" if width_share_of_image < 0.02 else "xs" if width_share_of_image < 0.045 else "s+"


def probe(policy: CompactPolicy, cache: PerceptionCache, n: int) -> dict[str, float]:
    """What perception gives the decisions, on the first ``n`` scenes of a held-out cache (module docstring):
    ``recall`` (objects of the full view with a detection within a cell), ``<attribute>_<size>`` (read at
    the object's cell, by its size in the full view), ``top1_<kind>`` / ``top3_<kind>`` (the target among
    the full view's best-scored one and three objects) and ``judge_<kind>_<target|lookalike>`` (a zoomed view:
    its central object's referent score is the highest of the belief's, or not)."""
    policy.train(False)
    grid, shares = policy.config.grid, torch.from_numpy(policy.shares).float()
    scenes = cache.scenes[:n]
    tallies: dict[str, list[float]] = {}

    def add(key: str, value: bool) -> None:
        tallies.setdefault(key, []).append(float(value))

    def maps_of(kind: str, rows: list[int]) -> dict[str, torch.Tensor]:
        net: PerceptionNet = policy.perception(0 if kind == "root" else 1)
        with torch.no_grad():
            return net(torch.from_numpy(np.stack([cache.images[kind][r] for r in rows])),
                       torch.from_numpy(cache.magnification[kind][rows]))

    for start in range(0, len(scenes), 64):
        chunk = scenes[start: start + 64]
        root = maps_of("root", [s["root_row"] for s in chunk])
        zoom_rows = [z["row"] for s in chunk for z in s["zooms"]]
        zoom = maps_of("zoom", zoom_rows) if zoom_rows else {}
        zoom_at = {row: i for i, row in enumerate(zoom_rows)}
        for j, scene in enumerate(chunk):
            size = scene["width"]  # the world's scenes are square
            box = (0, 0, scene["width"], scene["height"])
            maps = {k: v[j] for k, v in root.items()}
            seen = detect(maps, box, shares, policy.config.detect_threshold, policy.config.max_objects)
            found_cells = {(min(int(x / size * grid), grid - 1), min(int(y / size * grid), grid - 1))
                           for x, y in zip(seen.x, seen.y, strict=True)}
            for row in cache.labels["root"][scene["root_row"]]:
                cx, cy = min(int(row[COLUMN["cx"]] * grid), grid - 1), min(int(row[COLUMN["cy"]] * grid), grid - 1)
                add("recall", any(abs(cx - fx) <= 1 and abs(cy - fy) <= 1 for fx, fy in found_cells))
                cell = cy * grid + cx
                size_class = _size_class(float(row[COLUMN["width"]]))
                for name in ATTRIBUTES:
                    add(f"{name}_{size_class}", int(maps[name][:, cell].argmax()) == int(row[COLUMN[name]]))
            slots = read_query(scene["query"])
            scores = referent_scores(seen, slots)
            kind = scene["kind"]
            if scene["has_target"]:
                target = scene["objects"][0]
                tx, ty = target["cx"] / size * grid, target["cy"] / size * grid
                order = np.argsort(-scores)[:3]
                hits = [abs(seen.x[i] / size * grid - tx) <= 1.5 and abs(seen.y[i] / size * grid - ty) <= 1.5
                        for i in order]
                add(f"top1_{kind}", bool(hits[:1]) and hits[0])
                add(f"top3_{kind}", any(hits))
            for zoom_view in scene["zooms"]:
                if zoom_view["name"] == "random":
                    continue
                zmaps = {k: v[zoom_at[zoom_view["row"]]] for k, v in zoom.items()}
                zbox = tuple(zoom_view["box"])
                belief = merge_view(seen, detect(zmaps, zbox, shares, policy.config.detect_threshold,
                                                 policy.config.max_objects), zbox)
                named = scene["objects"][zoom_view["object"]]
                if not len(belief):
                    continue
                nearest = int(np.argmin(np.hypot(belief.x - named["cx"], belief.y - named["cy"])))
                zoom_scores = referent_scores(belief, slots)
                is_referent = bool(scene["has_target"] and zoom_view["object"] == 0)
                says = bool(zoom_scores[nearest] >= zoom_scores.max() and zoom_scores[nearest] > 0.05)
                add(f"judge_{kind}_{'target' if zoom_view['name'] == 'target' else 'lookalike'}", says == is_referent)
    result = {k: round(sum(v) / len(v), 4) for k, v in sorted(tallies.items())}
    for prefix in ("top1", "top3"):
        values = [v for k, vs in tallies.items() if k.startswith(prefix) for v in vs]
        if values:
            result[prefix] = round(sum(values) / len(values), 4)
    policy.train(True)
    return result


def train(config: PretrainConfig) -> dict[str, Any]:
    from segloop.rl.scaffold import TrainingRun

    run = TrainingRun("pretrain", config, config.out, steps=config.steps, seed=config.seed, threads=config.threads)
    if config.model is not None:
        policy = CompactPolicy.from_pretrained(config.model, greedy=False, seed=config.seed)
    else:
        policy = CompactPolicy.create(seed=config.seed, **config.compact_options)
    cache = PerceptionCache(config.cache)
    cache.check(policy.config)
    held_out = None
    if config.eval_cache is not None:
        held_out = PerceptionCache(config.eval_cache)
        held_out.check(policy.config)
    networks = {kind: policy.perception(depth) for kind, depth in (("root", 0), ("zoom", 1))}
    params = [p for net in networks.values() for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    def lr_share(step: int) -> float:
        warm = min(1.0, (step + 1) / max(config.warmup, 1))
        cosine = 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
        return warm * (config.final_lr_share + (1 - config.final_lr_share) * cosine)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_share)
    rng = np.random.default_rng(config.seed)
    summary: dict[str, Any] = {"root_views": len(cache.images["root"]), "zoom_views": len(cache.images["zoom"])}
    losses: dict[str, list[float]] = {"root": [], "zoom": []}
    tic = time.process_time()

    def evaluate(step: int) -> None:
        nonlocal tic
        spent = time.process_time() - tic
        row: dict[str, Any] = {
            "step": step, "lr": schedule.get_last_lr()[0],
            **{f"loss_{k}": float(np.mean(v)) if v else None for k, v in losses.items()},
            "views_per_cpu_s": config.eval_every * 2 * config.batch / spent if step else None}
        if held_out is not None:
            row.update(probe(policy, held_out, config.eval_n))
        summary["last"] = run.write(row)
        run.progress(step, {k: row.get(k) for k in FIGURES}, force=True)
        for values in losses.values():
            values.clear()
        tic = time.process_time()

    evaluate(0)
    policy.train(True)
    for step in range(1, config.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for kind, net in networks.items():
            rows = np.sort(rng.choice(len(cache.images[kind]), config.batch, replace=False))
            images, labels = symmetric(torch.from_numpy(np.stack([cache.images[kind][r] for r in rows])),
                                       [cache.labels[kind][r] for r in rows], int(rng.integers(8)))
            scale = torch.from_numpy(cache.magnification[kind][rows])
            loss = perception_loss(net(images, scale), labels, policy.config.grid, policy.shares,
                                   config.objectness_weight)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(net.parameters()), config.max_grad_norm)
            losses[kind].append(loss.item())
        optimizer.step()
        schedule.step()
        if step % config.eval_every == 0 or step == config.steps:
            evaluate(step)
            policy.save_pretrained(config.out / "last")
        else:
            run.progress(step, {f"loss_{k}": v[-1] for k, v in losses.items()})
    summary["final"] = run.save_final(policy, config.steps)
    return run.finish(summary, FIGURES, "dense pre-training of perception",
                      f"model in {config.out / 'final'} (the last step, {config.steps})")
