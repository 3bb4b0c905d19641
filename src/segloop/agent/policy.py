"""Who chooses the next action: the ``Policy`` protocol, and what a policy sees on its turn.

The graph owns the episode; a policy only reads the transcript (and, for scripted experts, the episode
facts in ``PolicyContext``) and writes text. Language-model policies keep whatever they need to train on
(their token ledger) per episode and hand it over in ``end_episode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel

from segloop.agent.parser import ParsedTurn
from segloop.tools.views import CoordFrame, View, ZoomLimits

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(BaseModel):
    """One message of the transcript. Images are referenced by id into the episode's workspace."""

    role: Role
    content: str
    image_id: str | None = None


class PolicyUnavailable(RuntimeError):
    """The policy could not give a turn for a reason outside its own choices (a server down or refusing, a
    model that cannot run): the episode failed; it did not answer. ``info`` is what the policy records of the
    turn that failed (a server policy: every attempt's status); the episode's ``Failure`` keeps it."""

    def __init__(self, message: str = "", info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = dict(info or {})


@dataclass
class PolicyContext:
    """What a policy is given on its turn.

    ``messages`` is the whole transcript so far (system, user, then assistant/tool pairs); ``images``
    resolves every ``image_id`` in it to the RGB array the model is shown. ``view``, ``image_size``,
    ``candidate`` and ``ground_truth`` are the episode's facts for scripted policies; models must not
    read them (``ground_truth`` is None outside evaluation and expert-data generation). ``seed`` is the
    episode's seed (``EpisodeConfig.episode_seed``): a policy that samples draws from it, so a seeded
    episode is reproducible whatever runs beside it; None means unseeded. ``greedy`` is what the caller of
    the episode asks for (``Agent.run(..., greedy=...)``): the most likely action (True, evaluation), a sample
    (False, training rollouts), or None: the policy's own setting. ``last_turn`` is this request's previous
    turn as the graph parsed it (None on its first turn), so a policy need not parse its own text again.
    """

    episode_id: str
    query: str
    messages: list[ChatMessage]
    images: Mapping[str, np.ndarray]
    view: View
    view_depth: int
    image_size: tuple[int, int]
    turn: int
    max_turns: int
    zoom_limits: ZoomLimits = field(default_factory=ZoomLimits)
    seed: int | None = None
    greedy: bool | None = None
    last_turn: ParsedTurn | None = None
    candidate: np.ndarray | None = None
    ground_truth: np.ndarray | None = None


@dataclass
class PolicyTurn:
    """A policy's answer for one turn: the text it wrote, and JSON-able facts about how it was obtained
    (a server's finish reason, token usage, retries) that the trajectory records with the turn. When the text
    holds no call, ``info["observation_error"]`` (if given) is the error the model is told instead of the
    parser's (a server that refused the turn)."""

    text: str
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """Chooses actions. ``frame`` is the coordinate frame it writes in; ``max_side`` the longest side,
    in pixels, of the images it wants to be shown. A policy may also set ``upscale = False`` (read with
    ``getattr``, default True): then a region smaller than ``max_side`` is shown at its own size, never
    enlarged (a server model gains nothing from upscaled pixels, and they cost request bytes)."""

    name: str
    frame: CoordFrame
    max_side: int

    async def act(self, context: PolicyContext) -> PolicyTurn:
        """The next turn's text: optional ``<think>`` and one ``<tool_call>``."""
        ...

    def end_episode(self, episode_id: str) -> Any:
        """Free the episode's state; return its training record (token ledger) or None."""
        ...

    # Optional: ``unknown_words(query: str) -> list[str]``, the words of ``query`` a closed-vocabulary policy
    # cannot read (the compact policy knows only the words it was trained on). A policy without it reads any
    # words. The episode records them and ``run``, ``batch`` and the demo say so; see ``unknown_words`` below.
    # Optional: ``async preflight() -> str | None``, a check before the first episode that the policy can work at
    # all (a server policy: the model is served and sees pictures); it raises ``PolicyUnavailable`` in one line,
    # or returns a note on what it could not check. See ``preflight`` below.


def unknown_words(policy: object, query: str) -> list[str]:
    """The words of ``query`` that ``policy`` says it cannot read, each once, in query order; [] for a
    policy that reads any words (one without an ``unknown_words`` method)."""
    method = getattr(policy, "unknown_words", None)
    if method is None:
        return []
    return list(dict.fromkeys(str(word) for word in method(query)))


async def preflight(policy: object) -> str | None:
    """Run ``policy``'s check before the first episode (``run``, ``batch`` and the demo do); None for a policy
    with nothing to check. Raises ``PolicyUnavailable`` when the policy cannot work."""
    method = getattr(policy, "preflight", None)
    return None if method is None else await method()
