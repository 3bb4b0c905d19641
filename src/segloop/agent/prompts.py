"""The words of an episode: the system prompt, the first user turn, and each observation's text.

Tool schemas travel inside the system prompt in the Qwen/Hermes ``<tools>`` form, so every policy
(in-process chat template, OpenAI-compatible server, scripted) sees the same text; the task sentence is
made of each tool's ``usage`` clause (``agent.actions.TOOLS``).
"""

from __future__ import annotations

import json

from segloop.agent.actions import TOOLS, tool_schemas
from segloop.tools.views import CoordFrame, View


def _task(max_turns: int) -> str:
    """What to do, with each tool's ``usage`` clause in the table's order."""
    clauses = [tool.usage for tool in TOOLS.values() if tool.usage]
    steps = ", ".join(clauses[:-1]) + f", and {clauses[-1]}" if len(clauses) > 1 else clauses[0]
    return (
        "You segment what the user asks for in an image by calling tools, one call per turn. "
        f"Look at the image, {steps}. You have at most {max_turns} turns; when they run out, the current "
        "candidate mask is submitted."
    )


_FRAMES: dict[str, str] = {
    "pixels": (
        "Coordinates are integer pixels of the image you were shown for the current view: x from 0 (left) to its "
        "width, y from 0 (top) to its height. After zoom_in you are shown the zoomed region, and coordinates "
        "refer to that new image."
    ),
    "norm1000": (
        "Coordinates are integers from 0 to 1000 across the image you were shown for the current view: (0, 0) is "
        "its top-left corner and (1000, 1000) its bottom-right, whatever its size. After zoom_in they refer to "
        "the zoomed region."
    ),
}

_TOOLS_HEADER = "# Tools\n\nYou may call one of these functions:\n<tools>\n"

_FORMAT = (
    "Each turn, think briefly inside <think>...</think>, then write exactly one tool call:\n"
    '<tool_call>{{"name": <tool name>, "arguments": <arguments as a JSON object>}}</tool_call>'
)


def system_prompt(frame: CoordFrame, max_turns: int) -> str:
    """The system message: task, the tools' JSON schemas in ``<tools>`` tags, coordinate frame, format."""
    if frame not in _FRAMES:
        raise ValueError(f"unknown coordinate frame {frame!r}; use 'pixels' or 'norm1000'")
    tools = "\n".join(json.dumps(schema) for schema in tool_schemas())
    return "\n\n".join([
        _task(max_turns),
        f"{_TOOLS_HEADER}{tools}\n</tools>",
        _FRAMES[frame],
        _FORMAT.format(),
    ])


def without_tool_schemas(system: str) -> str:
    """The system prompt without its ``<tools>`` section, for a server that is given the schemas through the
    API's ``tools=`` parameter (its chat template writes them); any other text is returned unchanged."""
    start = system.find(_TOOLS_HEADER)
    end = system.find("</tools>", start)
    if start < 0 or end < 0:
        return system
    return (system[:start].rstrip("\n") + "\n\n" + system[end + len("</tools>"):].lstrip("\n")).strip("\n")


def first_user_text(query: str, view: View) -> str:
    """The first user turn (shown with the full-image view): the request and the view it is seen in."""
    return f"Request: {query}\nThe image is shown as {view.describe()}."


def follow_up_text(query: str, view: View) -> str:
    """A later request in the same conversation (same image): it starts afresh from the whole image, with no
    candidate mask; the earlier turns stay in the conversation."""
    return f"New request: {query}\nLook again: the candidate mask is cleared. Current {view.describe()}."


def observation_text(result: str, view: View, turns_left: int) -> str:
    """A tool's answer: what it did (or the error), the current view, and the turns left."""
    return f"{result}\nCurrent {view.describe()}. Turns left: {turns_left}."


def error_text(message: str) -> str:
    """A refused call: the reason, worded for the model to act on."""
    return f"Error: {message}"
