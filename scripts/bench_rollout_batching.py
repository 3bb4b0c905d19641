"""Rollout speed of a GRPO group: G episodes of one prompt through the ``Agent`` graph with the transformers
policy, their turns generated as batches (``max_batch=G``) or one sequence at a time (``max_batch=1``),
side by side in one run (alternating, so both see the same machine load); medians over repeats.

    .venv/bin/python scripts/bench_rollout_batching.py              # the tiny model, built on the fly
    .venv/bin/python scripts/bench_rollout_batching.py --model DIR --device cuda --threads 8

Episodes sample at temperature 1 (the graph sets no seed); tokens/s counts the policy's generated tokens,
so a mode is not favoured by writing shorter turns.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory or hub id (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group", type=int, default=8, help="episodes of the prompt (G)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.data.specs import load_items
    from segloop.policies.hf import TransformersPolicy
    from segloop.policies.tiny import make_tiny
    from segloop.tools.segmenters import build_segmenter

    torch.set_num_threads(args.threads)
    model = args.model or str(make_tiny(Path(tempfile.mkdtemp(prefix="segloop-bench-")) / "tiny"))
    item = load_items("synth:easy:512:0:1")[0]
    segmenter = build_segmenter("grabcut")
    policies = {mode: TransformersPolicy(model, device=args.device, max_new_tokens=args.max_new_tokens,
                                         max_batch=args.group if mode == "batched" else 1)
                for mode in ("one at a time", "batched")}

    # Seconds inside generate per mode: what batching can shorten (the rest is the graph and the tools).
    generating = dict.fromkeys(policies, 0.0)
    for mode, policy in policies.items():
        def timed(requests: list, mode: str = mode, generate=policy.batcher.run) -> list:
            started = time.perf_counter()
            try:
                return generate(requests)
            finally:
                generating[mode] += time.perf_counter() - started
        policy.batcher.run = timed

    async def group(policy: TransformersPolicy, repeat: int) -> tuple[float, int]:
        agent = Agent(policy, segmenter, EpisodeConfig(max_turns=args.max_turns))
        started = time.perf_counter()
        results = await asyncio.gather(*(
            agent.run(item.image, item.sample.query, episode_id=f"r{repeat}-e{i}") for i in range(args.group)))
        seconds = time.perf_counter() - started
        return seconds, sum(len(r.trajectory.ledger) for r in results)

    asyncio.run(group(policies["batched"], -1))  # warm-up (first calls allocate)
    times: dict[str, list[float]] = {mode: [] for mode in policies}
    tokens: dict[str, list[int]] = {mode: [] for mode in policies}
    generate_s: dict[str, list[float]] = {mode: [] for mode in policies}
    for repeat in range(args.repeats):
        for mode, policy in policies.items():
            before = generating[mode]
            seconds, n = asyncio.run(group(policy, repeat))
            times[mode].append(seconds)
            tokens[mode].append(n)
            generate_s[mode].append(generating[mode] - before)
    device = args.device if args.device != "cpu" else f"cpu, {args.threads} thread(s)"
    print(f"G={args.group} episodes of one prompt, max_turns={args.max_turns}, max_new_tokens={args.max_new_tokens}, "
          f"{model if args.model else 'tiny model'} on {device}, median of {args.repeats}")
    print(f"{'mode':<14} {'s/group':>8} {'generate s':>10} {'episodes/s':>11} {'tokens/s':>9} {'gen calls':>9}")
    rates = {}
    for mode, policy in policies.items():
        median = statistics.median(times[mode])
        rate = statistics.median(n / t for n, t in zip(tokens[mode], times[mode], strict=True))
        rates[mode] = args.group / median
        calls = sum(policy.batcher.batch_sizes.values())
        print(f"{mode:<14} {median:>8.2f} {statistics.median(generate_s[mode]):>10.2f} {args.group / median:>11.2f} "
              f"{rate:>9.1f} {calls:>9}")
    print(f"speed-up (batched / one at a time): {rates['batched'] / rates['one at a time']:.2f}x; in generate "
          f"alone: {statistics.median(generate_s['one at a time']) / statistics.median(generate_s['batched']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
