"""``segloop demo``: serve the Gradio chat demo (``segloop.demos``) on a local port."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segloop.cli.options import OptionsError
from segloop.cli.server_options import add_server_arguments, server_options

DEFAULT_PORT = 7860


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="compact", choices=("compact", "transformers", "openai", "random"),
                        help="offline policy (compact: the bundled agent)")
    parser.add_argument("--model", default=None, help="the offline policy's checkpoint (its default when omitted)")
    parser.add_argument("--segmenter", default="grabcut", choices=("grabcut", "sam2", "sam2-official"),
                        help="grabcut needs no weights")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where episodes are saved")
    parser.add_argument("--max-turns", type=int, default=8, help="turn budget of an episode")
    # For servers chosen in the UI (its URL and model name come from there); --retries defaults to 1 in the demo.
    add_server_arguments(parser, exclude=("base_url",), defaults={"retries": 1})


def main(args: argparse.Namespace) -> int:
    if args.max_turns < 1:
        print("segloop demo: --max-turns must be at least 1", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"segloop demo: --port {args.port} is not a port number", file=sys.stderr)
        return 2
    from segloop.cli.paths import check_out_folder

    try:
        check_out_folder(args.out)
    except ValueError as exc:
        print(f"segloop demo: {exc}", file=sys.stderr)
        return 2
    from segloop.agent.episode import EpisodeConfig
    from segloop.demos.app import CSS, FOLLOW_JS, build_app
    from segloop.demos.backends import Backends
    from segloop.policies import AgentSpec

    try:
        openai_options = server_options(args, exclude=("base_url",))
    except OptionsError as exc:
        print(f"segloop demo: {exc}", file=sys.stderr)
        return 2
    backends = Backends(AgentSpec(policy=args.policy, model=args.model, segmenter=args.segmenter,
                                  episode=EpisodeConfig(max_turns=args.max_turns)), openai_options)
    try:
        backends.load_offline()
    except Exception as exc:  # a bad --policy/--model/--segmenter is a user error: one line, no traceback
        print(f"segloop demo: cannot load the agent: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"segloop demo: cannot write episodes to {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    app = build_app(backends, args.out.resolve())
    print(f"segloop demo on http://{args.host}:{args.port} (episodes saved under {args.out})", flush=True)
    try:
        app.queue(default_concurrency_limit=None).launch(
            server_name=args.host, server_port=args.port, show_error=True, quiet=True,
            allowed_paths=[str(args.out.resolve())], footer_links=[], css=CSS, js=FOLLOW_JS)
    except OSError as exc:
        print(f"segloop demo: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0
