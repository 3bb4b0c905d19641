"""The action schema and the parser of model text: exact results on known turns, and fuzzing that it
never raises on any text or any JSON inside a tool call."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from segloop.agent.actions import TOOLS, InspectMask, Segment, Submit, ZoomIn, ZoomOut, tool_schemas
from segloop.agent.parser import format_call, parse_turn


def test_schemas_name_every_tool_with_its_arguments():
    schemas = {s["function"]["name"]: s["function"] for s in tool_schemas()}
    assert set(schemas) == set(TOOLS) == {"zoom_in", "zoom_out", "segment", "inspect_mask", "submit"}
    assert schemas["zoom_in"]["parameters"]["required"] == ["bbox_2d"]
    assert set(schemas["segment"]["parameters"]["properties"]) == {"bbox_2d", "points_2d", "point_labels"}
    assert schemas["segment"]["parameters"]["required"] == []
    assert "no_target" in schemas["submit"]["parameters"]["properties"]
    assert all(s["description"] for s in schemas.values())
    json.dumps(tool_schemas())  # serialisable as it goes into the prompt


def test_parse_a_well_formed_turn():
    text = ('<think>the disc is top right</think>\n<tool_call>{"name": "segment", "arguments": '
            '{"bbox_2d": [1, 2, 30, 40], "points_2d": [[5, 6]]}}</tool_call>')
    parsed = parse_turn(text)
    assert parsed.thought == "the disc is top right" and parsed.error is None
    assert isinstance(parsed.action, Segment)
    assert parsed.action.bbox_2d == [1, 2, 30, 40] and parsed.action.point_labels == [1]


def test_last_complete_call_wins_and_arguments_may_be_a_json_string():
    text = ('<tool_call>{"name": "zoom_out", "arguments": {}}</tool_call> then '
            '<tool_call>{"name": "zoom_in", "arguments": "{\\"bbox_2d\\": [0, 0, 9, 9]}"}</tool_call>')
    assert isinstance(parse_turn(text).action, ZoomIn)
    fenced = '<tool_call>```json\n{"name": "inspect_mask", "arguments": {}}\n```</tool_call>'
    assert isinstance(parse_turn(fenced).action, InspectMask)


def test_errors_say_what_to_write():
    cases = {
        "just words": "no_tool_call",
        '<tool_call>{"name": "submit"': "no_tool_call",
        "<tool_call>{oops}</tool_call>": "bad_json",
        "<tool_call>[1, 2]</tool_call>": "bad_json",
        '<tool_call>{"name": "paint", "arguments": {}}</tool_call>': "unknown_tool",
        '<tool_call>{"name": "zoom_in", "arguments": 7}</tool_call>': "bad_arguments",
        '<tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2]}}</tool_call>': "bad_arguments",
        '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [1, 2, 3, NaN]}}</tool_call>': "bad_arguments",
        '<tool_call>{"name": "segment", "arguments": {"points_2d": [[1, 2]], "point_labels": [2]}}</tool_call>':
            "bad_arguments",
        '<tool_call>{"name": "submit", "arguments": {"bogus": 1}}</tool_call>': "bad_arguments",
    }
    for text, kind in cases.items():
        parsed = parse_turn(text)
        assert parsed.action is None and parsed.error.kind == kind, text
        assert parsed.error.message
    assert "not closed" in parse_turn('<tool_call>{"name": "submit"').error.message


def test_format_call_round_trips():
    actions = [ZoomIn(bbox_2d=[1, 2, 3, 4]), ZoomOut(), InspectMask(), Submit(), Submit(no_target=True),
               Segment(bbox_2d=[1.0, 2.0, 3.0, 4.0]), Segment(points_2d=[[1, 2], [3, 4]], point_labels=[1, 0])]
    for action in actions:
        text = format_call(action)
        assert parse_turn(text).action == action
    assert format_call(Segment(bbox_2d=[1.0, 2.0, 3.0, 4.0])) == \
        '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_without_raising(text):
    parsed = parse_turn(text)
    assert (parsed.action is None) != (parsed.error is None)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*TOOLS, "other"]), json_values, st.text(max_size=30))
def test_any_json_in_a_tool_call_parses_without_raising(name, arguments, prefix):
    payload = json.dumps({"name": name, "arguments": arguments})
    parsed = parse_turn(f"{prefix}<tool_call>{payload}</tool_call>")
    assert (parsed.action is None) != (parsed.error is None)
    if parsed.action is not None:
        assert parse_turn(format_call(parsed.action)).action == parsed.action


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_payload_parses_without_raising(payload):
    parsed = parse_turn(f"<tool_call>{json.dumps(payload)}</tool_call>")
    assert (parsed.action is None) != (parsed.error is None)
