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

DAgger (``--mode dagger``, needs a pool and a student that can ``act_and_imitate``): the episodes are
driven by the student being trained (``DAggerForcing``) and labelled by the expert in the states the
student reaches, so recovery states (a view without the target, after a zoom-out, a wrong candidate)
are in the data; an expert that knows the answer never visits them itself. Each refresh runs fresh
episodes with the current weights: the pool is always the recent students' states.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from segloop.data.specs import SPEC_HELP
from segloop.policies.registry import ScriptedPolicy

if TYPE_CHECKING:
    import torch

    from segloop.agent.episode import Agent
    from segloop.agent.policy import Policy, PolicyContext, PolicyTurn
    from segloop.policies.learnable import LearnablePolicy


class SFTConfig(BaseModel):
    """Every setting of an SFT run."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description=f"training samples: {SPEC_HELP}")
    eval_data: str | None = Field(None, description="held-out samples scored every --eval-every steps (a data "
                                                    "spec, as --data)")
    out: Path = Field(description="output directory (logs, curves, checkpoints)")
    model: Path | None = Field(None, description="a learnable policy directory to start from")
    init: Literal["compact"] | None = Field(None, description="start from a fresh compact policy instead")
    expert: ScriptedPolicy = Field("oracle", description="the scripted expert whose turns are imitated")
    segmenter: str = Field("grabcut", description="segmenter of the expert's episodes")
    steps: int = Field(600, ge=0, description="optimiser steps")
    batch_size: int = Field(16, ge=1, description="expert episodes per step")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (--warmup steps of warm-up, linear decay to 10%)")
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
    mode: Literal["expert", "dagger"] = Field("expert", description="episodes driven by the expert, or by the "
                                                                    "student and labelled by the expert (DAgger)")
    follow_expert: float = Field(0.2, ge=0, le=1, description="DAgger: share of episodes the expert drives")
    greedy_share: float = Field(0.5, ge=0, le=1, description="DAgger: share of student episodes acted greedily "
                                                             "(the rest sample)")
    warmup: int = Field(20, ge=0, description="steps of linear learning-rate warm-up")
    expert_options: dict[str, Any] = Field(default_factory=dict,
                                           description='JSON options of the expert, e.g. {"box_jitter": 0.05}')
    compact_options: dict[str, Any] = Field(default_factory=dict,
                                            description='JSON CompactConfig fields for --init compact, '
                                                        'e.g. {"input_size": 128}')


def _check_same_views(expert: Policy, student: Any) -> None:
    """An expert's actions can be the student's decisions only if both see the same views in one frame."""
    if expert.frame != student.frame or expert.max_side != student.max_side:
        raise ValueError(
            f"expert ({expert.frame}, {expert.max_side}px) and student ({student.frame}, "
            f"{student.max_side}px) must see the same views and write in the same frame"
        )


class ExpertForcing:
    """A ``Policy`` for the graph that takes the expert's action and records it as the student's.

    The episode runs exactly as the expert would run it (same tools, same observations); the student
    sees each turn's context and records the expert's text as its decision, so the trajectory's ledger
    is the student's record of the expert's episode: what SFT maximises the log-probability of.
    """

    def __init__(self, expert: Policy, student: LearnablePolicy) -> None:
        _check_same_views(expert, student)
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


class DAggerForcing:
    """A ``Policy`` for the graph whose episodes the student drives and the expert labels (DAgger).

    Each turn the expert says what it would do in the state the episode is in, and the student records
    exactly that as its decision to learn (``act_and_imitate``), while the action executed is the
    student's own (greedy or sampled), so its mistakes and the states they lead to (a view without the
    target, a zoom-out, a wrong candidate) are in the data with the expert's answer to them. Per
    episode, with probability ``follow_expert`` the expert's action is executed instead (classic DAgger's
    beta: the expert's own states stay in the mix), and the student acts greedily with probability
    ``greedy_share``, else samples. Both draws depend only on ``seed`` and the episode id.
    """

    def __init__(self, expert: Policy, student: Any, *, follow_expert: float = 0.0, greedy_share: float = 0.5,
                 seed: int = 0) -> None:
        if not hasattr(student, "act_and_imitate"):
            raise ValueError(f"the {student.name} policy cannot act and imitate at once (DAgger)")
        _check_same_views(expert, student)
        self.expert = expert
        self.student = student
        self.follow_expert = follow_expert
        self.greedy_share = greedy_share
        self.seed = seed
        self.name = f"{expert.name}~>{student.name}"
        self.frame = student.frame
        self.max_side = student.max_side
        self._modes: dict[str, tuple[bool, bool]] = {}

    def _mode(self, episode_id: str) -> tuple[bool, bool]:
        if episode_id not in self._modes:
            rng = random.Random(f"{self.seed}/{episode_id}")
            self._modes[episode_id] = (rng.random() < self.follow_expert, rng.random() < self.greedy_share)
        return self._modes[episode_id]

    async def act(self, context: PolicyContext) -> PolicyTurn:
        expert_turn = await self.expert.act(context)
        follow, greedy = self._mode(context.episode_id)
        return await self.student.act_and_imitate(context, expert_turn, greedy=greedy, follow_expert=follow)

    def end_episode(self, episode_id: str) -> Any:
        self._modes.pop(episode_id, None)
        self.expert.end_episode(episode_id)
        return self.student.end_episode(episode_id)


# What each refresh's episodes did, logged beside the held-out figures (``collect_`` columns).
COLLECT_COLUMNS = ("giou", "some_zoom_hit", "zoom_out_rate", "no_target_accuracy")


def _cache_key(config: SFTConfig, student: LearnablePolicy, n_items: int) -> str:
    data = Path(config.data)
    stamp = data.stat().st_mtime_ns if data.is_file() else 0
    student_config = getattr(student, "config", None)
    described = student_config.model_dump_json() if hasattr(student_config, "model_dump_json") else repr(student_config)
    text = json.dumps([config.data, stamp, n_items, config.expert, config.segmenter, config.max_turns,
                       student.name, student.max_side, described])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def collect_records(agent: Agent, items: list, prefix: str = "expert") -> tuple[list, dict[str, float]]:
    """The student's records of the episodes over ``items`` (``agent`` runs an ``ExpertForcing`` or a
    ``DAggerForcing`` policy), and what those episodes did: their mean IoU (``giou``) and the
    ``evaluation.stats`` figures."""
    from segloop.evaluation.stats import episode_stats, search_stats
    from segloop.rl.rollout import run_episodes
    from segloop.tools.masks import iou

    results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)]))
    records = [r.trajectory.ledger for r in results]
    trajectories = [r.trajectory for r in results]
    found = {**episode_stats(trajectories), **search_stats(trajectories, [it.mask for it in items])}
    stats = {"giou": sum(iou(r.mask, it.mask, it.ignore) for r, it in zip(results, items, strict=True))
             / max(len(items), 1), **{k: v for k, v in found.items() if isinstance(v, float)}}
    return records, stats


def sft_loss(policy: LearnablePolicy, records: list) -> torch.Tensor:
    """Negative mean log-prob of the recorded decisions."""
    from segloop.policies.learnable import masked_mean

    scored = policy.log_probs(records)
    return -masked_mean(scored.log_probs, scored.mask)


def build_student(config: SFTConfig) -> LearnablePolicy:
    from segloop.policies.registry import load_learnable

    if config.model is not None and config.init is not None:
        raise ValueError("give either --model (a checkpoint) or --init (a fresh policy), not both")
    if config.model is not None:
        return load_learnable(config.model, seed=config.seed)
    if config.init == "compact":
        from segloop.policies.compact import CompactPolicy

        return CompactPolicy.create(seed=config.seed, **config.compact_options)
    raise ValueError("give --model DIR or --init compact")


def build_expert(name: str, student: LearnablePolicy, options: dict[str, Any]) -> Policy:
    from segloop.policies.registry import build_policy

    return build_policy(name, max_side=student.max_side, **options)


def train(config: SFTConfig) -> dict[str, Any]:
    """Collect the expert's (or DAgger's) episodes, then imitate them for ``config.steps`` steps, on the
    shared scaffold (``rl.scaffold``). Returns the summary (``eval``: the last held-out figures)."""
    import torch

    from segloop.agent.episode import EpisodeConfig
    from segloop.data.specs import decode, first_items, load_samples
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.rl.rollout import EVAL_COLUMNS, eval_row, evaluate
    from segloop.rl.scaffold import TrainingRun

    run = TrainingRun("sft", config, config.out, steps=config.steps, seed=config.seed, threads=config.threads)
    samples = load_samples(config.data)
    data = decode(samples)
    eval_items = first_items(config.eval_data, config.eval_n) if config.eval_data else []
    student = build_student(config)
    expert = build_expert(config.expert, student, config.expert_options)
    if config.mode == "dagger":
        if not config.pool_size:
            raise ValueError("DAgger collects with the current student: give --pool-size (and a refresh)")
        driver: Policy = DAggerForcing(expert, student, follow_expert=config.follow_expert,
                                       greedy_share=config.greedy_share, seed=config.seed)
    else:
        driver = ExpertForcing(expert, student)
    spec = AgentSpec(segmenter=config.segmenter, episode=EpisodeConfig(max_turns=config.max_turns, seed=config.seed))
    collect_agent = build_agent(spec, policy=driver)
    student_agent = build_agent(spec, policy=student, segmenter=collect_agent.segmenter)
    cursor = 0

    def collect(n: int, cache_dir: Path | None = None) -> tuple[list, dict[str, float]]:
        """Records of the next ``n`` items, 64 episodes at a time (bounded image memory); the student acts
        as it will be evaluated (``train(False)``)."""
        nonlocal cursor
        if cache_dir is not None and (cache_dir / "records.pt").is_file():
            saved = torch.load(cache_dir / "records.pt", weights_only=False)
            return saved["records"], saved["stats"]
        found, weighted = [], {}
        for start in range(0, n, 64):
            chunk = [data[(cursor + i) % len(data)] for i in range(start, min(n, start + 64))]
            student.train(False)
            part, part_stats = collect_records(collect_agent, chunk, prefix=f"{config.mode}-{cursor + start}")
            student.train(True)
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
    print(f"{config.mode}: {len(records)} episodes, gIoU {stats['giou']:.3f}, "
          f"{time.perf_counter() - started:.0f}s", file=sys.stderr)
    if not records:
        raise ValueError("the expert produced no decisions to learn from")

    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(config.warmup, 1)) * max(0.1, 1 - s / max(config.steps, 1)))
    generator = torch.Generator().manual_seed(config.seed)
    summary: dict[str, Any] = {"collect": stats}

    def evaluate_now(step: int, loss: float | None, rate: float | None = None) -> None:
        row: dict[str, Any] = {"step": step, "loss": loss, "lr": schedule.get_last_lr()[0],
                               **{f"collect_{k}": round(stats.get(k, 0.0), 4) for k in COLLECT_COLUMNS},
                               "decisions_per_s": None if rate is None else round(rate, 1),
                               **dict.fromkeys(EVAL_COLUMNS)}
        if eval_items:
            student.train(False)
            result = evaluate(student_agent, eval_items, prefix=f"sft-eval-{step}")
            student.train(True)
            row.update(eval_row(result))
            summary["eval"] = result
            run.held_out(step, result["giou"])
        run.write(row)
        run.progress(step, {"loss": loss, "held-out gIoU": row["eval_giou"],
                            "first zoom holds target": row["eval_first_zoom_hit"]}, force=True)

    evaluate_now(0, None)
    student.train(True)
    tic, decisions = time.perf_counter(), 0
    for step in range(1, config.steps + 1):
        if config.pool_size and step % config.refresh_every == 0:
            fresh, stats = collect(config.refresh_size)
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
            evaluate_now(step, loss.item(), decisions / (time.perf_counter() - tic))
            student.save_pretrained(config.out / f"step_{step:05d}")
            tic, decisions = time.perf_counter(), 0
        else:
            if step % 10 == 0:
                run.write({"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0]})
            run.progress(step, {"loss": loss.item(), "lr": schedule.get_last_lr()[0]})
    summary["final"] = run.save_final(student, config.steps)
    held_out = f"held-out gIoU {summary['eval']['giou']:.4f} cIoU {summary['eval']['ciou']:.4f}; " if eval_items else ""
    return run.finish(summary, ["loss", "lr", "collect_giou", "eval_giou", "eval_first_zoom_hit",
                                "eval_some_zoom_hit", "eval_zoom_out_rate"], f"SFT ({config.mode})",
                      f"{held_out}model in {config.out / 'final'} (the last step, {config.steps})")
