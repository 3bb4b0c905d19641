"""The parser of model text, and the canonical text of a call.

A turn is optional ``<think>...</think>`` and one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(the Hermes / Qwen2.5-VL format). The last complete tool call wins; its name picks the tool in
``agent.actions.TOOLS``, whose model checks the arguments. Every failure becomes an ``ActionError`` whose
message tells the model what to write instead; parsing never raises anything else.
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
        """The call as a policy should have written it, or as written when it is not a valid action."""
        return format_call(self.action) if self.action is not None else self.raw_call


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


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
    thought = think.group(1).strip() if think else None
    calls = _CALL.findall(text)
    if not calls:
        hint = ("the <tool_call> is not closed; end it with </tool_call>" if "<tool_call>" in text
                else "write exactly one <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>")
        error = ActionError(kind="no_tool_call", message=f"No tool call found: {hint}.")
        return ParsedTurn(thought=thought, error=error)
    raw = calls[-1].strip()
    fenced = _FENCE.match(raw)
    body = fenced.group(1) if fenced else raw
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
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
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            arguments = None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        msg = f"The arguments of {name} must be a JSON object."
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="bad_arguments", message=msg))
    try:
        action = tool.model_validate({**_integers(arguments), "name": name})
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
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
