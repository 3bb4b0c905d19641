"""Hand-driven language-model episodes for the token-ledger tests: a transcript the test plays the graph for,
an expert's calls recorded through ``imitate``, sampled turns through ``act``, and the runs of a mask."""

from __future__ import annotations

import numpy as np

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn
from segloop.agent.parser import format_call
from segloop.agent.policy import ChatMessage, PolicyContext
from segloop.policies.hf import TokenLedger, TransformersPolicy
from segloop.tools.views import full_view

SIDE = 112
CALLS = [format_call(ZoomIn(bbox_2d=[10, 20, 90, 100])), format_call(Segment(bbox_2d=[4, 5, 60, 70])),
         "<think>looks right</think>" + format_call(InspectMask()), format_call(Submit())]


def image(seed: int, height: int = SIDE, width: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


class Transcript:
    """A hand-driven episode: the messages and images a graph would hand the policy."""

    def __init__(self, episode_id: str, seed: int = 0, greedy: bool | None = None) -> None:
        self.episode_id = episode_id
        self.seed = seed
        self.greedy = greedy
        self.images = {"view0": image(seed)}
        self.messages = [ChatMessage(role="system", content="You segment what the user asks for."),
                         ChatMessage(role="user", content="Find the red circle.", image_id="view0")]

    def context(self, turn: int) -> PolicyContext:
        return PolicyContext(episode_id=self.episode_id, query="the red circle", messages=list(self.messages),
                             images=self.images, view=full_view(SIDE, SIDE, SIDE), view_depth=0,
                             image_size=(SIDE, SIDE), turn=turn, max_turns=8, seed=self.seed, greedy=self.greedy)

    def answer(self, text: str, turn: int) -> None:
        self.messages.append(ChatMessage(role="assistant", content=text))
        key = f"obs{turn}"
        self.images[key] = image(self.seed * 100 + turn, 56 + 28 * (turn % 2), SIDE)  # views change shape
        self.messages.append(ChatMessage(role="tool", content=f"Observation {turn}: done.", image_id=key))


async def scripted(policy: TransformersPolicy, transcript: Transcript, texts: list[str]) -> TokenLedger:
    for turn, text in enumerate(texts):
        turn_out = await policy.imitate(transcript.context(turn), text)
        assert turn_out.text == text
        transcript.answer(text, turn)
    return policy.end_episode(transcript.episode_id)


async def sampled(policy: TransformersPolicy, transcript: Transcript, turns: int) -> tuple[TokenLedger, list[str]]:
    texts = []
    for turn in range(turns):
        out = await policy.act(transcript.context(turn))
        texts.append(out.text)
        transcript.answer(out.text, turn)
    return policy.end_episode(transcript.episode_id), texts


def mask_runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of every run of 1s."""
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs
