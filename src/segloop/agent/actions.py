"""The actions a policy may take, their JSON schemas, and the parser of model text.

A turn is optional ``<think>...</think>`` and one ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(the Hermes / Qwen2.5-VL format). The last complete tool call wins. Every failure becomes an
``ActionError`` whose message tells the model what to write instead; parsing never raises anything else.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

Number = float


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(values: list[float], what: str) -> list[float]:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"{what} must hold finite numbers")
    return values


class ZoomIn(_Action):
    """Show the region bbox_2d of the current view at full input size."""

    name: Literal["zoom_in"] = "zoom_in"
    bbox_2d: list[Number] = Field(min_length=4, max_length=4,
                                  description="[x1, y1, x2, y2] in the current view's frame")

    _check = field_validator("bbox_2d")(lambda v: _finite(v, "bbox_2d"))


class ZoomOut(_Action):
    """Go back to the previous view."""

    name: Literal["zoom_out"] = "zoom_out"


class Segment(_Action):
    """Run SAM2 in the current view with a box and/or points; the result becomes the candidate mask."""

    name: Literal["segment"] = "segment"
    bbox_2d: list[Number] | None = Field(default=None, min_length=4, max_length=4,
                                         description="[x1, y1, x2, y2] around the target, current view's frame")
    points_2d: list[list[Number]] | None = Field(default=None, description="[[x, y], ...] in the current view's frame")
    point_labels: list[int] | None = Field(default=None, description="1 = on the target, 0 = background; one per point")

    @field_validator("bbox_2d")
    @classmethod
    def _box_finite(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else _finite(v, "bbox_2d")

    @field_validator("points_2d")
    @classmethod
    def _points_pairs(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is None:
            return None
        for point in v:
            if len(point) != 2:
                raise ValueError("each point in points_2d must be [x, y]")
            _finite(point, "points_2d")
        return v

    @model_validator(mode="after")
    def _prompt_given(self) -> Segment:
        if self.bbox_2d is None and not self.points_2d:
            raise ValueError("segment needs bbox_2d, points_2d, or both")
        n_points = len(self.points_2d or [])
        if self.point_labels is None:
            self.point_labels = [1] * n_points
        if len(self.point_labels) != n_points:
            raise ValueError(f"point_labels needs one label per point ({n_points}), got {len(self.point_labels)}")
        if any(label not in (0, 1) for label in self.point_labels):
            raise ValueError("point_labels must be 1 (target) or 0 (background)")
        return self


class InspectMask(_Action):
    """Draw the candidate mask over the current view and report its statistics."""

    name: Literal["inspect_mask"] = "inspect_mask"


class Submit(_Action):
    """Answer with the candidate mask, or with an empty mask when there is no such object."""

    name: Literal["submit"] = "submit"
    no_target: bool = False


Action = Annotated[ZoomIn | ZoomOut | Segment | InspectMask | Submit, Field(discriminator="name")]
ACTION_TYPES: tuple[type[_Action], ...] = (ZoomIn, ZoomOut, Segment, InspectMask, Submit)
TOOL_NAMES = tuple(t.model_fields["name"].default for t in ACTION_TYPES)
_ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)


def tool_schemas() -> list[dict[str, Any]]:
    """The tools in the OpenAI / chat-template ``tools=`` format (a fresh copy each call)."""
    return json.loads(_tool_schemas_json())


@functools.cache
def _tool_schemas_json() -> str:
    # Built once: pydantic's schema generation costs ~10 ms, paid by every episode's system prompt.
    schemas = []
    for action_type in ACTION_TYPES:
        schema = action_type.model_json_schema()
        properties = {k: v for k, v in schema.get("properties", {}).items() if k != "name"}
        for prop in properties.values():
            prop.pop("title", None)
        required = [k for k in schema.get("required", []) if k != "name"]
        schemas.append({
            "type": "function",
            "function": {
                "name": action_type.model_fields["name"].default,
                "description": (action_type.__doc__ or "").strip(),
                "parameters": {"type": "object", "properties": properties, "required": required},
            },
        })
    return json.dumps(schemas)


class ActionError(BaseModel):
    """Why a turn's text is not a valid action; ``message`` is shown to the model."""

    kind: Literal["no_tool_call", "bad_json", "unknown_tool", "bad_arguments"]
    message: str


class ParsedTurn(BaseModel):
    """A turn's text split into its reasoning and its action (or the error that replaces it)."""

    thought: str | None = None
    action: Action | None = None
    error: ActionError | None = None
    raw_call: str | None = None


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def format_call(action: _Action) -> str:
    """The canonical text of an action, as a policy should write it."""
    arguments = action.model_dump(exclude={"name"}, exclude_none=True)
    if isinstance(action, Segment) and not action.points_2d:
        arguments.pop("point_labels", None)
    if isinstance(action, Submit) and not action.no_target:
        arguments = {}
    payload = json.dumps({"name": action.name, "arguments": _integers(arguments)}, separators=(", ", ": "))
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
    if name not in TOOL_NAMES:
        msg = f"Unknown tool {name[:40]!r}; the tools are: {', '.join(TOOL_NAMES)}."
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
        action = _ACTION_ADAPTER.validate_python({**_integers(arguments), "name": name})
    except (ValidationError, ValueError, TypeError, RecursionError) as exc:
        problems = _describe_validation(exc)
        msg = f"Bad arguments for {name}: {problems}."
        return ParsedTurn(thought=thought, raw_call=raw, error=ActionError(kind="bad_arguments", message=msg))
    return ParsedTurn(thought=thought, action=action, raw_call=raw)


def _describe_validation(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)[:160]
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("zoom_in", "zoom_out", "segment",
                                                                         "inspect_mask", "submit"))
        parts.append(f"{loc or 'arguments'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
