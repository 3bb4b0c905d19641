"""The words the policy is given."""

from __future__ import annotations

import json
import re

import pytest

from segloop.agent.actions import tool_schemas
from segloop.agent.prompts import error_text, first_user_text, follow_up_text, observation_text, system_prompt
from segloop.tools.views import full_view


def test_system_prompt_holds_the_tool_schemas_in_tools_tags():
    text = system_prompt("pixels", max_turns=6)
    block = re.search(r"<tools>\n(.*)\n</tools>", text, re.DOTALL).group(1)
    assert [json.loads(line) for line in block.splitlines()] == tool_schemas()
    assert "<think>" in text and "<tool_call>" in text and "6 turns" in text
    assert "integer pixels of the image you were shown" in text


def test_frames_are_described_differently():
    assert "0 to 1000" in system_prompt("norm1000", 8)
    assert "0 to 1000" not in system_prompt("pixels", 8)
    with pytest.raises(ValueError, match="frame"):
        system_prompt("inches", 8)  # type: ignore[arg-type]


def test_user_and_observation_texts_state_the_view():
    view = full_view(2000, 1000, max_side=448)
    assert first_user_text("the cat", view) == (
        "Request: the cat\nThe image is shown as view 448x224 pixels, showing original region [0, 0, 2000, 1000].")
    assert follow_up_text("the dog", view).startswith(
        "New request: the dog\nLook again: the candidate mask is cleared. Current view 448x224")
    text = observation_text("Zoomed out.", view, 3)
    assert text.startswith("Zoomed out.\n") and text.endswith("Turns left: 3.") and "448x224" in text
    assert error_text("bad box") == "Error: bad box"
