"""Policies for tests of what surrounds the episode (batches, reports): the oracle behind a switch that makes
it unavailable (a server outage), and an answer that is an EMPTY mask for chosen queries."""

from __future__ import annotations

from segloop.agent.actions import Submit
from segloop.agent.parser import format_call
from segloop.agent.policy import PolicyContext, PolicyTurn, PolicyUnavailable
from segloop.policies.scripted import OraclePolicy


class SwitchedOracle:
    """The oracle; while ``down`` it raises ``PolicyUnavailable`` as a server outage does, and for a query
    holding ``empty_word`` it submits at once without a candidate (an EMPTY mask, not "no such object")."""

    name = "switched-oracle"
    frame = "pixels"

    def __init__(self, max_side: int = 224, down: bool = False, empty_word: str = "nothing") -> None:
        self.oracle = OraclePolicy(max_side=max_side)
        self.max_side = max_side
        self.down = down
        self.empty_word = empty_word
        self.calls = 0

    async def act(self, context: PolicyContext) -> PolicyTurn:
        self.calls += 1
        if self.down:
            raise PolicyUnavailable("http://model.invalid/v1 failed after 5 attempts: HTTP 503: overloaded")
        if self.empty_word in context.query:
            return PolicyTurn(text=format_call(Submit()))
        return await self.oracle.act(context)

    def end_episode(self, episode_id: str) -> None:
        self.oracle.end_episode(episode_id)


class Scripted:
    """Writes the given texts in turn (the last one again once they run out)."""

    name = "scripted"
    frame = "pixels"

    def __init__(self, texts: list[str], max_side: int = 224) -> None:
        self.texts = list(texts)
        self.max_side = max_side
        self.turn = 0

    async def act(self, context: PolicyContext) -> PolicyTurn:
        text = self.texts[min(self.turn, len(self.texts) - 1)]
        self.turn += 1
        return PolicyTurn(text=text)

    def end_episode(self, episode_id: str) -> None:
        self.turn = 0
