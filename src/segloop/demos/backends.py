"""Who answers the demo's requests: the agents built from the command line's policy, or from an
OpenAI-compatible server named in the UI.

The loaded models (the segmenter, the offline policy) are the only thing sessions share; an agent is
stateless between episodes apart from its checkpointer, whose threads are keyed by per-session ids.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from segloop.policies.assembly import AgentSpec

if TYPE_CHECKING:
    from segloop.agent.episode import Agent
    from segloop.tools.segmenters import Segmenter

BackendKind = Literal["offline", "openai"]


class BackendChoice(BaseModel):
    """The backend a request asks for, as the UI sends it."""

    model_config = ConfigDict(frozen=True)

    kind: BackendKind = "offline"
    url: str = ""
    model: str = ""

    @field_validator("url", "model", mode="before")
    @classmethod
    def _strip(cls, value: str | None) -> str:
        # Hidden textboxes send None.
        return (value or "").strip()

    def problem(self) -> str | None:
        """What is missing for this choice to run, in words for the UI; None when it can run."""
        if self.kind == "openai":
            if not self.url.startswith(("http://", "https://")):
                return "Give the server's URL, e.g. http://localhost:8000/v1."
            if not self.model:
                return "Give the model name the server serves (e.g. Qwen/Qwen2.5-VL-7B-Instruct)."
        return None

    @property
    def key(self) -> str:
        """Identifies the agent (and the conversation threads) this choice runs on."""
        return "offline" if self.kind == "offline" else f"openai|{self.url}|{self.model}"


class Backends:
    """Builds agents on first use and keeps them; one segmenter and one checkpointer for all. ``spec`` is the
    command line's offline agent; an OpenAI-compatible backend is the same spec with that policy."""

    def __init__(self, spec: AgentSpec, openai_options: dict[str, Any] | None = None) -> None:
        self.spec = spec
        # The command line's --policy openai knobs (temperature, tool mode, ...), used by UI-chosen servers.
        self.openai_options = dict(openai_options or {})
        self._lock = threading.Lock()
        self._agents: dict[str, Agent] = {}
        self._segmenter: Segmenter | None = None
        self._checkpointer: Any = None

    def spec_for(self, choice: BackendChoice) -> AgentSpec:
        """The agent a request asks for."""
        if choice.kind == "offline":
            return self.spec
        # One retry unless the command line says otherwise, not the batch runner's four: a person is waiting,
        # and a dead server should be reported in seconds. The API key, if any, comes from the environment.
        options = {"retries": 1, **self.openai_options, "base_url": choice.url}
        return self.spec.model_copy(update={"policy": "openai", "model": choice.model, "policy_options": options})

    def agent(self, choice: BackendChoice) -> Agent:
        """The agent for ``choice``, built (and its model loaded) the first time it is asked for."""
        from langgraph.checkpoint.memory import InMemorySaver

        from segloop.policies.assembly import build_agent
        from segloop.tools.segmenters import build_segmenter

        with self._lock:
            if choice.key not in self._agents:
                if self._segmenter is None:
                    self._segmenter = build_segmenter(self.spec.segmenter, model=self.spec.segmenter_model)
                    self._checkpointer = InMemorySaver()
                self._agents[choice.key] = build_agent(self.spec_for(choice), segmenter=self._segmenter,
                                                       checkpointer=self._checkpointer)
            return self._agents[choice.key]

    def load_offline(self) -> None:
        """Load the offline agent now, so a bad --policy/--model fails at start-up, not on a click."""
        self.agent(BackendChoice())
