"""What the model sees of a mask: the overlay drawn on the current view, and one line of statistics.

Both work on the view's region only (the crop is cut first, then resized to the model frame), so a
turn on a 2048x2048 or larger image costs what the view's model-size picture costs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

from segloop.tools.images import as_rgb
from segloop.tools.masks import box_of
from segloop.tools.views import View, render_view, resize_mask_to_view

FILL_RGB = (0, 255, 0)
FILL_ALPHA = 0.4
CONTOUR_RGB = (255, 255, 0)
BOX_RGB = (0, 160, 255)
POSITIVE_RGB = (0, 220, 0)
NEGATIVE_RGB = (230, 0, 0)
# Every channel value blended with the fill colour: (256, 1, 3) for cv2.LUT.
_TINT = (np.arange(256, dtype=np.uint8)[:, None] * (1 - FILL_ALPHA)
         + np.array(FILL_RGB, np.float32) * FILL_ALPHA).astype(np.uint8).reshape(256, 1, 3)


def _check_mask(mask: np.ndarray, image_height: int, image_width: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (image_height, image_width):
        raise ValueError(f"mask is {mask.shape}, image is {(image_height, image_width)}; masks are image-sized")
    return mask.astype(bool, copy=False)


def _to_view_pixels(view: View, x: float, y: float) -> tuple[int, int]:
    """Original pixel coordinates as integer pixels of the rendered view (not the coordinate frame)."""
    return round((x - view.box.x1) * view.scale_x), round((y - view.box.y1) * view.scale_y)


def draw_mask(picture: np.ndarray, small: np.ndarray, view: View) -> np.ndarray:
    """A copy of ``picture`` (the view rendered) with ``small`` (the mask at the view's size, bool) as a
    translucent green fill and a yellow contour."""
    canvas = picture.copy()
    bounds = box_of(small)
    if bounds is None:
        return canvas
    # Tint through a lookup table, only inside the mask's box: the same pixels as blending in float for every
    # masked pixel, 5-20x faster on a 1024-pixel view (and cv2.copyTo 3x faster than np.copyto's where=).
    x1, y1, x2, y2 = bounds
    region = canvas[y1:y2, x1:x2]
    inside = small[y1:y2, x1:x2].view(np.uint8)
    cv2.copyTo(cv2.LUT(region, _TINT), inside, region)
    # Contours traced in the mask's box: the contours of the whole mask (findContours pads its input with
    # background), at a fraction of the cost for a small mask.
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x1, y1))
    cv2.drawContours(canvas, contours, -1, CONTOUR_RGB, thickness=max(1, round(view.width / 400)))
    return canvas


def draw_prompt(canvas: np.ndarray, view: View, box: Sequence[float] | None = None,
                points: Sequence[Sequence[float]] = (), labels: Sequence[int] = ()) -> None:
    """Draw a prompt on ``canvas`` (the view at its model size), in place: ``box`` and ``points`` in original
    pixels, positive points (label 1) green, negative red."""
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    line = max(1, round(max(view.width, view.height) / 300))
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        cv2.rectangle(canvas, _to_view_pixels(view, x1, y1), _to_view_pixels(view, x2, y2), BOX_RGB, line)
    radius = max(3, round(max(view.width, view.height) / 100))
    for (x, y), label in zip(points, labels, strict=True):
        centre = _to_view_pixels(view, float(x), float(y))
        colour = POSITIVE_RGB if label == 1 else NEGATIVE_RGB
        # A white ring keeps the marker visible on any background.
        cv2.circle(canvas, centre, radius + line, (255, 255, 255), thickness=-1)
        cv2.circle(canvas, centre, radius, colour, thickness=-1)


def render_overlay(image: np.ndarray, view: View, mask: np.ndarray | None,
                   box: Sequence[float] | None = None, points: Sequence[Sequence[float]] = (),
                   labels: Sequence[int] = (), *, base: np.ndarray | None = None) -> np.ndarray:
    """The view rendered at its model size with the mask (image-sized bool, or None) drawn over it
    (``draw_mask``) and the prompt that produced it (``draw_prompt``). ``base`` is the view already rendered
    (``render_view(image, view)``, left unchanged), which saves rendering it again."""
    image = as_rgb(image)
    height, width = image.shape[:2]
    if base is not None and np.shape(base) != (view.height, view.width, 3):
        raise ValueError(f"base is {np.shape(base)}, the view renders as {(view.height, view.width, 3)}")
    picture = render_view(image, view) if base is None else base
    if mask is None:
        canvas = picture.copy()
    else:
        canvas = draw_mask(picture, resize_mask_to_view(_check_mask(mask, height, width), view), view)
    draw_prompt(canvas, view, box, points, labels)
    return canvas


class MaskInView:
    """An image-sized bool mask as the model sees it in one view, each part computed once, when first asked
    for: ``small`` (the mask at the view's size), ``stats`` (``mask_stats``) and ``picture`` (the mask drawn
    over ``base``, the view rendered: ``draw_mask``; shared, so draw on a copy)."""

    def __init__(self, mask: np.ndarray, view: View, image_size: tuple[int, int], base: np.ndarray) -> None:
        width, height = image_size
        self.mask = _check_mask(mask, height, width)
        self.view = view
        self.image_size = image_size
        self._base = base

    @functools.cached_property
    def small(self) -> np.ndarray:
        return resize_mask_to_view(self.mask, self.view)

    @functools.cached_property
    def stats(self) -> MaskStats:
        return mask_stats(self.mask, self.view, self.image_size, small=self.small)

    @functools.cached_property
    def picture(self) -> np.ndarray:
        return draw_mask(self._base, self.small, self.view)


class MaskStats(BaseModel):
    """Facts about a candidate mask as seen from the current view. ``box`` is in the view's coordinate
    frame (what the model writes), None when nothing of the mask is in view."""

    model_config = ConfigDict(frozen=True)

    view_share: float
    image_share: float
    outside_share: float
    box: tuple[int, int, int, int] | None
    components: int
    touches_border: bool

    def describe(self) -> str:
        if self.image_share == 0:
            return "mask is empty"
        if self.box is None:
            return f"mask covers {self.image_share:.2%} of the image, all of it outside this view"
        x1, y1, x2, y2 = self.box
        parts = "1 connected part" if self.components == 1 else f"{self.components} connected parts"
        text = (f"mask covers {self.view_share:.2%} of the view ({self.image_share:.2%} of the image), "
                f"box [{x1}, {y1}, {x2}, {y2}], {parts}")
        if self.touches_border:
            text += ", touches the view's edge"
        if self.outside_share > 0:
            share = f"{self.outside_share:.1%}" if self.outside_share >= 0.001 else "under 0.1%"
            text += f", {share} of it lies outside the view"
        return text


def mask_stats(mask: np.ndarray, view: View, image_size: tuple[int, int], *,
               small: np.ndarray | None = None) -> MaskStats:
    """Statistics of an image-sized bool ``mask`` for ``view``; ``image_size`` is (width, height); ``small`` is
    the mask at the view's size (``resize_mask_to_view``) when it is already made."""
    width, height = image_size
    mask = _check_mask(mask, height, width)
    b = view.box
    crop = mask[b.y1 : b.y2, b.x1 : b.x2]
    in_view = int(np.count_nonzero(crop))
    total = in_view if (b.width, b.height) == (width, height) else int(np.count_nonzero(mask))
    box = None
    components = 0
    touches = False
    if in_view:
        cx1, cy1, cx2, cy2 = box_of(crop)
        mx1, my1 = view.quantise(b.x1 + cx1, b.y1 + cy1)
        mx2, my2 = view.quantise(b.x1 + cx2, b.y1 + cy2)
        box = (mx1, my1, mx2, my2)
        # Components are counted on the model-size mask (what the model can see as separate parts), inside
        # its box, which holds them all.
        small = resize_mask_to_view(mask, view) if small is None else small
        bounds = box_of(small)
        if bounds is not None:
            sx1, sy1, sx2, sy2 = bounds
            components = cv2.connectedComponents(small[sy1:sy2, sx1:sx2].view(np.uint8), connectivity=8)[0] - 1
        touches = bool(crop[0].any() or crop[-1].any() or crop[:, 0].any() or crop[:, -1].any())
    return MaskStats(
        view_share=in_view / (b.width * b.height),
        image_share=total / (width * height),
        outside_share=(total - in_view) / total if total else 0.0,
        box=box,
        components=components,
        touches_border=touches,
    )


TRUTH_RGB = (255, 0, 255)
INSET_RGB = (255, 255, 255)
# A mask whose box is under this share of the picture's longer side gets a zoomed inset.
INSET_BELOW = 0.2


def _shrink_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A bool mask at (width, height); any covered pixel stays visible however far it is shrunk."""
    if mask.shape == (height, width):
        return mask
    area = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return area > 0


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, thickness=thickness)


def result_picture(image: np.ndarray, mask: np.ndarray | None = None, truth: np.ndarray | None = None, *,
                   max_side: int = 1024, inset: bool = True) -> np.ndarray:
    """A picture of an episode's result for a person: the image (shrunk to ``max_side``), the mask as a
    green fill with a thick yellow outline, the ground truth (when given) as a magenta outline, and, when
    ``inset`` and the ground truth (or, without one, the mask) is small, a zoomed view of its surroundings, with
    both outlines, in the corner farthest from it, its region marked on the image. A small target stays visible
    at a glance, and so does how the answer covers it."""
    image = as_rgb(image)
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = image.copy() if scale == 1.0 else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small_w, small_h = size
    thickness = max(2, round(max(size) / 250))
    layers = []
    if mask is not None:
        small = _shrink_mask(_check_mask(mask, height, width), small_w, small_h)
        canvas[small] = cv2.LUT(canvas[small][:, None, :], _TINT)[:, 0, :] if small.any() else canvas[small]
        layers.append((small, CONTOUR_RGB))
    if truth is not None:
        layers.append((_shrink_mask(_check_mask(truth, height, width), small_w, small_h), TRUTH_RGB))
    clean = canvas.copy()
    for layer, colour in layers:
        _outline(canvas, layer, colour, thickness)
    # The target decides where to look: the truth when there is one, else the answer.
    focus = next((box_of(layer) for layer, _ in reversed(layers) if layer.any()), None)
    if not inset or focus is None:
        return canvas
    x1, y1, x2, y2 = focus
    longer = max(small_w, small_h)
    if max(x2 - x1, y2 - y1) >= INSET_BELOW * longer:
        return canvas
    # The region around the target: four times its size (at least 24 pixels), kept inside the picture.
    side = min(max(4 * max(x2 - x1, y2 - y1), 24), small_w, small_h)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    rx1 = min(max(cx - side // 2, 0), small_w - side)
    ry1 = min(max(cy - side // 2, 0), small_h - side)
    inset_side = max(side, round(0.4 * min(small_w, small_h)))
    zoomed = cv2.resize(clean[ry1 : ry1 + side, rx1 : rx1 + side], (inset_side, inset_side),
                        interpolation=cv2.INTER_NEAREST)
    inset_thickness = max(2, round(inset_side / 120))
    for layer, colour in layers:
        crop = cv2.resize(layer[ry1 : ry1 + side, rx1 : rx1 + side].astype(np.uint8), (inset_side, inset_side),
                          interpolation=cv2.INTER_NEAREST)
        _outline(zoomed, crop, colour, inset_thickness)
    cv2.rectangle(canvas, (rx1, ry1), (rx1 + side - 1, ry1 + side - 1), INSET_RGB, max(1, thickness // 2))
    # The corner that hides least of the masks and not the marked region; of those, the farthest from it.
    margin = max(2, thickness)
    covered = np.zeros((small_h, small_w), bool)
    for layer, _ in layers:
        covered |= layer
    covered[ry1 : ry1 + side, rx1 : rx1 + side] = True

    def cost(corner: tuple[int, int]) -> tuple[int, float]:
        x, y = corner
        hidden = int(covered[y : y + inset_side, x : x + inset_side].sum())
        return hidden, -math.hypot(x + inset_side / 2 - cx, y + inset_side / 2 - cy)

    corners = [(max(0, x), max(0, y)) for x in (margin, small_w - inset_side - margin)
               for y in (margin, small_h - inset_side - margin)]
    ix, iy = min(corners, key=cost)
    inset_w = min(inset_side, small_w - ix)
    inset_h = min(inset_side, small_h - iy)
    canvas[iy : iy + inset_h, ix : ix + inset_w] = zoomed[:inset_h, :inset_w]
    cv2.rectangle(canvas, (ix, iy), (ix + inset_w - 1, iy + inset_h - 1), INSET_RGB, margin)
    return canvas
