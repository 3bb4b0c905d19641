"""Concurrent episodes against a slow OpenAI-compatible server: episodes/s at concurrency 1 and 32.

A local chat-completions server (``tests/openai_server.py``, in its own process as a vLLM server would be)
answers every request after ``--latency`` seconds with a scripted two-turn episode (segment a box, submit);
the batch runner (``evaluation.batch.run_batch``) runs the episodes through the real graph, the real
``OpenAIPolicy`` and HTTP. The segmenter fills the prompted box (no model), so the figure is the agent's own
overhead against the server's latency, which concurrency should hide: the goal is a speed-up of at least 28x
at concurrency 32.

Each repeat runs concurrency 1 and then 32 back to back, so both see the same machine load; the speed-up
reported is the median of the repeats' ratios. The client's CPU per episode and the load average are shown
because on a shared machine they, not the code, decide how far from the ideal 32x a run lands.

    .venv/bin/python scripts/bench_concurrency.py [--latency 0.2] [--episodes 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segloop.agent.actions import Segment, Submit
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call
from segloop.data.sample import Sample
from segloop.evaluation.batch import run_batch
from segloop.policies.openai_compat import OpenAIPolicy
from segloop.tools.images import save_image
from segloop.tools.segmenters.box import BoxSegmenter

ROOT = Path(__file__).resolve().parents[1]


def _samples(folder: Path, n: int) -> list[Sample]:
    """Smooth scenes with a few boxes (pure noise would make PNG encoding the bottleneck, unlike photos)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 320, dtype=np.float32)
    samples = []
    for i in range(n):
        image = np.empty((240, 320, 3), dtype=np.uint8)
        image[...] = (ramp[None, :, None] + rng.integers(0, 55, 3)).astype(np.uint8)
        for _ in range(4):
            x, y = int(rng.integers(0, 280)), int(rng.integers(0, 200))
            image[y:y + 40, x:x + 40] = rng.integers(0, 255, 3)
        path = folder / f"img{i:03d}.png"
        save_image(image, path)
        samples.append(Sample(id=f"s{i:03d}", image=path, query="the red box", mask=None))
    return samples


async def _run(base_url: str, samples: list[Sample], concurrency: int, out: Path) -> float:
    policy = OpenAIPolicy("scripted", base_url=base_url, concurrency=concurrency, max_side=448)
    agent = Agent(policy, BoxSegmenter(), EpisodeConfig(max_turns=4))
    tic = time.perf_counter()
    await run_batch(agent, samples, out, concurrency=concurrency, progress=False, save_overlays=False)
    elapsed = time.perf_counter() - tic
    await policy.aclose()
    return elapsed


def _measure(base_url: str, samples: list[Sample], concurrency: int, out: Path) -> dict[str, float]:
    cpu = time.process_time()
    elapsed = asyncio.run(_run(base_url, samples, concurrency, out))
    return {"concurrency": concurrency, "episodes": len(samples), "seconds": elapsed,
            "episodes_per_s": len(samples) / elapsed,
            "cpu_ms_per_episode": 1000 * (time.process_time() - cpu) / len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per answer")
    parser.add_argument("--episodes", type=int, default=256, help="episodes at concurrency 32 (8 waves by default)")
    parser.add_argument("--serial-episodes", type=int, default=8, help="episodes at concurrency 1")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs; the median ratio is reported")
    args = parser.parse_args()
    if min(args.episodes, args.serial_episodes, args.repeats) < 1 or args.latency < 0:
        parser.error("episode counts and repeats must be at least 1, the latency at least 0")
    script = json.dumps([format_call(Segment(bbox_2d=[40, 40, 200, 160])), format_call(Submit())])
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "openai_server.py"), "--script", script,
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    rows = []
    load_before = os.getloadavg()
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            samples = _samples(folder, max(args.episodes, args.serial_episodes))
            _measure(base_url, samples[:4], 4, folder / "warm-up")  # imports, first connections, caches
            for repeat in range(args.repeats):
                for concurrency, n in ((1, args.serial_episodes), (32, args.episodes)):
                    row = _measure(base_url, samples[:n], concurrency, folder / f"out{repeat}-{concurrency}")
                    rows.append({"repeat": repeat, **row})
    finally:
        server.terminate()
        server.wait(timeout=10)
    load_after = os.getloadavg()
    print(f"server latency {args.latency * 1000:.0f} ms per answer; 2 turns per episode; box segmenter; "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'repeat':>6} {'concurrency':>11} {'episodes':>8} {'seconds':>8} {'episodes/s':>10} {'client CPU/ep':>13}")
    for r in rows:
        print(f"{r['repeat']:>6} {r['concurrency']:>11} {r['episodes']:>8} {r['seconds']:>8.2f} "
              f"{r['episodes_per_s']:>10.2f} {r['cpu_ms_per_episode']:>10.1f} ms")
    ratios = [b["episodes_per_s"] / a["episodes_per_s"] for a, b in zip(rows[::2], rows[1::2], strict=True)]
    print("speed-up per repeat: " + ", ".join(f"{r:.1f}x" for r in ratios))
    print(f"speed-up at concurrency 32: {statistics.median(ratios):.1f}x (median of {len(ratios)}; "
          "goal >= 28x; ideal 32x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
