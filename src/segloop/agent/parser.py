"""The parser of model text, and the canonical text of a call.

A turn is optional ``<think>...</think>`` and one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(the Hermes / Qwen2.5-VL format). The last complete tool call wins; its name picks the tool in
``agent.actions.TOOLS``, whose model checks the arguments. Every failure becomes an ``ActionError`` whose
message tells the model what to write instead; parsing never raises anything else, whatever the text (model
text is hostile input: a 5000-digit integer, nesting thousands deep, a megabyte of openings), and takes time
linear in its length.

What is echoed of a turn (back to the model in later requests, into the records and the report) is cut to
``ECHO_CHARS`` by ``echo``: a huge argument costs one turn, not every request after it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from segloop.agent.actions import TOOLS, Action


@dataclass(frozen=True)
class ActionError:
    """Why a turn's text is not a valid action; ``message`` is shown to the model."""

    kind: Literal["no_tool_call", "bad_json", "unknown_tool", "bad_arguments"]
    message: str


@dataclass(frozen=True)
class ParsedTurn:
    """A turn's text split into its reasoning and its action (or the error that replaces it); ``raw_call`` is
    the body of its last ``<tool_call>`` as written."""

    thought: str | None = None
    action: Action | None = None
    error: ActionError | None = None
    raw_call: str | None = None

    @property
    def call_text(self) -> str | None:
        """The call as a policy should have written it, or as written (``echo``) when it is not a valid action."""
        if self.action is not None:
            return format_call(self.action)
        return None if self.raw_call is None else echo(self.raw_call)


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# The most of a turn echoed back: far more than any call or thought a policy writes within its token budget.
ECHO_CHARS = 4000
# Integers longer than this are read as floats (Python refuses to convert one of over 4300 digits, and a float
# that large is infinite, which the tools refuse with a reason).
_INT_DIGITS = 18


def _json_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= _INT_DIGITS else float(text)


def json_value(text: str) -> Any:
    """``text`` read as JSON the way model text is read (long integers as floats, see ``_INT_DIGITS``); raises
    ``ValueError`` for anything that is not JSON, nesting too deep for Python included."""
    try:
        return json.loads(text, parse_int=_json_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def last_call(text: str) -> str | None:
    """The body of the last complete ``<tool_call>...</tool_call>`` (calls are matched left to right, each
    opening with the first closing after it), or None. Linear in the text's length."""
    body = None
    position = 0
    while (start := text.find(CALL_OPEN, position)) >= 0:
        end = text.find(CALL_CLOSE, start + len(CALL_OPEN))
        if end < 0:
            break
        body = text[start + len(CALL_OPEN):end]
        position = end + len(CALL_CLOSE)
    return body


def call_body(raw_call: str) -> str:
    """A call's JSON, without a Markdown code fence (```json ... ```) some models put around it."""
    body = raw_call.strip()
    if len(body) >= 6 and body.startswith("```") and body.endswith("```"):
        body = body[3:-3]
        body = body[4:] if body.startswith("json") else body
        body = body.strip()
    return body


def echo(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` as it is echoed back and recorded: whole, or its start and end around a note of how much was cut
    (the end holds the call of a turn whose thought ran long)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} …[{len(text) - 2 * half} characters cut]… {text[-half:]}"


def format_call(action: Action) -> str:
    """The canonical text of an action, as a policy should write it."""
    payload = json.dumps({"name": action.name, "arguments": _integers(action.arguments())}, separators=(", ", ": "))
    return f"<tool_call>{payload}</tool_call>"


def _integers(value: Any) -> Any:
    """Whole floats as ints, so calls print as a model writes them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    return value


def parse_turn(text: Any) -> ParsedTurn:
    """Split a model's turn into thought and action; never raises."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    think = _THINK.search(text)
    thought = echo(think.group(1).strip()) if think else None
    body = last_call(text)
    if body is None:
        hint = ("the <tool_call> is not closed; end it with </tool_call>" if CALL_OPEN in text
                else "write exactly one <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>")
        error = ActionError(kind="no_tool_call", message=f"No tool call found: {hint}.")
        return ParsedTurn(thought=thought, error=error)
    raw = body.strip()
    try:
        payload = json_value(call_body(raw))
    except ValueError as exc:
        msg = f"The tool call is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})."
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="bad_json", message=msg))
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        msg = 'The tool call must be a JSON object {"name": <tool>, "arguments": {...}}.'
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="bad_json", message=msg))
    name = payload["name"]
    tool = TOOLS.get(name)
    if tool is None:
        msg = f"Unknown tool {name[:40]!r}; the tools are: {', '.join(TOOLS)}."
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="unknown_tool", message=msg))
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some servers send arguments as a JSON string
        try:
            arguments = json_value(arguments)
        except ValueError:
            arguments = None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        msg = f"The arguments of {name} must be a JSON object."
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="bad_arguments", message=msg))
    try:
        action = tool.model_validate({**_integers(arguments), "name": name})
    except Exception as exc:  # whatever the arguments make a validator raise is the model's error
        msg = f"Bad arguments for {name}: {_describe_validation(exc)}."
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="bad_arguments", message=msg))
    return ParsedTurn(thought=thought, action=action, raw_call=raw)


def _describe_validation(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)[:160]
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc or 'arguments'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
