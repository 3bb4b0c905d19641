"""The tools as a table: one class per tool holds its arguments (a pydantic model: the JSON schema the model
is shown, and the check of what it writes), what it does (``run``, on the episode's ``ToolEnv``) and its
clause in the system prompt (``usage``); ``TOOLS`` maps each name to its class, and the parser
(``agent.parser``), the prompts and the graph (``agent.episode``) read only the table. A new tool is a class
here and its entry in ``TOOLS``.

Coordinates in the arguments are in the frame of the image the model was shown for the current view; the
view code (``tools.views``) maps them to original pixels. A call a tool cannot carry out raises
``ViewError``, ``SegmenterError`` or ``ValueError``, worded for the model: the episode answers it with the
reason, and the turn is spent.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from segloop.tools.overlay import draw_prompt
from segloop.tools.segmenters import Prompt
from segloop.tools.views import View, ViewStack, check_point

Number = float


class Observation(NamedTuple):
    """What a tool answers: its result line and the picture shown with it (None: the current view)."""

    text: str
    picture: np.ndarray | None = None


class ToolEnv(Protocol):
    """What a tool may read and change of its episode (the graph gives it, one per turn)."""

    image: np.ndarray  # the original image
    views: ViewStack  # the view stack; zooms push and pop it
    candidate: np.ndarray | None  # the candidate mask (image-sized); segment sets it
    submitted: bool
    no_target: bool

    async def render(self, view: View) -> np.ndarray:
        """The view at the size the policy is shown it (shared: draw on a copy)."""
        ...

    async def overlay(self, view: View) -> np.ndarray:
        """The candidate drawn over the view (``tools.overlay.draw_mask``; shared: draw on a copy)."""
        ...

    async def describe(self, view: View) -> str:
        """The candidate's statistics in ``view``, in words for the model."""
        ...

    async def segment(self, view: View, prompt: Prompt) -> np.ndarray:
        """The segmenter's mask (image-sized) for a prompt in original pixels, on ``view``'s pixels."""
        ...


def _finite(values: list[float], what: str) -> list[float]:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"{what} must hold finite numbers")
    return values


class Action(BaseModel):
    """One call of a tool. Subclasses set ``name`` (a literal: the tool's name), their argument fields, their
    docstring (the schema's description), ``usage`` and ``run``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    # The tool's clause in the system prompt's how-to sentence ("" when its description says enough).
    usage: ClassVar[str] = ""

    def arguments(self) -> dict[str, Any]:
        """The arguments as a canonical call writes them (optional ones at their defaults left out)."""
        return self.model_dump(exclude={"name"}, exclude_none=True)

    async def run(self, env: ToolEnv) -> Observation:
        raise NotImplementedError


class ZoomIn(Action):
    """Show the region bbox_2d of the current view at full input size."""

    name: Literal["zoom_in"] = "zoom_in"
    bbox_2d: list[Number] = Field(min_length=4, max_length=4,
                                  description="[x1, y1, x2, y2] in the current view's frame")
    usage: ClassVar[str] = "zoom_in on the region where the target is when it is small"

    _check = field_validator("bbox_2d")(lambda v: _finite(v, "bbox_2d"))

    async def run(self, env: ToolEnv) -> Observation:
        view = env.views.zoom_in(self.bbox_2d)
        return Observation(f"Zoomed in on original region {list(view.box.as_tuple())}.", await env.render(view))


class ZoomOut(Action):
    """Go back to the previous view."""

    name: Literal["zoom_out"] = "zoom_out"

    async def run(self, env: ToolEnv) -> Observation:
        return Observation("Zoomed out.", await env.render(env.views.zoom_out()))


class Segment(Action):
    """Run SAM2 in the current view with a box and/or points; the result becomes the candidate mask."""

    name: Literal["segment"] = "segment"
    bbox_2d: list[Number] | None = Field(default=None, min_length=4, max_length=4,
                                         description="[x1, y1, x2, y2] around the target, current view's frame")
    points_2d: list[list[Number]] | None = Field(default=None, description="[[x, y], ...] in the current view's frame")
    point_labels: list[int] | None = Field(default=None, description="1 = on the target, 0 = background; one per point")
    usage: ClassVar[str] = ("segment it with a box around it (add points: label 1 on the target, 0 on background, "
                            "to correct a mask)")

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

    def arguments(self) -> dict[str, Any]:
        arguments = super().arguments()
        if not self.points_2d:
            arguments.pop("point_labels", None)
        return arguments

    async def run(self, env: ToolEnv) -> Observation:
        view = env.views.current
        box = view.box_to_original(self.bbox_2d) if self.bbox_2d is not None else None
        points = tuple(view.to_original(*check_point(p, view)) for p in self.points_2d or [])
        labels = tuple(self.point_labels or [])
        # Points correct the current candidate (SAM's mask input); a box alone starts afresh.
        hint = env.candidate if points else None
        mask = await env.segment(view, Prompt(box=box, points=points, point_labels=labels, mask=hint))
        env.candidate = mask
        overlay = (await env.overlay(view)).copy()  # the inspection of this candidate shows it without the prompt
        draw_prompt(overlay, view, box, points, labels)
        return Observation(f"Segmented: {await env.describe(view)}.", overlay)


class InspectMask(Action):
    """Draw the candidate mask over the current view and report its statistics."""

    name: Literal["inspect_mask"] = "inspect_mask"
    usage: ClassVar[str] = "inspect_mask to check the candidate mask drawn over the view"

    async def run(self, env: ToolEnv) -> Observation:
        if env.candidate is None:
            raise ValueError("there is no candidate mask yet; call segment first")
        view = env.views.current
        return Observation(f"Candidate: {await env.describe(view)}.", await env.overlay(view))


class Submit(Action):
    """Answer with the candidate mask, or with an empty mask when there is no such object."""

    name: Literal["submit"] = "submit"
    no_target: bool = False
    usage: ClassVar[str] = ("submit when it covers exactly the target. If there is no such object, call submit "
                            "with no_target true")

    def arguments(self) -> dict[str, Any]:
        return {"no_target": True} if self.no_target else {}

    async def run(self, env: ToolEnv) -> Observation:
        env.submitted, env.no_target = True, self.no_target
        if self.no_target:
            return Observation("Submitted: no such object (empty mask).")
        if env.candidate is None:
            return Observation("Submitted an empty mask (there was no candidate).")
        return Observation(f"Submitted the candidate: {await env.describe(env.views.current)}.")


# The table: the tools a policy is offered, in the order the system prompt lists them.
TOOLS: dict[str, type[Action]] = {tool.model_fields["name"].default: tool
                                  for tool in (ZoomIn, ZoomOut, Segment, InspectMask, Submit)}


def tool_schemas() -> list[dict[str, Any]]:
    """The tools in the OpenAI / chat-template ``tools=`` format (a fresh copy each call)."""
    return json.loads(_tool_schemas_json())


@functools.cache
def _tool_schemas_json() -> str:
    # Built once: pydantic's schema generation costs ~10 ms, paid by every episode's system prompt.
    schemas = []
    for name, tool in TOOLS.items():
        schema = tool.model_json_schema()
        properties = {k: v for k, v in schema.get("properties", {}).items() if k != "name"}
        for prop in properties.values():
            prop.pop("title", None)
        required = [k for k in schema.get("required", []) if k != "name"]
        schemas.append({
            "type": "function",
            "function": {
                "name": name,
                "description": (tool.__doc__ or "").strip(),
                "parameters": {"type": "object", "properties": properties, "required": required},
            },
        })
    return json.dumps(schemas)
