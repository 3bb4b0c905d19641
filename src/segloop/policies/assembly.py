"""The one place an agent is put together: ``AgentSpec`` (policy, checkpoint, options, segmenter, episode
settings: everything that decides what an episode does, and what result files record as their provenance)
and ``build_agent``. The command line, the batch runner, the demo, both trainers and the verl loop build
theirs with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from segloop.agent.episode import Agent, EpisodeConfig
from segloop.policies.registry import NEEDS_TRUTH, build_policy

if TYPE_CHECKING:
    from segloop.agent.policy import Policy
    from segloop.tools.segmenters import Segmenter


class AgentSpec(BaseModel):
    """Everything that decides what an episode does: which policy (and checkpoint, and its options), which
    segmenter, and the episode settings. JSON-able: result files record it as their provenance."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field("compact", description="who chooses the actions (compact: the bundled offline agent; "
                                               f"{' and '.join(NEEDS_TRUTH)} read the ground truth: batch only)")
    model: str | None = Field(None, description="the policy's checkpoint (path or hub id), or the served model's "
                                                "name for --policy openai; compact: the bundled checkpoint")
    policy_options: dict[str, Any] = Field(default_factory=dict,
                                           description="keyword options of the policy (e.g. max_side)")
    segmenter: str = Field("grabcut", description="grabcut needs no weights; sam2 and sam2-official run SAM 2")
    segmenter_model: str | None = Field(None, description="SAM2 checkpoint (hub id or path; default: the "
                                                          "segmenter's own)")
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
