"""``segloop run IMAGE "QUERY" --out DIR``: one episode on one image, printed turn by turn and saved
(``trajectory.json``, one overlay PNG per turn, ``mask.png``, and ``run.json``: what made it).

Exit status: 0 for an answer (a mask, or "no such object"), 1 when the episode failed (the policy or the
segmenter could not go on), 2 for a usage error (bad flags, an unreadable or too small image), 3 when the
answer is an EMPTY mask the agent did not call "no such object".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args
from segloop.cli.paths import check_out_folder
from segloop.cli.server_options import add_server_arguments, server_options

EXIT_FAILED, EXIT_EMPTY = 1, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.agent.episode import EpisodeConfig

    parser.add_argument("image", type=Path, help="the image (PNG, JPEG, TIFF ...)")
    parser.add_argument("query", help="what to segment, in words")
    parser.add_argument("--out", type=Path, required=True, help="folder for trajectory.json, overlays, mask.png")
    parser.add_argument("--policy", default="compact", choices=("compact", "transformers", "openai", "random"),
                        help="who chooses the actions (compact: the bundled offline agent)")
    parser.add_argument("--model", default=None, help="the policy's checkpoint (path or hub id), or the served "
                                                      "model's name for --policy openai (compact: the bundled one)")
    parser.add_argument("--segmenter", default="grabcut", choices=("grabcut", "sam2", "sam2-official"),
                        help="grabcut needs no weights")
    parser.add_argument("--segmenter-model", default=None, help="SAM2 checkpoint (hub id or path; default: the "
                                                                "segmenter's own)")
    add_config_arguments(parser, EpisodeConfig)
    parser.add_argument("--verbose", action="store_true", help="print the model's whole text and observations")
    parser.epilog = ("exit status: 0 an answer (a mask, or 'no such object'); 1 the episode FAILED; 2 usage error; "
                     "3 an EMPTY mask the agent did not call 'no such object'")
    add_server_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"segloop run: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    from segloop.agent.episode import EpisodeConfig, EpisodeResult, save_episode
    from segloop.agent.policy import unknown_words
    from segloop.agent.provenance import environment, now
    from segloop.policies import AgentSpec, build_agent, policy_settings, unknown_words_note
    from segloop.tools.images import load_image

    if not args.query.strip():
        raise ValueError("the query is empty; say what to segment")
    check_out_folder(args.out)
    try:
        episode = config_from_args(EpisodeConfig, args)
        options = server_options(args) if args.policy == "openai" else {}
    except OptionsError as exc:
        raise ValueError(str(exc)) from None
    image = load_image(args.image)
    spec = AgentSpec(policy=args.policy, model=args.model, policy_options=options, segmenter=args.segmenter,
                     segmenter_model=args.segmenter_model, episode=episode)
    agent = build_agent(spec)
    started = now()
    if words := unknown_words(agent.policy, args.query):
        print(f"note: {unknown_words_note(agent.policy.name, words)}", flush=True)
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
    # What made this episode, next to it (as a batch's run.json).
    record = {"configuration": {"agent": spec.model_dump(mode="json"), "image": str(args.image.resolve()),
                                "query": args.query},
              "policy_settings": policy_settings(agent.policy), **environment(), "started": started, "ended": now()}
    (folder / "run.json").write_text(json.dumps(record, indent=1))
    t = result.trajectory
    if t.failure is not None:
        print(f"segloop run: the episode FAILED ({t.failure.describe()}); it is not an answer. Turns so far "
              f"saved to {folder}", file=sys.stderr)
        return EXIT_FAILED
    guess = f" (a guess: the policy does not know {', '.join(map(repr, t.unknown_words))})" if t.unknown_words else ""
    print(f"{t.outcome()}{guess}; saved to {folder}")
    return EXIT_EMPTY if t.empty else 0
