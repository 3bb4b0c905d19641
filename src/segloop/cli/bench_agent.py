"""``segloop bench agent``: what the agent itself costs per turn on a large image, apart from the model
and the segmenter: the graph, the parser, views, crops and resizes, overlays, statistics, RLE, records.

The policy is the scripted oracle and the segmenter a box-filler whose compute is near zero; both are
timed on every turn anyway and their time subtracted from the turn's wall time, so what remains is the
agent's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from segloop.tools.segmenters.base import Prompt, Segmenter
from segloop.tools.segmenters.box import BoxSegmenter
from segloop.tools.views import PixelBox


class _Timed:
    """Wraps a segmenter and adds the seconds of every ``segment`` call to ``seconds``."""

    def __init__(self, inner: Segmenter) -> None:
        self.inner = inner
        self.seconds = 0.0

    def segment(self, image: np.ndarray, image_key: str, region: PixelBox, prompt: Prompt) -> np.ndarray:
        tic = time.perf_counter()
        try:
            return self.inner.segment(image, image_key, region, prompt)
        finally:
            self.seconds += time.perf_counter() - tic


class _TimedPolicy:
    """Wraps a policy and adds the seconds of every ``act`` call to ``seconds``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.frame, self.max_side = inner.name, inner.frame, inner.max_side
        self.seconds = 0.0

    async def act(self, context: Any) -> Any:
        tic = time.perf_counter()
        try:
            return await self.inner.act(context)
        finally:
            self.seconds += time.perf_counter() - tic

    def end_episode(self, episode_id: str) -> Any:
        return self.inner.end_episode(episode_id)


def bench(size: int = 2048, episodes: int = 10, max_side: int = 1024, seed: int = 0) -> dict[str, Any]:
    """Per-turn overhead figures (milliseconds) over ``episodes`` oracle episodes on a ``size``² image."""
    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.agent.records import EpisodeResult
    from segloop.policies.scripted import OraclePolicy

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    segmenter = _Timed(BoxSegmenter())
    policy = _TimedPolicy(OraclePolicy(max_side=max_side, box_jitter=0.3))
    agent = Agent(policy, segmenter, EpisodeConfig(seed=seed))  # type: ignore[arg-type]
    overheads: list[float] = []
    walls: list[float] = []

    async def episode(index: int) -> None:
        truth = np.zeros((size, size), dtype=bool)
        side = int(rng.integers(size // 100, size // 8))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        truth[y:y + side, x:x + side] = True
        segmenter.seconds = policy.seconds = 0.0
        tic = time.perf_counter()
        async for item in agent.stream(image, "the square", ground_truth=truth, episode_id=f"bench-{index}"):
            if isinstance(item, EpisodeResult):
                break
            now = time.perf_counter()
            walls.append(now - tic)
            overheads.append(now - tic - policy.seconds - segmenter.seconds)
            segmenter.seconds = policy.seconds = 0.0
            tic = now

    for index in range(episodes):
        asyncio.run(episode(index))
    return {
        "image": f"{size}x{size}", "max_side": max_side, "episodes": episodes, "turns": len(overheads),
        "median_overhead_ms": round(statistics.median(overheads) * 1000, 2),
        "p90_overhead_ms": round(sorted(overheads)[int(0.9 * (len(overheads) - 1))] * 1000, 2),
        "median_turn_wall_ms": round(statistics.median(walls) * 1000, 2),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--episodes", type=int, default=10, help="oracle episodes to time")
    parser.add_argument("--max-side", type=int, default=1024, help="longest side of the views shown")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def main(args: argparse.Namespace) -> int:
    if args.size < 64 or args.episodes < 1:
        print("segloop bench agent: --size must be at least 64 and --episodes at least 1", file=sys.stderr)
        return 2
    figures = bench(args.size, args.episodes, args.max_side)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"agent overhead per turn on a {figures['image']} image (views at {figures['max_side']} px), "
              f"{figures['turns']} turns: median {figures['median_overhead_ms']} ms, "
              f"p90 {figures['p90_overhead_ms']} ms "
              f"(median turn wall time {figures['median_turn_wall_ms']} ms incl. policy and segmenter)")
    return 0
