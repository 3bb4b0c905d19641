"""Who answers the demo's requests: the agents built from the command line's policy, or from an
OpenAI-compatible server named in the UI.

The loaded models (the segmenter, the offline policy) are the only thing sessions share; an agent is
stateless between episodes apart from its checkpointer, whose threads are keyed by per-session ids.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

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


@dataclass(frozen=True)
class DemoConfig:
    """The command line's choices: the offline policy and the segmenter every backend uses."""

    policy: str = "compact"
    model: str | None = None
    segmenter: str = "grabcut"
    max_turns: int = 8


class Backends:
    """Builds agents on first use and keeps them; one segmenter and one checkpointer for all."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._agents: dict[str, Any] = {}
        self._segmenter: Any = None
        self._checkpointer: Any = None

    def _shared(self) -> tuple[Any, Any]:
        from langgraph.checkpoint.memory import InMemorySaver

        from tools.segmenters import build_segmenter

        if self._segmenter is None:
            self._segmenter = build_segmenter(self.config.segmenter)
            self._checkpointer = InMemorySaver()
        return self._segmenter, self._checkpointer

    def _policy(self, choice: BackendChoice) -> Any:
        from policies import build_policy

        if choice.kind == "offline":
            return build_policy(self.config.policy, model=self.config.model)
        # One retry, not the batch runner's four: a person is waiting, and a dead server should be
        # reported in seconds. The API key, if any, comes from OPENAI_API_KEY in the demo's environment.
        return build_policy("openai", model=choice.model, base_url=choice.url, max_retries=1)

    def agent(self, choice: BackendChoice) -> Any:
        """The agent for ``choice``, built (and its model loaded) the first time it is asked for."""
        from agent.episode import Agent, EpisodeConfig

        with self._lock:
            if choice.key not in self._agents:
                segmenter, checkpointer = self._shared()
                self._agents[choice.key] = Agent(self._policy(choice), segmenter,
                                                 EpisodeConfig(max_turns=self.config.max_turns), checkpointer)
            return self._agents[choice.key]

    def load_offline(self) -> None:
        """Load the offline agent now, so a bad --policy/--model fails at start-up, not on a click."""
        self.agent(BackendChoice())
