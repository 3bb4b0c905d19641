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

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

    from segloop.agent.episode import Agent
    from segloop.agent.policy import Policy, PolicyContext, PolicyTurn
    from segloop.policies.learnable import LearnablePolicy


class SFTConfig(BaseModel):
    """Every setting of an SFT run."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="training samples: a manifest, a reader spec or synth:DIFFICULTY:SIZE:SEED:N[:RATE]")
    eval_data: str | None = Field(None, description="held-out samples scored every --eval-every steps")
    out: Path = Field(description="output directory (logs, curves, checkpoints)")
    model: Path | None = Field(None, description="a learnable policy directory to start from")
    init: Literal["compact"] | None = Field(None, description="start from a fresh compact policy instead "
                                                              "(vocabulary from --data)")
    expert: str = Field("oracle", description="the scripted expert whose turns are imitated")
    segmenter: str = Field("grabcut", description="segmenter of the expert's episodes")
    steps: int = Field(600, ge=0, description="optimiser steps")
    batch_size: int = Field(16, ge=1, description="expert episodes per step")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (20-step warm-up, linear decay to 10%)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient norm clip")
    eval_every: int = Field(200, ge=1, description="steps between held-out evaluations and checkpoints")
    eval_n: int = Field(50, ge=1, description="held-out samples per evaluation")
    max_turns: int = Field(8, ge=1, description="turn budget of an episode")
    seed: int = Field(0, description="seed of initialisation, sampling and batches")
    threads: int = Field(1, ge=1, description="torch CPU threads")
    cache: Path | None = Field(None, description="expert-record cache directory (default OUT/expert_cache)")
    pool_size: int = Field(0, ge=0, description="expert episodes trained on at a time; 0: all of --data, once")
    refresh_every: int = Field(25, ge=1, description="with a pool: steps between refreshes")
    refresh_size: int = Field(32, ge=1, description="with a pool: new expert episodes per refresh")
    expert_options: dict[str, Any] = Field(default_factory=dict,
                                           description='JSON options of the expert, e.g. {"box_jitter": 0.05}')
    compact_options: dict[str, Any] = Field(default_factory=dict,
                                            description='JSON CompactConfig fields for --init compact, '
                                                        'e.g. {"input_size": 128}')


class ExpertForcing:
    """A ``Policy`` for the graph that takes the expert's action and records it as the student's.

    The episode runs exactly as the expert would run it (same tools, same observations); the student
    sees each turn's context and records the expert's text as its decision, so the trajectory's ledger
    is the student's record of the expert's episode: what SFT maximises the log-probability of.
    """

    def __init__(self, expert: Policy, student: LearnablePolicy) -> None:
        if expert.frame != student.frame or expert.max_side != student.max_side:
            raise ValueError(
                f"expert ({expert.frame}, {expert.max_side}px) and student ({student.frame}, "
                f"{student.max_side}px) must see the same views and write in the same frame"
            )
        self.expert = expert
        self.student = student
        self.name = f"{expert.name}->{student.name}"
        self.frame = student.frame
        self.max_side = student.max_side

    async def act(self, context: PolicyContext) -> PolicyTurn:
        expert_turn = await self.expert.act(context)
        return await self.student.imitate(context, expert_turn.text)

    def end_episode(self, episode_id: str) -> Any:
        self.expert.end_episode(episode_id)
        return self.student.end_episode(episode_id)


def _cache_key(config: SFTConfig, student: LearnablePolicy, n_items: int) -> str:
    data = Path(config.data)
    stamp = data.stat().st_mtime_ns if data.is_file() else 0
    student_config = getattr(student, "config", None)
    described = student_config.model_dump_json() if hasattr(student_config, "model_dump_json") else repr(student_config)
    text = json.dumps([config.data, stamp, n_items, config.expert, config.segmenter, config.max_turns,
                       student.name, student.max_side, described])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def collect_expert_records(agent: Agent, items: list, prefix: str = "expert") -> tuple[list, dict[str, float]]:
    """The student's records of the expert's episodes over ``items`` (``agent`` runs an ``ExpertForcing``
    policy), and the expert's mean IoU and tool use."""
    from segloop.agent.stats import episode_stats
    from segloop.rl.rollout import run_episodes
    from segloop.tools.masks import iou

    results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)]))
    records = [r.trajectory.ledger for r in results]
    tool_use = episode_stats([r.trajectory for r in results])
    stats = {"expert_giou": sum(iou(r.mask, it.mask, it.ignore) for r, it in zip(results, items, strict=True))
             / max(len(items), 1), **{k: v for k, v in tool_use.items() if isinstance(v, float)}}
    return records, stats


def sft_loss(policy: LearnablePolicy, records: list) -> torch.Tensor:
    """Negative mean log-prob of the recorded decisions."""
    from segloop.policies.learnable import masked_mean

    scored = policy.log_probs(records)
    return -masked_mean(scored.log_probs, scored.mask)


def build_student(config: SFTConfig, train_queries: list[str]) -> LearnablePolicy:
    from segloop.policies.learnable import load_learnable

    if config.model is not None and config.init is not None:
        raise ValueError("give either --model (a checkpoint) or --init (a fresh policy), not both")
    if config.model is not None:
        options = {"seed": config.seed} if _is_compact(config.model) else {}
        return load_learnable(config.model, **options)
    if config.init == "compact":
        from segloop.policies.compact import CompactPolicy

        return CompactPolicy.create(train_queries, seed=config.seed, **config.compact_options)
    raise ValueError("give --model DIR or --init compact")


def _is_compact(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("segloop_policy") == "compact"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def build_expert(name: str, student: LearnablePolicy, options: dict[str, Any]) -> Policy:
    from segloop.policies import build_policy

    return build_policy(name, max_side=student.max_side, **options)


def train(config: SFTConfig) -> dict[str, Any]:
    import torch

    from segloop.agent.episode import EpisodeConfig
    from segloop.policies import AgentSpec, build_agent
    from segloop.rl.curves import CurveLog, plot_curves
    from segloop.rl.rollout import SynthItems, evaluate, first_items, items, peak_memory_mb

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "sft_config.json").write_text(config.model_dump_json(indent=1))
    data = items(config.data)
    eval_items = first_items(config.eval_data, config.eval_n) if config.eval_data else []
    if isinstance(data, SynthItems):
        from segloop.agent.synth import VOCABULARY

        queries = list(VOCABULARY)  # the grammar's words, without generating every scene
    else:
        queries = [it.sample.query for it in data]
    student = build_student(config, queries)
    expert = build_expert(config.expert, student, config.expert_options)
    spec = AgentSpec(segmenter=config.segmenter, episode=EpisodeConfig(max_turns=config.max_turns, seed=config.seed))
    expert_agent = build_agent(spec, policy=ExpertForcing(expert, student))
    student_agent = build_agent(spec, policy=student, segmenter=expert_agent.segmenter)

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
            part, part_stats = collect_expert_records(expert_agent, chunk, prefix=f"expert-{cursor + start}")
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
            result = evaluate(student_agent, eval_items, prefix=f"sft-eval-{step}")
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
