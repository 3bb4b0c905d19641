"""The ``--policy openai`` knobs (``OpenAIConfig``) as one argument group of ``run``, ``batch`` and ``demo``."""

from __future__ import annotations

import argparse
from collections.abc import Collection
from typing import Any

from segloop.cli.options import OptionsError, add_config_arguments, config_values

GROUP_TITLE = "OpenAI-compatible server (--policy openai; the API key comes from $OPENAI_API_KEY)"
# Not flags: the batch runner's --concurrency already bounds the requests in flight.
_NEVER = ("concurrency",)


def add_server_arguments(parser: argparse.ArgumentParser, *, exclude: Collection[str] = (),
                         defaults: dict[str, Any] | None = None) -> None:
    """Add ``OpenAIConfig``'s fields as flags in their own group (``--base-url``, ``--temperature``, ...)."""
    from segloop.policies.openai_compat import OpenAIConfig

    group = parser.add_argument_group(GROUP_TITLE)
    add_config_arguments(group, OpenAIConfig, exclude=(*_NEVER, *exclude), defaults=defaults)


def server_options(args: argparse.Namespace, *, exclude: Collection[str] = ()) -> dict[str, Any]:
    """The group's values, checked (a bad one raises ``OptionsError`` naming its flag); ``exclude`` names the
    fields the command left out of the group (a flag of its own may have the same name)."""
    from pydantic import ValidationError

    from segloop.policies.openai_compat import OpenAIConfig

    values = {k: v for k, v in config_values(OpenAIConfig, args).items() if k not in (*_NEVER, *exclude)}
    try:
        OpenAIConfig(**values)
    except ValidationError as exc:
        problems = [f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()[:3]]
        raise OptionsError("; ".join(problems)) from None
    return values
