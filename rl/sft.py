"""``segloop train sft``: supervised warm start of any learnable policy from expert trajectories.

The expert's episodes run through the same ``Agent`` graph and tools as every other episode; the
student rides along (``ExpertForcing``): each turn it builds its own inputs and records the expert's
action as its decision. The loss is the negative log-probability of those decisions only (masked mean
over decision positions).

Data. With ``pool_size`` 0 the expert runs once over all of ``--data`` and its records are cached on
disk, keyed by data, expert, student config and episode settings. With a pool (for unbounded data such
as ``synth:...`` specs, see ``rl.rollout``) training draws from the ``pool_size`` most recent expert
episodes, and every ``refresh_every`` steps ``refresh_size`` new ones (the next items of ``--data``,
wrapping around) replace the oldest: fresh scenes instead of memorised ones, at a bounded memory.
Held-out greedy episodes are scored every ``eval_every`` steps; logs go to ``sft_log.csv`` and
``sft_curves.png``, checkpoints to ``step_XXXXX/`` and ``final/``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SFTConfig(BaseModel):
    """Every setting of an SFT run."""

    model_config = ConfigDict(extra="forbid")

    data: str
    eval_data: str | None = None
    out: Path
    model: Path | None = Field(None, description="a learnable policy directory to start from")
    init: str | None = Field(None, description="'compact': a fresh compact policy (vocabulary from --data)")
    expert: str = "oracle"
    segmenter: str = "grabcut"
    steps: int = Field(600, ge=0)
    batch_size: int = Field(16, ge=1, description="expert episodes per step")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(200, ge=1)
    eval_n: int = Field(50, ge=1)
    max_turns: int = Field(8, ge=1)
    seed: int = 0
    threads: int = Field(1, ge=1)
    cache: Path | None = None
    pool_size: int = Field(0, ge=0, description="expert episodes trained on at a time; 0: all of --data, once")
    refresh_every: int = Field(25, ge=1, description="with a pool: steps between refreshes")
    refresh_size: int = Field(32, ge=1, description="with a pool: new expert episodes per refresh")
    expert_options: dict[str, Any] = Field(default_factory=dict, description="e.g. the oracle's box_jitter")
    compact_options: dict[str, Any] = Field(default_factory=dict)


def _cache_key(config: SFTConfig, student: Any, n_items: int) -> str:
    data = Path(config.data)
    stamp = data.stat().st_mtime_ns if data.is_file() else 0
    student_config = getattr(student, "config", None)
    described = student_config.model_dump_json() if hasattr(student_config, "model_dump_json") else repr(student_config)
    text = json.dumps([config.data, stamp, n_items, config.expert, config.segmenter, config.max_turns,
                       student.name, student.max_side, described])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def collect_expert_records(student: Any, expert: Any, segmenter: Any, items: list, episode_config: Any,
                           prefix: str = "expert") -> tuple[list, dict[str, float]]:
    """The student's records of the expert's episodes over ``items`` (and the expert's mean IoU)."""
    from agent.episode import Agent
    from rl.learnable import ExpertForcing
    from rl.rollout import run_episodes, tool_rates
    from tools.masks import iou

    agent = Agent(ExpertForcing(expert, student), segmenter, config=episode_config)
    results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)]))
    records = [student.decisions(r.trajectory) for r in results]
    stats = {"expert_giou": sum(iou(r.mask, it.mask, it.ignore) for r, it in zip(results, items, strict=True))
             / max(len(items), 1), **tool_rates([r.trajectory for r in results])}
    return records, stats


def sft_loss(policy: Any, records: list) -> Any:
    """Negative mean log-prob of the recorded decisions."""
    from rl.learnable import masked_mean

    scored = policy.log_probs(records)
    return -masked_mean(scored.log_probs, scored.mask)


def build_student(config: SFTConfig, train_queries: list[str]) -> Any:
    from rl.learnable import load_learnable

    if config.model is not None and config.init is not None:
        raise ValueError("give either --model (a checkpoint) or --init (a fresh policy), not both")
    if config.model is not None:
        options = {"seed": config.seed} if _is_compact(config.model) else {}
        return load_learnable(config.model, **options)
    if config.init == "compact":
        from policies.compact import CompactPolicy

        return CompactPolicy.create(train_queries, seed=config.seed, **config.compact_options)
    raise ValueError("give --model DIR or --init compact")


