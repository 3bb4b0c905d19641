"""``segloop run IMAGE "QUERY" --out DIR``: one episode on one image, printed turn by turn and saved
(``trajectory.json``, one overlay PNG per turn, ``mask.png``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.agent.episode import EpisodeConfig

    parser.add_argument("image", type=Path, help="the image (PNG, JPEG, TIFF ...)")
    parser.add_argument("query", help="what to segment, in words")
    parser.add_argument("--out", type=Path, required=True, help="folder for trajectory.json, overlays, mask.png")
    parser.add_argument("--policy", default="compact", choices=("compact", "transformers", "openai", "random"),
                        help="who chooses the actions (compact: the bundled offline agent)")
    parser.add_argument("--model", default=None, help="the policy's checkpoint (path or hub id), or the served "
                                                      "model's name for --policy openai")
    parser.add_argument("--segmenter", default="grabcut", choices=("grabcut", "sam2", "sam2-official"),
                        help="grabcut needs no weights")
    parser.add_argument("--segmenter-model", default=None, help="SAM2 checkpoint (hub id or path)")
    add_config_arguments(parser, EpisodeConfig)
    parser.add_argument("--verbose", action="store_true", help="print the model's whole text and observations")


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"segloop run: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    from segloop.agent.episode import EpisodeConfig, EpisodeResult, save_episode
    from segloop.policies import AgentSpec, build_agent
    from segloop.tools.images import load_image

    if not args.query.strip():
        raise ValueError("the query is empty; say what to segment")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder")
    try:
        episode = config_from_args(EpisodeConfig, args)
    except OptionsError as exc:
        raise ValueError(str(exc)) from None
    image = load_image(args.image)
    spec = AgentSpec(policy=args.policy, model=args.model, segmenter=args.segmenter,
                     segmenter_model=args.segmenter_model, episode=episode)
    agent = build_agent(spec)
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
