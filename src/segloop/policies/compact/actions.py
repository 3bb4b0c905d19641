"""The compact policy's action space: a turn's decision as parts, and parts as ``<tool_call>`` text.

A decision is six parts (``PARTS``): the tool; the grid cell of the object the call is about (its centre);
that object's box width and height as size bins (log-spaced shares of the view's side, so every box is
valid); whether to add a point and of which kind (none, on the target, on the background); the point's
cell. Parts a tool does not use are -1. A zoom names the object to zoom onto exactly as a segment names the
object to segment, and the zoom written is a square ``zoom_context`` times the object's larger side around
it (the expert's zoom rule), so the centre always means "where the object is" and the bins "how big it is".

Boxes are written a little larger than the bins say (half a cell each side): the centre is only known to a
cell, and a box that cuts into the object costs far more than one with a margin (measured with GrabCut on
the synthetic world: a box 10 % too large loses nothing, 10 % too small loses a third of the IoU).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from segloop.agent.actions import Segment, Submit, ZoomIn, ZoomOut
from segloop.agent.parser import format_call, parse_turn

if TYPE_CHECKING:
    from segloop.tools.views import View

# "submit_no_target" is submit(no_target=true). The compact policy never calls inspect_mask: the
# candidate mask is one of its inputs.
TOOLS: tuple[str, ...] = ("zoom_in", "zoom_out", "segment", "submit", "submit_no_target")
PARTS: tuple[str, ...] = ("tool", "centre", "width", "height", "point", "point_cell")
POINT_KINDS: tuple[str, ...] = ("none", "positive", "negative")
TOOL = {name: index for index, name in enumerate(TOOLS)}
PART = {name: index for index, name in enumerate(PARTS)}
BOXED = (TOOL["zoom_in"], TOOL["segment"])


def size_shares(size_bins: int, min_share: float) -> np.ndarray:
    """Box side (share of the view's side) of each size bin, log-spaced from ``min_share`` to 1."""
    return np.exp(np.linspace(math.log(min_share), 0.0, size_bins))


def size_bin(share: float, shares: np.ndarray) -> int:
    """The smallest bin whose side holds ``share`` (the last bin for anything larger)."""
    return int(min(np.searchsorted(shares, share * (1 - 1e-6)), len(shares) - 1))


def unused() -> torch.Tensor:
    return torch.full((len(PARTS),), -1, dtype=torch.long)


def named_box(parts: torch.Tensor, view: View, grid: int, shares: np.ndarray) -> tuple[float, float, float, float]:
    """The object box (model frame of ``view``) that a zoom's or segment's parts name, with its margin."""
    cell = int(parts[PART["centre"]])
    cx, cy = (cell % grid + 0.5) * view.width / grid, (cell // grid + 0.5) * view.height / grid
    half_w = shares[int(parts[PART["width"]])] * view.width / 2 + 0.5 * view.width / grid
    half_h = shares[int(parts[PART["height"]])] * view.height / 2 + 0.5 * view.height / grid
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def _clamped(box: tuple[float, float, float, float], view: View) -> list[int]:
    x1, y1, x2, y2 = box
    left = min(max(math.floor(x1), 0), view.width - 1)
    top = min(max(math.floor(y1), 0), view.height - 1)
    return [left, top, max(min(math.ceil(x2), view.width), left + 1), max(min(math.ceil(y2), view.height), top + 1)]


def call_text(parts: torch.Tensor, view: View, grid: int, shares: np.ndarray, zoom_context: float) -> str:
    """The ``<tool_call>`` text of a decision's parts in ``view``'s frame (integer model pixels)."""
    tool = TOOLS[int(parts[PART["tool"]])]
    if tool == "zoom_out":
        return format_call(ZoomOut())
    if tool in ("submit", "submit_no_target"):
        return format_call(Submit(no_target=tool == "submit_no_target"))
    x1, y1, x2, y2 = named_box(parts, view, grid, shares)
    if tool == "zoom_in":
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        half = zoom_context * max(x2 - x1, y2 - y1) / 2
        return format_call(ZoomIn(bbox_2d=_clamped((cx - half, cy - half, cx + half, cy + half), view)))
    kind = int(parts[PART["point"]])
    points = labels = None
    if kind > 0:
        cell = int(parts[PART["point_cell"]])
        points = [[min(math.floor((cell % grid + 0.5) * view.width / grid), view.width - 1),
                   min(math.floor((cell // grid + 0.5) * view.height / grid), view.height - 1)]]
        labels = [1 if POINT_KINDS[kind] == "positive" else 0]
    return format_call(Segment(bbox_2d=_clamped((x1, y1, x2, y2), view), points_2d=points, point_labels=labels))


def cell_of(x: float, y: float, view: View, grid: int) -> int:
    """The grid cell holding a point of ``view``'s model frame."""
    cx = min(max(math.floor(x * grid / view.width), 0), grid - 1)
    cy = min(max(math.floor(y * grid / view.height), 0), grid - 1)
    return cy * grid + cx


def parts_of(text: str, view: View, grid: int, shares: np.ndarray, zoom_context: float,
             zoom_target: list[float] | None = None) -> torch.Tensor:
    """An expert's turn as parts: a box as the cell of its centre and the bins that hold its sides; a zoom
    names ``zoom_target`` (the object's box in the view's frame, which the compact expert gives) or else its
    box shrunk ``zoom_context`` times; the first point as its kind and cell. Raises ``ValueError`` for a
    text that is no valid action or a call the compact policy cannot write (inspect_mask, points only)."""
    parsed = parse_turn(text)
    if parsed.action is None:
        raise ValueError(f"the expert's turn is not a valid action: {parsed.error.message if parsed.error else text}")
    action = parsed.action
    parts = unused()
    if isinstance(action, Submit):
        parts[PART["tool"]] = TOOL["submit_no_target" if action.no_target else "submit"]
        return parts
    if action.name not in TOOL:
        raise ValueError(f"the compact policy does not call {action.name}")
    parts[PART["tool"]] = TOOL[action.name]
    if isinstance(action, ZoomOut):
        return parts
    assert isinstance(action, (ZoomIn, Segment))
    if action.bbox_2d is None:
        raise ValueError("the compact policy always segments with a box; the expert gave points only")
    x1, y1, x2, y2 = (float(v) for v in action.bbox_2d)
    shrink = 1.0
    if isinstance(action, ZoomIn):
        if zoom_target is not None:
            x1, y1, x2, y2 = zoom_target
        else:
            shrink = zoom_context
    parts[PART["centre"]] = cell_of((x1 + x2) / 2, (y1 + y2) / 2, view, grid)
    parts[PART["width"]] = size_bin((x2 - x1) / shrink / view.width, shares)
    parts[PART["height"]] = size_bin((y2 - y1) / shrink / view.height, shares)
    if isinstance(action, Segment):
        points = list(zip(action.points_2d or [], action.point_labels or [], strict=True))
        parts[PART["point"]] = 0
        if points:
            (px, py), label = points[0]
            parts[PART["point"]] = POINT_KINDS.index("positive" if label == 1 else "negative")
            parts[PART["point_cell"]] = cell_of(px, py, view, grid)
    return parts
