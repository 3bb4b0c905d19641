"""Views: which region of the original image the model is looking at, and at what size.

A ``View`` is an integer pixel box of the original image (``x2``/``y2`` exclusive) plus the size the
model sees it at. Coordinates the model writes are in that model frame, either absolute model pixels
(``pixels``: Qwen2.5-VL, Seg-Zero, DeepEyes) or 0..1000 (``norm1000``: Qwen3-VL). This module is the
only place that maps between model frames and original pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

CoordFrame = Literal["pixels", "norm1000"]

# Qwen-VL merges 2x2 patches of 14 px: image sides that are multiples of 28 map to whole tokens.
SIDE_MULTIPLE = 28
DEFAULT_MAX_SIDE = 1024


class ViewError(ValueError):
    """A request about views that cannot be honoured; the message tells the model what to do instead."""


@dataclass(frozen=True)
class PixelBox:
    """An integer box of original-image pixels; ``x2`` and ``y2`` are exclusive."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x1, self.y1, self.x2, self.y2)


def model_size(region_width: int, region_height: int, max_side: int = DEFAULT_MAX_SIDE,
               upscale: bool = True) -> tuple[int, int]:
    """(width, height) at which a region is shown: longest side ``max_side`` rounded down to a multiple
    of 28, the other side in proportion and rounded to a multiple of 28 (at least 28). With ``upscale=False``
    a region smaller than that is not enlarged: its longest side is its own, rounded down to a multiple of
    28 (so a view never holds more pixels than the region, up to the rounding of the shorter side)."""
    long_side = max(SIDE_MULTIPLE, (max_side // SIDE_MULTIPLE) * SIDE_MULTIPLE)
    if not upscale:
        own = max(SIDE_MULTIPLE, (max(region_width, region_height) // SIDE_MULTIPLE) * SIDE_MULTIPLE)
        long_side = min(long_side, own)
    scale = long_side / max(region_width, region_height)

    def side(length: int) -> int:
        return max(SIDE_MULTIPLE, round(length * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE)

    if region_width >= region_height:
        return long_side, min(long_side, side(region_height))
    return min(long_side, side(region_width)), long_side


@dataclass(frozen=True)
class View:
    """A region of the original image and the model frame it is shown in."""

    box: PixelBox
    width: int
    height: int
    frame: CoordFrame = "pixels"

    @property
    def scale_x(self) -> float:
        """Model pixels per original pixel along x."""
        return self.width / self.box.width

    @property
    def scale_y(self) -> float:
        return self.height / self.box.height

    @property
    def frame_width(self) -> float:
        """Extent of the coordinate frame the model writes in (model pixels or 1000)."""
        return 1000.0 if self.frame == "norm1000" else float(self.width)

    @property
    def frame_height(self) -> float:
        return 1000.0 if self.frame == "norm1000" else float(self.height)

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """A point in the model frame as continuous original-image pixel coordinates."""
        return (
            self.box.x1 + x * self.box.width / self.frame_width,
            self.box.y1 + y * self.box.height / self.frame_height,
        )

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """Continuous original-image coordinates as a point in the model frame."""
        return (
            (x - self.box.x1) * self.frame_width / self.box.width,
            (y - self.box.y1) * self.frame_height / self.box.height,
        )

    def quantise(self, x: float, y: float) -> tuple[int, int]:
        """Original coordinates as the integer frame coordinates a model would write."""
        mx, my = self.to_model(x, y)
        return (
            int(min(max(round(mx), 0), self.frame_width)),
            int(min(max(round(my), 0), self.frame_height)),
        )

    def box_to_original(self, bbox: Sequence[float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = check_box(bbox, self)
        ox1, oy1 = self.to_original(x1, y1)
        ox2, oy2 = self.to_original(x2, y2)
        return ox1, oy1, ox2, oy2

    def describe(self) -> str:
        """One line a model can read: the frame's size and where the view sits in the image."""
        unit = "0..1000 normalised" if self.frame == "norm1000" else f"{self.width}x{self.height} pixels"
        b = self.box
        return f"view {unit}, showing original region [{b.x1}, {b.y1}, {b.x2}, {b.y2}]"


def full_view(image_width: int, image_height: int, max_side: int = DEFAULT_MAX_SIDE,
              frame: CoordFrame = "pixels", upscale: bool = True) -> View:
    """The root view: the whole image (``upscale``: see ``model_size``)."""
    if image_width < 1 or image_height < 1:
        raise ViewError(f"image has no pixels ({image_width}x{image_height})")
    width, height = model_size(image_width, image_height, max_side, upscale)
    return View(PixelBox(0, 0, image_width, image_height), width, height, frame)


def check_box(bbox: Sequence[float], view: View) -> tuple[float, float, float, float]:
    """Validate a model-frame box: four finite numbers, x1 < x2, y1 < y2, overlapping the view.
    Returns it clamped to the frame."""
    if isinstance(bbox, (str, bytes)) or not isinstance(bbox, Sequence) or len(bbox) != 4:
        raise ViewError("bbox_2d must be a list of four numbers [x1, y1, x2, y2]")
    try:
        x1, y1, x2, y2 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ViewError("bbox_2d must be a list of four numbers [x1, y1, x2, y2]") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ViewError("bbox_2d has a non-finite value; use integers inside the current view")
    fw, fh = view.frame_width, view.frame_height
    if x2 <= x1 or y2 <= y1:
        raise ViewError(f"bbox_2d [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is empty: need x1 < x2 and y1 < y2")
    if x2 <= 0 or y2 <= 0 or x1 >= fw or y1 >= fh:
        raise ViewError(
            f"bbox_2d [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the current view "
            f"(x in 0..{fw:g}, y in 0..{fh:g})"
        )
    return max(x1, 0.0), max(y1, 0.0), min(x2, fw), min(y2, fh)


def check_point(point: Sequence[float], view: View) -> tuple[float, float]:
    """Validate a model-frame point: two finite numbers inside the view."""
    if isinstance(point, (str, bytes)) or not isinstance(point, Sequence) or len(point) != 2:
        raise ViewError("each point must be a list of two numbers [x, y]")
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise ViewError("each point must be a list of two numbers [x, y]") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ViewError("a point has a non-finite value; use integers inside the current view")
    if not (0 <= x <= view.frame_width and 0 <= y <= view.frame_height):
        raise ViewError(
            f"point [{x:g}, {y:g}] lies outside the current view "
            f"(x in 0..{view.frame_width:g}, y in 0..{view.frame_height:g})"
        )
    return x, y


@dataclass(frozen=True)
class ZoomLimits:
    """How far zooming may go. ``min_side`` is the smallest region side in original pixels (smaller
    requests grow around their centre); ``max_zoom`` bounds how much larger than the full image's
    scale a region may be shown."""

    min_side: int = 28
    max_zoom: float = 16.0


def zoom_in(view: View, bbox: Sequence[float], image_width: int, image_height: int,
            max_side: int = DEFAULT_MAX_SIDE, limits: ZoomLimits = ZoomLimits(), upscale: bool = True) -> View:
    """The view that shows ``bbox`` (model frame of ``view``) at the model's input size (``upscale``: see
    ``model_size``)."""
    ox1, oy1, ox2, oy2 = view.box_to_original(bbox)
    full_long = max(image_width, image_height)
    current_long = max(view.box.width, view.box.height)
    min_long = max(limits.min_side, math.ceil(full_long / limits.max_zoom))
    if current_long <= min_long:
        raise ViewError("already at the maximum zoom; segment here or zoom_out")
    # Integer region enclosing the request, grown around its centre to the minimum size; it stays
    # inside the current view where it fits, else inside the image.
    x1, y1 = math.floor(ox1 + 1e-9), math.floor(oy1 + 1e-9)
    x2, y2 = math.ceil(ox2 - 1e-9), math.ceil(oy2 - 1e-9)
    min_w = min(max(limits.min_side, 1), image_width)
    min_h = min(max(limits.min_side, 1), image_height)
    # The long side must reach min_long (max zoom); keep aspect by growing both sides as needed.
    long_now = max(x2 - x1, y2 - y1)
    if long_now < min_long:
        grow = min_long / long_now
        min_w = max(min_w, min(image_width, math.ceil((x2 - x1) * grow)))
        min_h = max(min_h, min(image_height, math.ceil((y2 - y1) * grow)))
        if max(min_w, min_h) < min_long:
            # One side is already the image's full extent: the other grows instead, else a narrow image
            # would allow zooming past max_zoom.
            if min_w == image_width:
                min_h = max(min_h, min(image_height, min_long))
            else:
                min_w = max(min_w, min(image_width, min_long))
    x1, x2 = _grow_span(x1, x2, min_w, view.box.x1, view.box.x2, image_width)
    y1, y2 = _grow_span(y1, y2, min_h, view.box.y1, view.box.y2, image_height)
    width, height = model_size(x2 - x1, y2 - y1, max_side, upscale)
    return View(PixelBox(x1, y1, x2, y2), width, height, view.frame)


def _grow_span(lo: int, hi: int, min_len: int, view_lo: int, view_hi: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to at least min_len around its centre, inside [view_lo, view_hi) if it fits
    there, else inside [0, limit)."""
    if hi - lo >= min_len:
        return lo, hi
    bound_lo, bound_hi = (view_lo, view_hi) if view_hi - view_lo >= min_len else (0, limit)
    centre = (lo + hi) / 2
    lo = math.floor(centre - min_len / 2)
    lo = min(max(lo, bound_lo), bound_hi - min_len)
    return lo, lo + min_len


class ViewStack:
    """The views of one episode, root first; zooming pushes, ``zoom_out`` pops. ``upscale=False``: regions
    are never shown larger than their own pixels (see ``model_size``)."""

    def __init__(self, image_width: int, image_height: int, max_side: int = DEFAULT_MAX_SIDE,
                 frame: CoordFrame = "pixels", limits: ZoomLimits = ZoomLimits(), upscale: bool = True) -> None:
        self.image_width = image_width
        self.image_height = image_height
        self.max_side = max_side
        self.limits = limits
        self.upscale = upscale
        self.views = [full_view(image_width, image_height, max_side, frame, upscale)]

    @property
    def current(self) -> View:
        return self.views[-1]

    def zoom_in(self, bbox: Sequence[float]) -> View:
        view = zoom_in(self.current, bbox, self.image_width, self.image_height, self.max_side, self.limits,
                       self.upscale)
        self.views.append(view)
        return view

    def zoom_out(self) -> View:
        if len(self.views) == 1:
            raise ViewError("already showing the full image; there is nothing to zoom out of")
        self.views.pop()
        return self.current


def render_view(image: np.ndarray, view: View) -> np.ndarray:
    """The view's region cut from the full-resolution image and resized to the model frame."""
    b = view.box
    crop = image[b.y1 : b.y2, b.x1 : b.x2]
    if crop.shape[0] == view.height and crop.shape[1] == view.width:
        return np.ascontiguousarray(crop)
    shrinking = view.width < b.width or view.height < b.height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(crop, (view.width, view.height), interpolation=interpolation)


def resize_mask_to_view(mask: np.ndarray, view: View) -> np.ndarray:
    """A full-image bool mask cut to the view and resized (nearest) to the model frame."""
    b = view.box
    # Bool pixels resized as the bytes they are (nearest-neighbour keeps them 0 or 1): no conversions.
    crop = np.ascontiguousarray(np.asarray(mask[b.y1 : b.y2, b.x1 : b.x2], dtype=bool)).view(np.uint8)
    return cv2.resize(crop, (view.width, view.height), interpolation=cv2.INTER_NEAREST).view(bool)
