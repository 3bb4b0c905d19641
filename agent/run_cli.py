"""``segloop run IMAGE "QUERY" --out DIR``: one episode on one image, printed turn by turn and saved
(``trajectory.json``, one overlay PNG per turn, ``mask.png``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tools.segmenters import SEGMENTERS

# Scripted experts read the ground truth, which a single image with a request does not have.
_NEEDS_TRUTH = ("oracle", "single-shot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the image (PNG, JPEG, TIFF ...)")
    parser.add_argument("query", help="what to segment, in words")
    parser.add_argument("--out", type=Path, required=True, help="folder for trajectory.json, overlays, mask.png")
    parser.add_argument("--policy", default="compact", help="compact (default), transformers, openai, random")
    parser.add_argument("--model", default=None, help="the policy's checkpoint, or the served model's name")
    parser.add_argument("--segmenter", default="grabcut", choices=SEGMENTERS)
    parser.add_argument("--segmenter-model", default=None, help="SAM2 checkpoint (hub id or path)")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--verbose", action="store_true", help="print the model's whole text and observations")


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"segloop run: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    from agent.episode import Agent, EpisodeConfig, EpisodeResult, save_episode
    from policies import build_policy
    from tools.images import load_image
    from tools.segmenters import build_segmenter

    if not args.query.strip():
        raise ValueError("the query is empty; say what to segment")
    if args.policy in _NEEDS_TRUTH:
        raise ValueError(f"policy {args.policy!r} needs a ground-truth mask; use it with `segloop batch`")
    if args.max_turns < 1:
        raise ValueError("--max-turns must be at least 1")
    image = load_image(args.image)
    policy = build_policy(args.policy, model=args.model)
    segmenter = build_segmenter(args.segmenter, model=args.segmenter_model)
    agent = Agent(policy, segmenter, EpisodeConfig(max_turns=args.max_turns))
    result: EpisodeResult | None = None
    async for item in agent.stream(image, args.query, episode_id=args.out.name or "episode"):
        if isinstance(item, EpisodeResult):
            result = item
            break
        call = item.call_text or "(no valid tool call)"
        print(f"turn {item.turn + 1}: {call}")
        if item.thought:
            print(f"  thought: {item.thought}")
        if args.verbose:
            print(f"  text: {item.raw_text}")
            print("  " + item.observation.replace("\n", "\n  "))
        else:
            print(f"  -> {item.observation.splitlines()[0]}")
    assert result is not None
    folder = save_episode(result, args.out)
    t = result.trajectory
    if t.policy_error:
        print(f"segloop run: the policy failed: {t.policy_error}", file=sys.stderr)
        return 1
    how = "no such object" if t.no_target else f"mask of {t.final_area_share:.2%} of the image"
    ending = "submitted" if t.submitted else "turn budget spent, last candidate kept"
    print(f"{ending}: {how}, {len(t.turns)} turns; saved to {folder}")
    return 0
