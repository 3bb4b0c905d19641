"""``segloop run IMAGE "QUERY" --out DIR``: one episode on one image, printed turn by turn and saved
(``trajectory.json``, one overlay PNG per turn, ``mask.png``, ``final.png`` (the mask over the whole image) and
``run.json``: what made it).

Exit status: 0 for an answer (a mask, or "no such object"), 1 when the episode failed (the policy or the
segmenter could not go on), 2 for a usage error (bad flags, an unreadable or too small image, a folder holding
another episode, a server that fails the preflight: nothing is run), 3 when the answer is an EMPTY mask the
agent did not call "no such object", 4 when the request was refused (the policy cannot read some of its words;
``--guess-unknown-words`` answers anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from segloop.cli.agent_options import add_agent_arguments, agent_spec
from segloop.cli.options import OptionsError
from segloop.cli.paths import check_episode_folder, check_out_folder

EXIT_FAILED, EXIT_EMPTY, EXIT_REFUSED = 1, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the image (PNG, JPEG, TIFF ...)")
    parser.add_argument("query", help="what to segment, in words")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for trajectory.json, the overlays, mask.png and final.png (new, or holding no "
                             "other episode)")
    parser.add_argument("--verbose", action="store_true", help="print the model's whole text and observations")
    parser.epilog = ("exit status: 0 an answer (a mask, or 'no such object'); 1 the episode FAILED; 2 usage error "
                     "or a server that fails the preflight (nothing run); "
                     "3 an EMPTY mask the agent did not call 'no such object'; 4 REFUSED: the policy cannot read some "
                     "of the request's words (--guess-unknown-words answers anyway)")
    add_agent_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from segloop.agent.policy import PolicyUnavailable

    try:
        return asyncio.run(_run(args))
    except PolicyUnavailable as exc:  # the preflight: before the episode
        print(f"segloop run: nothing was run: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"segloop run: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    from segloop.agent.policy import preflight, unknown_words
    from segloop.agent.records import EpisodeResult, save_episode
    from segloop.evaluation.provenance import environment, now
    from segloop.policies.assembly import build_agent
    from segloop.policies.registry import policy_settings, unknown_words_note
    from segloop.tools.files import write_record
    from segloop.tools.images import load_image

    if not args.query.strip():
        raise ValueError("the query is empty; say what to segment")
    check_out_folder(args.out)
    check_episode_folder(args.out)
    try:
        spec = agent_spec(args, ground_truth=False)
    except OptionsError as exc:
        raise ValueError(str(exc)) from None
    image = load_image(args.image)
    agent = build_agent(spec)
    if note := await preflight(agent.policy):
        print(f"note: {note}", flush=True)
    started = now()
    words = unknown_words(agent.policy, args.query)
    if words and spec.episode.guess_unknown_words:
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
    folder = save_episode(result, args.out, image)
    # What made this episode, next to it (as a batch's run.json).
    record = {"configuration": {"agent": spec.model_dump(mode="json"), "image": str(args.image.resolve()),
                                "query": args.query},
              "policy_settings": policy_settings(agent.policy), **environment(), "started": started, "ended": now()}
    write_record(folder / "run.json", json.dumps(record, indent=1))
    t = result.trajectory
    if t.failure is not None:
        print(f"segloop run: the episode FAILED ({t.failure.describe()}); it is not an answer. Turns so far "
              f"saved to {folder}", file=sys.stderr)
        return EXIT_FAILED
    if t.refused:
        print(f"segloop run: {t.outcome()}", file=sys.stderr)
        print(f"  {unknown_words_note(agent.policy.name, t.unknown_words)}; the record is in {folder}",
              file=sys.stderr)
        return EXIT_REFUSED
    guess = f" (a guess: the policy does not know {', '.join(map(repr, t.unknown_words))})" if t.unknown_words else ""
    print(f"{t.outcome()}{guess}; saved to {folder} (final.png: the mask over the image)")
    return EXIT_EMPTY if t.empty else 0
