"""``segloop demo``: serve the Gradio chat demo (``segloop.demos``) on a local port. The agent flags are
``run``'s and ``batch``'s: they make the demo's own agent; a server chosen in the page gets its URL and model
name from there, and the server flags' other settings.

The API key (``$OPENAI_API_KEY``) goes only to the server of ``--base-url``. Served beyond this machine
(``--host`` other than a loopback address) the page has no login: the demo says so loudly, and the page cannot
name another server (anyone reaching it could otherwise make this host send requests wherever they like)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from segloop.cli.agent_options import add_agent_arguments, agent_spec, server_options
from segloop.cli.options import OptionsError

DEFAULT_PORT = 7860


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface: the "
                                                            "page has no login; anyone who can reach it can use it)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where episodes are saved")
    # One retry, not the batch runner's four: a person is waiting, and a dead server should be reported in seconds.
    add_agent_arguments(parser, defaults={"retries": 1})


def main(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        print(f"segloop demo: --port {args.port} is not a port number", file=sys.stderr)
        return 2
    from segloop.cli.paths import check_out_folder

    try:
        check_out_folder(args.out)
        spec = agent_spec(args, ground_truth=False)
        openai_options = server_options(args)
    except (OptionsError, ValueError) as exc:
        print(f"segloop demo: {exc}", file=sys.stderr)
        return 2
    from segloop.demos.app import CSS, FOLLOW_JS, build_app
    from segloop.demos.backends import Backends

    local = is_loopback(args.host)
    backends = Backends(spec, openai_options, any_server=local)
    try:
        backends.load_offline()
    except Exception as exc:  # a bad --policy/--model/--segmenter is a user error: one line, no traceback
        print(f"segloop demo: cannot load the agent: {exc}", file=sys.stderr)
        return 2
    import asyncio

    from segloop.agent.policy import PolicyUnavailable
    from segloop.demos.backends import BackendChoice

    try:
        if note := asyncio.run(backends.check(BackendChoice())):
            print(f"segloop demo: note: {note}", file=sys.stderr)
    except PolicyUnavailable as exc:  # the preflight of a server policy given on the command line
        print(f"segloop demo: nothing was served: {exc}", file=sys.stderr)
        return 2
    if not local:
        key = bool(os.environ.get(openai_options.get("api_key_env") or ""))
        print(exposure_warning(args.host, args.port, backends.server_url, key), file=sys.stderr, flush=True)
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return False


def exposure_warning(host: str, port: int, server_url: str, has_key: bool) -> str:
    """The loud line of a demo served beyond this machine without a login."""
    from segloop.tools.redaction import redact

    key = f", with this demo's API key to {redact(server_url)}," if has_key else ""
    return (f"segloop demo: WARNING: serving on {host}:{port}, beyond this machine, with no login: anyone who can "
            f"reach it can run the agent{key} and read what it saves; the page cannot name another server. Serve "
            "on 127.0.0.1 (the default) behind an SSH tunnel or an authenticating proxy instead.")
