"""What both trainers' episodes share: run concurrently through the ``Agent`` graph, and held-out evaluation
with the project's metrics. Their data come from ``segloop.data.specs`` (``load_items``, ``first_items``); the
rest of a run (seeding, logs, progress, timing) from ``rl.scaffold``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from segloop.evaluation.stats import episode_stats, search_stats
from segloop.tools.masks import Metrics, score_sample

if TYPE_CHECKING:
    from segloop.agent.episode import Agent
    from segloop.agent.records import EpisodeResult
    from segloop.data.sample import Item


async def run_episodes(agent: Agent, jobs: Sequence[tuple[Item, str]], concurrency: int = 64,
                       greedy: bool | None = None) -> list[EpisodeResult]:
    """Run ``(item, episode_id)`` jobs concurrently; results in job order. Concurrent episodes let a
    batching policy answer many turns in one forward pass. ``greedy`` goes to every episode (``Agent.run``)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item, episode_id: str) -> EpisodeResult:
        async with gate:
            return await agent.run(item.image, item.sample.query, episode_id=episode_id,
                                   ground_truth=item.mask, ignore=item.ignore, greedy=greedy)

    return await asyncio.gather(*(one(item, eid) for item, eid in jobs))


# The held-out figures the trainers log, as ``eval_<name>`` columns.
EVAL_COLUMNS = tuple(f"eval_{k}" for k in (
    "giou", "ciou", "turns", "zoom_rate", "zoom_out_rate", "segment_rate", "submit_rate", "valid_rate",
    "first_zoom_hit", "some_zoom_hit", "zooms", "no_target_accuracy", "false_no_target"))


def eval_row(result: dict[str, Any]) -> dict[str, float | None]:
    """``evaluate``'s figures as a log row's ``EVAL_COLUMNS``."""
    return {column: None if result.get(column[5:]) is None else round(result[column[5:]], 4)
            for column in EVAL_COLUMNS}


def evaluate(agent: Agent, items: Sequence[Item], prefix: str = "eval") -> dict[str, Any]:
    """Greedy episodes of ``agent`` over ``items``: the metrics summary (gIoU, cIoU, by size, by kind),
    what the episodes did (``evaluation.stats``) and whether their zooms held the target."""
    results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)],
                                       greedy=True))
    metrics = Metrics()
    for item, result in zip(items, results, strict=True):
        metrics.add(score_sample(item.sample.id, result.mask, item.mask, item.ignore, kind=item.sample.kind))
    trajectories = [r.trajectory for r in results]
    return {**metrics.summary(), **episode_stats(trajectories), **search_stats(trajectories, [i.mask for i in items])}
