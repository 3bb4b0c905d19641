"""Who answers the demo's requests: the agents built from the command line's policy, or from an
OpenAI-compatible server named in the UI.

The API key the demo was started with goes only to the server its command line names (``--base-url``): a URL
typed into the page gets no key of ours, and where the page is served beyond this machine it cannot name
another server at all (``any_server=False``): anyone reaching the page could otherwise make this host send
requests wherever they like and read the answers.

The loaded models (the segmenter, the offline policy) are the only thing sessions share; an agent is
stateless between episodes apart from its checkpointer, whose threads are keyed by per-session ids. Each server
agent passes its preflight (the model is served and sees pictures) before its first episode.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from segloop.policies.assembly import AgentSpec
from segloop.tools.redaction import redact

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
    def server(self) -> str:
        """The URL as compared with the command line's (without a trailing slash)."""
        return self.url.rstrip("/")

    @property
    def key(self) -> str:
        """Identifies the agent (and the conversation threads) this choice runs on."""
        return "offline" if self.kind == "offline" else f"openai|{self.server}|{self.model}"


class Backends:
    """Builds agents on first use and keeps them; one segmenter and one checkpointer for all. ``spec`` is the
    command line's offline agent; an OpenAI-compatible backend is the same spec with that policy. ``server_url``
    is the command line's server (the only one the key goes to); ``any_server`` lets the page name others."""

    def __init__(self, spec: AgentSpec, openai_options: dict[str, Any] | None = None, *,
                 any_server: bool = True) -> None:
        from segloop.policies.openai_compat import OpenAIConfig

        self.spec = spec
        # The command line's --policy openai knobs (temperature, tool mode, ...), used by UI-chosen servers.
        self.openai_options = dict(openai_options or {})
        self.server_url = OpenAIConfig(**self.openai_options).base_url
        self.any_server = any_server
        self._lock = threading.Lock()
        self._agents: dict[str, Agent] = {}
        self._checked: set[str] = set()
        self._segmenter: Segmenter | None = None
        self._checkpointer: Any = None

    def problem(self, choice: BackendChoice) -> str | None:
        """Why ``choice`` cannot run, in words for the UI; None when it can."""
        if (problem := choice.problem()) is not None:
            return problem
        if choice.kind == "openai" and not self.any_server and not self._own(choice):
            return (f"This demo talks only to the server it was started with, {redact(self.server_url)} (it is served "
                    "beyond its own machine); start it with --base-url to use another.")
        return None

    def spec_for(self, choice: BackendChoice) -> AgentSpec:
        """The agent a request asks for."""
        if choice.kind == "offline":
            return self.spec
        # One retry unless the command line says otherwise, not the batch runner's four: a person is waiting,
        # and a dead server should be reported in seconds. The key goes to the command line's server only.
        options = {"retries": 1, **self.openai_options, "base_url": self.server_url}
        if not self._own(choice):
            options.update(base_url=choice.server, api_key_env=None)
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

    def _own(self, choice: BackendChoice) -> bool:
        """Whether ``choice`` names the command line's server (as given, or as the page shows it: redacted)."""
        return choice.server in (self.server_url, redact(self.server_url))

    async def check(self, choice: BackendChoice) -> str | None:
        """The preflight of ``choice``'s agent, once per agent that passes it (``agent.policy.preflight``):
        raises ``PolicyUnavailable`` naming what is wrong; returns a note on what could not be checked."""
        from segloop.agent.policy import preflight

        if choice.key in self._checked:
            return None
        note = await preflight(self.agent(choice).policy)
        self._checked.add(choice.key)
        return note

    def load_offline(self) -> None:
        """Load the offline agent now, so a bad --policy/--model fails at start-up, not on a click."""
        self.agent(BackendChoice())
