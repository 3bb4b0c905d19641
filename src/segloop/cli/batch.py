"""``segloop batch --data SPEC --out DIR``: agent episodes over a dataset, at most N in flight, scored and
resumable (``segloop.agent.batch``): ``trajectories.jsonl``, ``metrics.json``, ``report.html``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.agent.episode import EpisodeConfig
    from segloop.policies import POLICIES

    parser.add_argument("--data", required=True,
                        help="a manifest, or a dataset spec: reasonseg:DIR, refcoco:ROOT:DATASET:SPLITBY:SPLIT, "
                             "cod:IMAGES:MASKS, sod:IMAGES:MASKS")
    parser.add_argument("--out", type=Path, required=True, help="output folder; re-running into it resumes")
    parser.add_argument("--policy", default="compact", choices=tuple(POLICIES), help="who chooses the actions")
    parser.add_argument("--model", default=None, help="the policy's checkpoint (path or hub id), or the served "
                                                      "model's name for --policy openai")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server URL (--policy openai)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="longest side of the images a scripted policy is shown (default 1024)")
    parser.add_argument("--segmenter", default="grabcut", choices=("grabcut", "sam2", "sam2-official"),
                        help="grabcut needs no weights")
    parser.add_argument("--segmenter-model", default=None, help="SAM2 checkpoint (hub id or path)")
    add_config_arguments(parser, EpisodeConfig)
    parser.add_argument("--concurrency", type=int, default=4, help="episodes in flight")
    parser.add_argument("--limit", type=int, default=None, help="only the first K samples")
    parser.add_argument("--no-overlays", action="store_true", help="skip the per-episode PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from segloop.agent.batch import BatchError
    from segloop.tools.masks import format_table

    try:
        metrics = asyncio.run(_main(args))
    except (BatchError, OptionsError, ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"segloop batch: {exc}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    print(f"mean turns {metrics['turns']:.2f}, valid actions {metrics['valid_rate']:.2%}, "
          f"{metrics['episodes_per_s']:.2f} episodes/s; results in {args.out}")
    return 0


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from segloop.agent.batch import BatchError, run_batch
    from segloop.agent.datasets import load_samples
    from segloop.agent.episode import EpisodeConfig
    from segloop.policies import AgentSpec, build_agent

    if args.limit is not None and args.limit < 1:
        raise BatchError("--limit must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        raise BatchError(f"--out {args.out} is a file; give a folder")
    samples = load_samples(args.data)[: args.limit]
    if not samples:
        raise BatchError(f"{args.data} holds no samples")
    options: dict[str, Any] = {}
    if args.max_side is not None:
        options["max_side"] = args.max_side
    if args.base_url is not None:
        options["base_url"] = args.base_url
    spec = AgentSpec(policy=args.policy, model=args.model, policy_options=options, segmenter=args.segmenter,
                     segmenter_model=args.segmenter_model, episode=config_from_args(EpisodeConfig, args))
    agent = build_agent(spec)
    return await run_batch(agent, samples, args.out, args.concurrency, progress=not args.quiet,
                           save_overlays=not args.no_overlays)