def _is_compact(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("segloop_policy") == "compact"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def build_expert(name: str, student: Any, options: dict[str, Any]) -> Any:
    from policies import build_policy

    return build_policy(name, max_side=student.max_side, **options)


def train(config: SFTConfig) -> dict[str, Any]:
    import torch

    from agent.episode import EpisodeConfig
    from rl.curves import CurveLog, plot_curves
    from rl.rollout import SynthItems, evaluate, items, peak_memory_mb
    from tools.segmenters import build_segmenter

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "sft_config.json").write_text(config.model_dump_json(indent=1))
    data = items(config.data)
    eval_items = []
    if config.eval_data:
        held_out = items(config.eval_data)
        eval_items = [held_out[i] for i in range(min(config.eval_n, len(held_out)))]
    if isinstance(data, SynthItems):
        from agent.synth import VOCABULARY

        queries = list(VOCABULARY)  # the grammar's words, without generating every scene
    else:
        queries = [it.sample.query for it in data]
    student = build_student(config, queries)
    expert = build_expert(config.expert, student, config.expert_options)
    segmenter = build_segmenter(config.segmenter)
    episode_config = EpisodeConfig(max_turns=config.max_turns)

    cursor = 0

    def collect(n: int, cache_dir: Path | None = None) -> tuple[list, dict[str, float]]:
        """Expert records of the next ``n`` items, 64 episodes at a time (bounded image memory)."""
        nonlocal cursor
        if cache_dir is not None and (cache_dir / "records.pt").is_file():
            saved = torch.load(cache_dir / "records.pt", weights_only=False)
            return saved["records"], saved["stats"]
        found, weighted = [], {}
        for start in range(0, n, 64):
            chunk = [data[(cursor + i) % len(data)] for i in range(start, min(n, start + 64))]
            part, part_stats = collect_expert_records(student, expert, segmenter, chunk, episode_config,
                                                      prefix=f"expert-{cursor + start}")
            found += part
            for key, value in part_stats.items():
                weighted[key] = weighted.get(key, 0.0) + value * len(chunk) / n
        cursor += n
        found = [r for r in found if r]
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"records": found, "stats": weighted}, cache_dir / "records.pt")
        return found, weighted

    started = time.perf_counter()
    if config.pool_size:
        records, stats = collect(config.pool_size)
    else:
        cache = config.cache or config.out / "expert_cache"
        records, stats = collect(len(data), cache / _cache_key(config, student, len(data)))
    print(f"expert: {len(records)} episodes, gIoU {stats['expert_giou']:.3f}, "
          f"{time.perf_counter() - started:.0f}s", file=sys.stderr)
    if not records:
        raise ValueError("the expert produced no decisions to learn from")

    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / max(config.steps, 1)))
    log = CurveLog(config.out / "sft_log.csv")
    generator = torch.Generator().manual_seed(config.seed)
    summary: dict[str, Any] = {"expert": stats}

    def evaluate_now(step: int, loss: float | None, rate: float | None = None) -> None:
        row: dict[str, Any] = {"step": step, "loss": loss, "lr": schedule.get_last_lr()[0], "eval_giou": None,
                               "eval_ciou": None, "eval_zoom_rate": None, "eval_turns": None,
                               "eval_valid_rate": None, "eval_segment_rate": None, "eval_inspect_rate": None,
                               "eval_submit_rate": None, "eval_first_zoom_hit": None,
                               "decisions_per_s": None if rate is None else round(rate, 1),
                               "peak_mem_mb": round(peak_memory_mb(), 1)}
        if eval_items:
            student.train(False)
            result = evaluate(student, segmenter, eval_items, episode_config, prefix=f"sft-eval-{step}")
            student.train(True)
            row.update(eval_giou=round(result["giou"], 4), eval_ciou=round(result["ciou"], 4),
                       eval_zoom_rate=result["zoom_rate"], eval_turns=result["turns"],
                       eval_valid_rate=result["valid_rate"], eval_segment_rate=result["segment_rate"],
                       eval_inspect_rate=result["inspect_rate"], eval_submit_rate=result["submit_rate"],
                       eval_first_zoom_hit=result["first_zoom_hit"])
            summary["eval"] = result
            print(f"step {step}: held-out gIoU {result['giou']:.3f} cIoU {result['ciou']:.3f} "
                  f"first zoom holds target {result['first_zoom_hit']}", file=sys.stderr)
        log.write(row)

    evaluate_now(0, None)
    student.train(True)
    tic, decisions = time.perf_counter(), 0
    for step in range(1, config.steps + 1):
        if config.pool_size and step % config.refresh_every == 0:
            fresh, _ = collect(config.refresh_size)
            records = records[len(fresh):] + fresh
        index = torch.randint(len(records), (config.batch_size,), generator=generator).tolist()
        batch = [records[i] for i in index]
        loss = sft_loss(student, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        decisions += sum(len(r) for r in batch)
        if step % config.eval_every == 0 or step == config.steps:
            evaluate_now(step, round(loss.item(), 5), decisions / (time.perf_counter() - tic))
            student.save_pretrained(config.out / f"step_{step:05d}")
            tic, decisions = time.perf_counter(), 0
        elif step % 10 == 0:
            log.write({"step": step, "loss": round(loss.item(), 5), "lr": schedule.get_last_lr()[0]})
    student.save_pretrained(config.out / "final")
    plot_curves(log.rows(), ["loss", "eval_valid_rate", "eval_giou", "eval_ciou", "eval_zoom_rate"],
                config.out / "sft_curves.png", "SFT")
    (config.out / "sft_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fields = SFTConfig.model_fields
    parser.add_argument("--data", required=True, help="training samples (manifest, reader spec or synth:...)")
    parser.add_argument("--eval-data", help="held-out samples scored every --eval-every steps")
    parser.add_argument("--model", type=Path, help="learnable policy directory to start from")
    parser.add_argument("--init", choices=("compact",), help="start from a fresh compact policy instead")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--cache", type=Path, help="expert-record cache directory (default OUT/expert_cache)")
    for name in ("expert", "segmenter", "steps", "batch_size", "lr", "weight_decay", "eval_every", "eval_n",
                 "max_turns", "seed", "threads", "pool_size", "refresh_every", "refresh_size"):
        field = fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default,
                            help=field.description)
    parser.add_argument("--expert-options", type=json.loads, default={},
                        help='JSON options for the expert, e.g. \'{"box_jitter": 0.05}\'')
    parser.add_argument("--compact-options", type=json.loads, default={},
                        help='JSON CompactConfig fields for --init compact, e.g. \'{"input_size": 128}\'')


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        config = SFTConfig(**{name: getattr(args, name) for name in SFTConfig.model_fields if hasattr(args, name)})
        summary = train(config)
    except (ValidationError, ValueError, ImportError, OSError) as exc:
        print(f"segloop train sft: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    result = summary.get("eval")
    if result:
        print(f"held-out gIoU {result['giou']:.4f} cIoU {result['ciou']:.4f}; model in {args.out / 'final'}")
    else:
        print(f"model in {args.out / 'final'}")
    return 0
