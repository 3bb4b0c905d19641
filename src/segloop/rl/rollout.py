"""What both trainers share: samples loaded once (or synthetic scenes made on demand), episodes run
concurrently through the ``Agent`` graph, held-out evaluation with the project's metrics, and the
process memory figure for logs.

``items(spec)`` reads a ``--data`` spec: anything ``agent.datasets.load_samples`` reads, or
``synth:DIFFICULTY:SIZE:SEED:N[:NO_TARGET_RATE]``, the N scenes ``segloop synth --difficulty DIFFICULTY
--size SIZE --seed SEED --n N --no-target-rate NO_TARGET_RATE`` would write (same ids, pixels and masks;
rate 0 when omitted), generated when indexed instead of read from disk: training data without a bound
on its size or its memory.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segloop.agent.sample import Sample
from segloop.agent.stats import episode_stats, search_stats
from segloop.tools.masks import Metrics, score_sample

if TYPE_CHECKING:
    from segloop.agent.episode import Agent, EpisodeResult


@dataclass
class Item:
    """A sample with its arrays decoded (decoding PNGs every episode would dominate a CPU rollout)."""

    sample: Sample
    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray | None


class SynthItems(Sequence[Item]):
    """Scenes of the synthetic world, generated (deterministically) each time one is indexed."""

    def __init__(self, difficulty: str, size: int, seed: int, n: int, no_target_rate: float = 0.0) -> None:
        from segloop.agent.synth import DIFFICULTIES

        if difficulty not in DIFFICULTIES or size < 128 or n < 1 or not 0 <= no_target_rate <= 1:
            raise ValueError(f"synth spec: need a difficulty in {', '.join(DIFFICULTIES)}, size >= 128, n >= 1 "
                             f"and a rate in [0, 1] (got {difficulty}, {size}, {n}, {no_target_rate})")
        self.difficulty, self.size, self.seed, self.n, self.no_target_rate = difficulty, size, seed, n, no_target_rate

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Item:  # type: ignore[override]
        from segloop.agent.synth import generate_scene, scene_seed

        if not -self.n <= index < self.n:
            raise IndexError(index)
        index %= self.n
        scene = generate_scene(scene_seed(self.seed, index), self.size, self.difficulty, self.no_target_rate)
        mask = scene.mask if scene.mask is not None else np.zeros(scene.image.shape[:2], dtype=bool)
        sample = Sample(id=f"synth_{self.seed}_{index:05d}", image=Path(f"synth_{self.seed}_{index:05d}.png"),
                        query=scene.query, kind=scene.meta["kind"])
        return Item(sample, scene.image, mask, None)


def items(spec: str) -> Sequence[Item]:
    """The items a ``--data`` spec names (see the module docstring)."""
    scheme, _, rest = spec.partition(":")
    if scheme != "synth":
        from segloop.agent.datasets import load_samples

        return load_items(load_samples(spec))
    parts = rest.split(":")
    try:
        difficulty, size, seed, n = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
        rate = float(parts[4]) if len(parts) == 5 else 0.0
        if len(parts) not in (4, 5):
            raise IndexError
    except (IndexError, ValueError):
        raise ValueError(f"{spec}: expected synth:DIFFICULTY:SIZE:SEED:N[:NO_TARGET_RATE]") from None
    return SynthItems(difficulty, size, seed, n, rate)


def first_items(spec: str, n: int) -> list[Item]:
    """The first ``n`` items of a ``--data`` spec (a held-out set), decoded once."""
    found = items(spec)
    return [found[i] for i in range(min(n, len(found)))]


def load_items(samples: Sequence[Sample]) -> list[Item]:
    items = []
    for sample in samples:
        image = sample.load_image()
        shape = image.shape[:2]
        items.append(Item(sample, image, sample.load_mask(shape), sample.load_ignore(shape)))
    return items


async def run_episodes(agent: Agent, jobs: Sequence[tuple[Item, str]], concurrency: int = 64
                       ) -> list[EpisodeResult]:
    """Run ``(item, episode_id)`` jobs concurrently; results in job order. Concurrent episodes let a
    batching policy answer many turns in one forward pass."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item, episode_id: str) -> EpisodeResult:
        async with gate:
            return await agent.run(item.image, item.sample.query, episode_id=episode_id,
                                   ground_truth=item.mask, ignore=item.ignore)

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
    what the episodes did (``agent.stats``) and whether their zooms held the target. The policy's
    ``greedy`` flag is restored afterwards."""
    policy = agent.policy
    before = getattr(policy, "greedy", None)
    if before is not None:
        policy.greedy = True  # type: ignore[attr-defined]
    try:
        results = asyncio.run(run_episodes(agent, [(item, f"{prefix}-{i}") for i, item in enumerate(items)]))
    finally:
        if before is not None:
            policy.greedy = before  # type: ignore[attr-defined]
    metrics = Metrics()
    for item, result in zip(items, results, strict=True):
        metrics.add(score_sample(item.sample.id, result.mask, item.mask, item.ignore, kind=item.sample.kind))
    trajectories = [r.trajectory for r in results]
    return {**metrics.summary(), **episode_stats(trajectories), **search_stats(trajectories, [i.mask for i in items])}


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and, on a GPU, peak allocated device memory) in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024
    import torch

    if torch.cuda.is_available():
        return rss_mb + torch.cuda.max_memory_allocated() / 2**20
    return rss_mb
