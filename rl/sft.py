"""``segloop train sft``: supervised warm start of any learnable policy from expert trajectories.

The expert's episodes run through the same ``Agent`` graph and tools as every other episode; the
student rides along (``ExpertForcing``): each turn it builds its own inputs and records the expert's
action as its decision. The loss is the negative log-probability of those decisions only (masked mean
over decision positions). Expert records are cached on disk, keyed by data, expert, student config and
episode settings. Held-out greedy episodes are scored every ``eval_every`` steps; logs go to
``sft_log.csv`` and ``sft_curves.png``, checkpoints to ``step_XXXXX/`` and ``final/``.
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
                           cache_dir: Path | None = None, prefix: str = "expert") -> tuple[list, dict[str, float]]:
    """The student's records of the expert's episodes over ``items`` (and the expert's mean IoU)."""
    import torch
    from agent.episode import Agent

    from rl.learnable import ExpertForcing
    from rl.rollout import run_episodes, tool_rates
    from tools.masks import iou

    if cache_dir is not None and (cache_dir / "records.pt").is_file():
        saved = torch.load(cache_dir / "records.pt", weights_only=False)
        return saved["records"], saved["stats"]
    agent = Agent(ExpertForcing(expert, student), segmenter, config=episode_config)
    results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)]))
    records = [student.decisions(r.trajectory) for r in results]
    stats = {"expert_giou": sum(iou(r.mask, it.mask, it.ignore) for r, it in zip(results, items, strict=True))
             / max(len(items), 1), **tool_rates([r.trajectory for r in results])}
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"records": records, "stats": stats}, cache_dir / "records.pt")
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


def build_expert(name: str, student: Any) -> Any:
    from policies import build_policy

    return build_policy(name, max_side=student.max_side)


def train(config: SFTConfig) -> dict[str, Any]:
    import torch
    from agent.episode import EpisodeConfig

    from agent.datasets import load_samples
    from rl.curves import CurveLog, plot_curves
    from rl.rollout import evaluate, load_items, peak_memory_mb
    from tools.segmenters import build_segmenter

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "sft_config.json").write_text(config.model_dump_json(indent=1))
    train_items = load_items(load_samples(config.data))
    eval_items = load_items(load_samples(config.eval_data)[: config.eval_n]) if config.eval_data else []
    student = build_student(config, [it.sample.query for it in train_items])
    expert = build_expert(config.expert, student)
    segmenter = build_segmenter(config.segmenter)
    episode_config = EpisodeConfig(max_turns=config.max_turns)

    cache = config.cache or config.out / "expert_cache"
    started = time.perf_counter()
    records, stats = collect_expert_records(student, expert, segmenter, train_items, episode_config,
                                            cache / _cache_key(config, student, len(train_items)))
    records = [r for r in records if r]
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
                               "decisions_per_s": None if rate is None else round(rate, 1),
                               "peak_mem_mb": round(peak_memory_mb(), 1)}
        if eval_items:
            student.train(False)
            result = evaluate(student, segmenter, eval_items, episode_config, prefix=f"sft-eval-{step}")
            student.train(True)
            row.update(eval_giou=round(result["giou"], 4), eval_ciou=round(result["ciou"], 4),
                       eval_zoom_rate=result["zoom_rate"], eval_turns=result["turns"])
            summary["eval"] = result
            print(f"step {step}: held-out gIoU {result['giou']:.3f} cIoU {result['ciou']:.3f}", file=sys.stderr)
        log.write(row)

    evaluate_now(0, None)
    student.train(True)
    tic, decisions = time.perf_counter(), 0
    for step in range(1, config.steps + 1):
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
    plot_curves(log.rows(), ["loss", "eval_giou", "eval_ciou", "eval_zoom_rate"], config.out / "sft_curves.png",
                "SFT")
    (config.out / "sft_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="training samples (manifest or reader spec)")
    parser.add_argument("--eval-data", help="held-out samples scored every --eval-every steps")
    parser.add_argument("--expert", default="oracle", help="scripted expert policy (default oracle)")
    parser.add_argument("--model", type=Path, help="learnable policy directory to start from")
    parser.add_argument("--init", choices=("compact",), help="start from a fresh compact policy instead")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--segmenter", default="grabcut")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-n", type=int, default=50)
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="expert-record cache directory (default OUT/expert_cache)")


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        config = SFTConfig(data=args.data, eval_data=args.eval_data, expert=args.expert, model=args.model,
                           init=args.init, out=args.out, segmenter=args.segmenter, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every, eval_n=args.eval_n,
                           max_turns=args.max_turns, seed=args.seed, threads=args.threads, cache=args.cache)
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
