"""What both trainers share: samples loaded once, episodes run concurrently through the ``Agent`` graph,
held-out evaluation with the project's metrics, and the process memory figure for logs."""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.sample import Sample
from tools.masks import Metrics, score_sample


@dataclass
class Item:
    """A sample with its arrays decoded (decoding PNGs every episode would dominate a CPU rollout)."""

    sample: Sample
    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray | None


def load_items(samples: Sequence[Sample]) -> list[Item]:
    items = []
    for sample in samples:
        image = sample.load_image()
        shape = image.shape[:2]
        items.append(Item(sample, image, sample.load_mask(shape), sample.load_ignore(shape)))
    return items


async def run_episodes(agent: Any, jobs: Sequence[tuple[Item, str]], concurrency: int = 64) -> list[Any]:
    """Run ``(item, episode_id)`` jobs concurrently; results in job order. Concurrent episodes let a
    batching policy answer many turns in one forward pass."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item, episode_id: str) -> Any:
        async with gate:
            return await agent.run(item.image, item.sample.query, episode_id=episode_id,
                                   ground_truth=item.mask, ignore=item.ignore)

    return await asyncio.gather(*(one(item, eid) for item, eid in jobs))


def tool_rates(trajectories: Sequence[Any]) -> dict[str, float]:
    """Share of episodes that used zoom_in / inspect_mask, and mean turns."""
    n = max(len(trajectories), 1)
    return {
        "zoom_rate": sum(t.tool_counts.get("zoom_in", 0) > 0 for t in trajectories) / n,
        "inspect_rate": sum(t.tool_counts.get("inspect_mask", 0) > 0 for t in trajectories) / n,
        "turns": sum(len(t.turns) for t in trajectories) / n,
    }


def evaluate(policy: Any, segmenter: Any, items: Sequence[Item], episode_config: Any,
             prefix: str = "eval") -> dict[str, Any]:
    """Greedy episodes over ``items``: the metrics summary (gIoU, cIoU, by size, by kind) plus tool
    rates. The policy's ``greedy`` flag is restored afterwards."""
    from agent.episode import Agent

    before = getattr(policy, "greedy", None)
    if before is not None:
        policy.greedy = True
    try:
        agent = Agent(policy, segmenter, config=episode_config)
        results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)]))
    finally:
        if before is not None:
            policy.greedy = before
    metrics = Metrics()
    for item, result in zip(items, results, strict=True):
        metrics.add(score_sample(item.sample.id, result.mask, item.mask, item.ignore, kind=item.sample.kind))
    return {**metrics.summary(), **tool_rates([r.trajectory for r in results])}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and, on a GPU, peak allocated device memory) in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024
    import torch

    if torch.cuda.is_available():
        return rss_mb + torch.cuda.max_memory_allocated() / 2**20
    return rss_mb
