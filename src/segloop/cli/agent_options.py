"""The agent flags of ``run``, ``batch`` and ``demo``, derived from one spec: ``AgentSpec``'s fields
(``--policy``, ``--model``, ``--segmenter``, ``--segmenter-model``), ``--max-side`` (the views the policy is
shown), ``EpisodeConfig``'s (``--max-turns``, ``--seed``, ...) and, in a group of their own, ``OpenAIConfig``'s
(``--base-url``, ``--temperature``, ...: the knobs of ``--policy openai``). The three commands take the same
flags with the same choices; a command may only change a default (``batch`` evaluates greedily)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args, config_values

if TYPE_CHECKING:
    from segloop.policies.assembly import AgentSpec

AGENT_GROUP = "agent"
SERVER_GROUP = "OpenAI-compatible server (--policy openai; the API key comes from $OPENAI_API_KEY)"
# Not flags: a command's own concurrency (batch --concurrency) bounds the requests in flight.
_NOT_FLAGS = ("concurrency",)
# The segmenters a person chooses from ("box" fills the prompt's box: for benchmarks and tests).
SEGMENTER_CHOICES = ("grabcut", "sam2", "sam2-official")


def add_agent_arguments(parser: argparse.ArgumentParser, *, defaults: dict[str, Any] | None = None) -> None:
    """Add the agent flags in two groups, ``agent`` and the server's; ``defaults`` override a field's default."""
    from segloop.agent.episode import EpisodeConfig
    from segloop.policies.assembly import AgentSpec
    from segloop.policies.openai_compat import OpenAIConfig
    from segloop.policies.registry import POLICIES

    agent = parser.add_argument_group(AGENT_GROUP)
    add_config_arguments(agent, AgentSpec, exclude=("policy_options", "episode"), defaults=defaults,
                         choices={"policy": tuple(POLICIES), "segmenter": SEGMENTER_CHOICES})
    agent.add_argument("--max-side", type=int, default=None,
                       help="longest side of the images the policy is shown (default: the policy's own, 1024 for "
                            "scripted and server policies)")
    add_config_arguments(agent, EpisodeConfig, defaults=defaults)
    server = parser.add_argument_group(SERVER_GROUP)
    add_config_arguments(server, OpenAIConfig, exclude=("max_side", *_NOT_FLAGS), defaults=defaults)


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The server group's values, checked (a bad one raises ``OptionsError`` naming its flag)."""
    from segloop.policies.openai_compat import OpenAIConfig

    values = {k: v for k, v in config_values(OpenAIConfig, args).items() if k not in ("max_side", *_NOT_FLAGS)}
    config_from_args(OpenAIConfig, argparse.Namespace(), **values)
    return values


def agent_spec(args: argparse.Namespace, *, ground_truth: bool) -> AgentSpec:
    """The ``AgentSpec`` the flags describe. A command without ground truth (``ground_truth=False``: ``run``,
    ``demo``) refuses a policy that reads it."""
    from segloop.agent.episode import EpisodeConfig
    from segloop.policies.assembly import AgentSpec
    from segloop.policies.registry import NEEDS_TRUTH

    if not ground_truth and args.policy in NEEDS_TRUTH:
        raise OptionsError(f"--policy {args.policy} reads the ground truth, which this command does not have; use "
                           "it with segloop batch")
    options = server_options(args) if args.policy == "openai" else {}
    if args.max_side is not None:
        options["max_side"] = args.max_side
    return AgentSpec(policy=args.policy, model=args.model, policy_options=options, segmenter=args.segmenter,
                     segmenter_model=args.segmenter_model, episode=config_from_args(EpisodeConfig, args))


def compared_settings(spec: AgentSpec) -> dict[str, Any]:
    """The spec as a batch folder records what decides its results: without how a server is reached
    (``OpenAIConfig``'s ``CONNECTION_FIELDS``: URL, key variable, timeouts, retries), which may change between
    runs into the folder; each run records those values among its policy's settings."""
    from segloop.policies.openai_compat import CONNECTION_FIELDS

    settings = spec.model_dump(mode="json")
    if spec.policy == "openai":
        settings["policy_options"] = {k: v for k, v in settings["policy_options"].items()
                                      if k not in CONNECTION_FIELDS}
    return settings
