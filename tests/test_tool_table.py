"""The tools as a table (``agent.actions.TOOLS``): a tool is one class (arguments, ``run``, ``usage``) and one
entry; the parser, the prompts and the graph read only the table. And the graph parses each turn's text once."""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

import numpy as np
import pytest
from support.policies import Scripted

from segloop.agent import actions, parser
from segloop.agent.actions import TOOLS, Action, Observation, Submit, ToolEnv
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call, parse_turn
from segloop.agent.prompts import system_prompt
from segloop.policies.scripted import OraclePolicy
from segloop.tools.segmenters import build_segmenter


class Measure(Action):
    """Report how much of the current view the candidate covers."""

    name: Literal["measure"] = "measure"
    unit: Literal["percent", "pixels"] = "percent"
    usage: ClassVar[str] = "measure the candidate when unsure of its size"

    async def run(self, env: ToolEnv) -> Observation:
        if env.candidate is None:
            raise ValueError("there is no candidate to measure; call segment first")
        return Observation(f"Measured in {self.unit}: {env.describe(env.views.current)}.")


@pytest.fixture
def measure_tool(monkeypatch: pytest.MonkeyPatch):
    """The table with one more entry, as a new tool would add it (the schema cache built again)."""
    monkeypatch.setitem(TOOLS, "measure", Measure)
    actions._tool_schemas_json.cache_clear()
    yield Measure
    monkeypatch.delitem(TOOLS, "measure")
    actions._tool_schemas_json.cache_clear()


def test_a_new_tool_is_one_entry_of_the_table(measure_tool: type[Action]) -> None:
    prompt = system_prompt("pixels", 6)
    assert '"name": "measure"' in prompt and "measure the candidate when unsure of its size" in prompt
    parsed = parse_turn('<tool_call>{"name": "measure", "arguments": {"unit": "pixels"}}</tool_call>')
    assert isinstance(parsed.action, Measure) and parsed.action.unit == "pixels"
    assert parse_turn(format_call(Measure())).action == Measure()
    bad = parse_turn('<tool_call>{"name": "measure", "arguments": {"unit": "inches"}}</tool_call>')
    assert bad.error is not None and bad.error.kind == "bad_arguments" and "unit" in bad.error.message

    image = np.zeros((120, 160, 3), np.uint8)
    image[40:80, 60:100] = 255
    calls = [format_call(Measure()), '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [60, 40, 100, 80]}}'
             "</tool_call>", format_call(Measure(unit="pixels")), format_call(Submit())]
    agent = Agent(Scripted(calls, max_side=160), build_segmenter("box"), EpisodeConfig(max_turns=6))
    trajectory = asyncio.run(agent.run(image, "the white square")).trajectory
    assert trajectory.tool_counts == {"measure": 2, "segment": 1, "submit": 1} and trajectory.submitted
    assert "there is no candidate to measure" in trajectory.turns[0].error  # its refusal, told to the model
    assert trajectory.turns[2].observation.startswith("Measured in pixels: ")


def test_without_the_entry_the_tool_does_not_exist() -> None:
    assert "measure" not in TOOLS and "measure" not in system_prompt("pixels", 6)
    parsed = parse_turn(format_call(Measure()))
    assert parsed.error is not None and parsed.error.kind == "unknown_tool"


def test_every_turn_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph parses a turn's text; the event, the record and the policy's next turn reuse that parse."""
    calls = []
    original = parser.parse_turn

    def counted(text: object) -> parser.ParsedTurn:
        calls.append(text)
        return original(text)

    import sys

    for module in list(sys.modules.values()):
        if getattr(module, "parse_turn", None) is original:
            monkeypatch.setattr(module, "parse_turn", counted)
    image = np.zeros((180, 240, 3), np.uint8)
    image[100:110, 150:160] = (220, 40, 40)
    truth = np.zeros((180, 240), bool)
    truth[100:110, 150:160] = True
    agent = Agent(OraclePolicy(max_side=224), build_segmenter("box"), EpisodeConfig(max_turns=8))

    async def stream() -> list:
        return [item async for item in agent.stream(image, "the red square", ground_truth=truth)]

    items = asyncio.run(stream())
    turns = items[-1].trajectory.turns
    assert len(turns) >= 3 and len(calls) == len(turns)
    assert [event.call_text for event in items[:-1]] == [format_call(original(t.raw_text).action) for t in turns]
