"""Model text is hostile input (issue 18 item 3): the parser never raises and takes linear time, whatever the text
or the structured ``tool_calls`` a server sends; a turn is an action or an invalid-action observation; what is
echoed back of a huge turn is cut.

Property tests (hypothesis) over arbitrary strings, call-shaped strings with JSON-like bodies (integers of
thousands of digits, ``NaN``, ``1e999``, deep nesting, unknown keys), and server messages with structured calls;
then the same texts through an episode, ``segloop run`` and ``segloop batch``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.openai_server import OpenAIServer, scripted_turns
from support.policies import Scripted

from segloop.agent.actions import TOOLS, Submit
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import ECHO_CHARS, ParsedTurn, format_call, parse_turn
from segloop.cli import main as cli
from segloop.evaluation.batch import read_finished
from segloop.policies.chat import turn_from_message
from segloop.tools.images import save_image
from segloop.tools.segmenters import build_segmenter

HUGE = "9" * 5000  # Python refuses to convert an integer of more than 4300 digits
HUGE_CALL = f'<tool_call>{{"name": "zoom_in", "arguments": {{"bbox_2d": [{HUGE}, 0, 10, 10]}}}}</tool_call>'
NO_TARGET = format_call(Submit(no_target=True))

# JSON-like text: well-formed or not, with the numbers and shapes that break naive readers.
numbers = st.one_of(st.integers(-10**6, 10**6).map(str), st.text("0123456789", min_size=1, max_size=6000),
                    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1.5e-400", "0x10", "01"]))
strings = st.text(max_size=30).map(json.dumps)
keys = st.sampled_from(["name", "arguments", "bbox_2d", "points_2d", "point_labels", "no_target", "x"])
names = st.sampled_from([*TOOLS, "", "zoom", "<|im_start|>"]).map(json.dumps)
json_text = st.recursive(
    st.one_of(numbers, strings, names, st.sampled_from(["true", "false", "null", "", "{", "]"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6).map(lambda items: "[" + ", ".join(items) + "]"),
        st.dictionaries(keys, inner, max_size=4).map(
            lambda d: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in d.items()) + "}")),
    max_leaves=20)
calls = st.builds(lambda name, arguments: f'{{"name": {name}, "arguments": {arguments}}}', names, json_text)
turns = st.builds(lambda thought, body, tail: f"<think>{thought}</think><tool_call>{body}</tool_call>{tail}",
                  st.text(max_size=40), st.one_of(calls, json_text), st.sampled_from(["", "<tool_call>", "</think>"]))


def _is_turn(parsed: ParsedTurn) -> bool:
    """An action or an error for the model, never both, never neither."""
    return (parsed.action is None) != (parsed.error is None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), turns, calls.map(lambda body: f"<tool_call>{body}</tool_call>")))
def test_any_text_is_an_action_or_an_error_for_the_model(text: str) -> None:
    parsed = parse_turn(text)
    assert _is_turn(parsed)
    if parsed.action is not None:  # a valid action reads back as itself
        assert parse_turn(format_call(parsed.action)).action == parsed.action
    assert parsed.call_text is None or len(parsed.call_text) <= ECHO_CHARS + 40


tool_call = st.fixed_dictionaries({
    "id": st.text(max_size=8), "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.one_of(st.sampled_from(list(TOOLS)), st.text(max_size=10),
                                                         st.none(), st.integers()),
                                       "arguments": st.one_of(json_text, st.none(), st.integers(),
                                                              st.dictionaries(keys, st.one_of(
                                                                  st.integers(), st.floats(), st.text(max_size=5),
                                                                  st.lists(st.integers(), max_size=5)),
                                                                  max_size=3))})})
text_parts = st.lists(st.one_of(st.text(max_size=10),
                                st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)})),
                      max_size=3)
messages = st.fixed_dictionaries({
    "content": st.one_of(st.none(), st.text(max_size=60), turns, text_parts),
    "tool_calls": st.one_of(st.none(), st.lists(tool_call, max_size=2), st.just("not a list"))},
    optional={"reasoning_content": st.one_of(st.text(max_size=20), st.none())})


@settings(max_examples=300, deadline=None)
@given(messages)
def test_any_server_message_reads_as_one_turn_the_parser_takes(message: dict) -> None:
    text, source = turn_from_message(message)
    assert isinstance(text, str) and source in ("content", "tool_calls", "none")
    assert _is_turn(parse_turn(text))


def test_the_texts_that_broke_the_parser() -> None:
    huge = parse_turn(HUGE_CALL)
    assert huge.action is None and huge.error.kind == "bad_arguments" and "finite" in huge.error.message
    deep = parse_turn("<tool_call>" + "[" * 100_000 + "</tool_call>")
    assert deep.error.kind == "bad_json"
    structured = turn_from_message({"content": None, "tool_calls": [{"type": "function", "function": {
        "name": "segment", "arguments": f'{{"bbox_2d": [0, 0, {HUGE}, 1]}}'}}]})
    assert parse_turn(structured[0]).error.kind == "bad_arguments"
    # Openings without a closing, a megabyte of them: linear, not quadratic (which took minutes).
    tic = time.perf_counter()
    assert parse_turn("<tool_call>" * 100_000).error.kind == "no_tool_call"
    assert parse_turn("<tool_call>```" + " " * 200_000 + "x```</tool_call>").error.kind == "bad_json"
    assert time.perf_counter() - tic < 5


def test_a_huge_turn_costs_one_turn_and_is_echoed_cut() -> None:
    """The model is answered with an error observation, its turn is echoed back (and recorded) cut to
    ``ECHO_CHARS``: later requests and the report do not carry a megabyte each."""
    box = "1, " * 100_000 + "1"
    huge = f'<think>{"why " * 50}</think><tool_call>{{"name": "zoom_in", "arguments": {{"bbox_2d": [{box}]}}}}'
    huge += "</tool_call>"
    seen: list[list[str]] = []

    class Watching(Scripted):
        async def act(self, context):
            seen.append([m.content for m in context.messages if m.role == "assistant"])
            return await super().act(context)

    agent = Agent(Watching([huge, NO_TARGET]), build_segmenter("box"), EpisodeConfig(max_turns=4))
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    trajectory = asyncio.run(agent.run(image, "the thing", episode_id="huge")).trajectory
    assert trajectory.no_target and trajectory.invalid_actions == 1
    first = trajectory.turns[0]
    assert first.error is not None and "bbox_2d" in first.error
    assert len(first.raw_text) < ECHO_CHARS + 100 < len(huge) and "characters cut" in first.raw_text
    assert first.raw_text.startswith("<think>why") and first.raw_text.endswith("1]}}</tool_call>")
    assert seen[1] == [first.raw_text]  # what the next request carries


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    image = np.full((160, 200, 3), 90, np.uint8)
    image[40:100, 60:140] = (200, 40, 40)
    return save_image(image, tmp_path / "photo.png")


def test_run_and_batch_answer_a_5000_digit_integer_with_an_observation(photo: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Today's failure: ``run`` exited 2 with a bare Python message and the batch recorded an *image* failure with 0
    turns. Now the turn is an invalid action, and the episode goes on to its answer."""
    with OpenAIServer(script=scripted_turns([HUGE_CALL, NO_TARGET])) as server:
        assert cli(["run", str(photo), "the red block", "--policy", "openai", "--model", "m", "--base-url",
                    server.base_url, "--out", str(tmp_path / "ep")]) == 0
        trajectory = json.loads((tmp_path / "ep" / "trajectory.json").read_text())
        assert trajectory["no_target"] and "finite" in trajectory["turns"][0]["error"]
        assert "turn 2:" in capsys.readouterr().out
        manifest = tmp_path / "manifest.jsonl"
        manifest.write_text(json.dumps({"id": "a", "image": photo.name, "query": "the red block", "mask": None}) + "\n")
        assert cli(["batch", "--data", str(manifest), "--policy", "openai", "--model", "m", "--base-url",
                    server.base_url, "--out", str(tmp_path / "batch"), "--quiet", "--no-overlays"]) == 0
    (record,) = read_finished(tmp_path / "batch" / "trajectories.jsonl")
    assert record.get("failure") is None and len(record["trajectory"]["turns"]) == 2
