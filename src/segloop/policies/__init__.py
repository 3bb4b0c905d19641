"""Who chooses the next action, and the one place an agent is put together.

``build_policy`` picks a policy by name and imports only that one's module, so building a scripted policy
never pulls in torch or transformers. ``build_agent`` turns an ``AgentSpec`` (policy, checkpoint,
segmenter, episode settings: everything that decides what an episode does, and what result files record
as their provenance) into an ``Agent``; the command line, the batch runner, the demo and both trainers
build theirs with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from segloop.agent.episode import Agent, EpisodeConfig

if TYPE_CHECKING:
    from segloop.agent.policy import Policy
    from segloop.tools.segmenters import Segmenter

# name -> (module, class). Scripted and server policies are built with ``cls(**options)`` (plus
# ``model=`` where one is given); checkpoint policies with ``cls.from_pretrained(model, **options)``.
POLICIES: dict[str, tuple[str, str]] = {
    "compact": ("segloop.policies.compact", "CompactPolicy"),
    "transformers": ("segloop.policies.hf", "TransformersPolicy"),
    "openai": ("segloop.policies.openai_compat", "OpenAIPolicy"),
    "oracle": ("segloop.policies.scripted", "OraclePolicy"),
    "compact-expert": ("segloop.policies.compact.expert", "CompactExpert"),
    "single-shot": ("segloop.policies.scripted", "SingleShotPolicy"),
    "random": ("segloop.policies.scripted", "RandomTextPolicy"),
}
# Policies that read the ground truth: for expert data, upper bounds and baselines, never for new images.
NEEDS_TRUTH = ("oracle", "compact-expert", "single-shot")
# The scripted policies (no model): the experts SFT may imitate.
SCRIPTED = ("oracle", "compact-expert", "single-shot", "random")
_FROM_PRETRAINED = ("transformers", "compact")


class PolicyError(ValueError):
    """A policy that cannot be built: unknown name, missing module or checkpoint, bad option."""


def build_policy(name: str, model: str | None = None, **options: Any) -> Policy:
    """The policy called ``name``. ``model`` is a checkpoint (hub id or path) for ``transformers`` and
    ``compact`` (default: the shipped compact checkpoint), the served model's name for ``openai``."""
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    module_name, class_name = POLICIES[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PolicyError(f"policy {name!r} is not available here ({exc})") from exc
    if name in _FROM_PRETRAINED:
        if model is None and name == "compact":
            from segloop.policies.compact import DEFAULT_CHECKPOINT

            model = str(DEFAULT_CHECKPOINT)
        if model is None:
            raise PolicyError(f"policy {name!r} needs --model (a checkpoint path or hub id)")
        return cls.from_pretrained(model, **options)
    if name == "openai" and model is None:
        raise PolicyError("policy 'openai' needs --model (the served model's name)")
    if model is not None:
        if name != "openai":
            raise PolicyError(f"policy {name!r} takes no model (got {model!r})")
        options["model"] = model
    try:
        return cls(**options)
    except TypeError as exc:
        raise PolicyError(f"bad options for policy {name!r}: {exc}") from exc


class AgentSpec(BaseModel):
    """Everything that decides what an episode does: which policy (and checkpoint, and its options), which
    segmenter, and the episode settings. JSON-able: result files record it as their provenance."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field("compact", description="who chooses the actions: " + ", ".join(POLICIES))
    model: str | None = Field(None, description="the policy's checkpoint (path or hub id), or the served model's "
                                                "name for --policy openai; compact: the bundled checkpoint")
    policy_options: dict[str, Any] = Field(default_factory=dict,
                                           description="keyword options of the policy (e.g. max_side)")
    segmenter: str = Field("grabcut", description="grabcut (no weights), sam2 or sam2-official")
    segmenter_model: str | None = Field(None, description="SAM2 checkpoint (hub id or path); its default when omitted")
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)


def build_agent(spec: AgentSpec, *, policy: Policy | None = None, segmenter: Segmenter | None = None,
                checkpointer: Any = None) -> Agent:
    """The agent ``spec`` describes; an already built ``policy`` or ``segmenter`` (a policy being trained,
    a segmenter shared between agents) is used instead of building one."""
    from segloop.tools.segmenters import build_segmenter

    if policy is None:
        policy = build_policy(spec.policy, model=spec.model, **spec.policy_options)
    if segmenter is None:
        segmenter = build_segmenter(spec.segmenter, model=spec.segmenter_model)
    return Agent(policy, segmenter, spec.episode, checkpointer)


# Attributes of a built policy that say how it acts (sampling, server, views); what a result file records as
# the policy's effective settings, defaults included.
_SETTINGS = ("name", "model", "base_url", "frame", "max_side", "greedy", "temperature", "top_p", "max_tokens",
             "max_new_tokens", "seed", "timeout_s", "max_retries", "concurrency", "device")
# How to run an open-vocabulary agent: what ``unknown_words_note`` points to.
VLM_COMMAND = ('segloop run IMAGE "QUERY" --out DIR --policy openai --model Qwen/Qwen2.5-VL-7B-Instruct '
               '(with `vllm serve Qwen/Qwen2.5-VL-7B-Instruct` on localhost:8000), or --policy transformers '
               '--model Qwen/Qwen2.5-VL-7B-Instruct')


def policy_settings(policy: Policy) -> dict[str, Any]:
    """The built policy's effective settings that exist on it (defaults included), JSON-able; a policy with a
    pydantic ``config`` (the OpenAI-compatible one) gives every field of it."""
    settings: dict[str, Any] = {}
    config = getattr(policy, "config", None)
    for name in _SETTINGS:
        value = getattr(policy, name, None)
        if isinstance(value, (str, int, float, bool)) or value is None:
            if value is not None:
                settings[name] = value
        else:
            settings[name] = str(value)
    if isinstance(config, BaseModel):
        settings.update({k: v for k, v in config.model_dump(mode="json").items() if v is not None})
    return settings


def unknown_words_note(policy_name: str, words: list[str]) -> str:
    """One line saying that the policy cannot read ``words`` of a request, and what to use instead."""
    listed = ", ".join(repr(w) for w in words)
    return (f"the {policy_name} policy does not know the word{'s' if len(words) != 1 else ''} {listed}: it knows "
            "only the words it was trained on, so its answer is a guess; for open "
            f"vocabulary use a vision-language model backend: {VLM_COMMAND}")
