"""Views and coordinate frames: zoom rules, refusals a model can act on, and exact frame mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segloop.tools.views import (
    PixelBox,
    View,
    ViewError,
    ViewStack,
    ZoomLimits,
    check_point,
    full_view,
    model_size,
    render_view,
    resize_mask_to_view,
    zoom_in,
)


def test_model_size_is_multiple_of_28_and_keeps_aspect() -> None:
    assert model_size(2000, 1000, 1024) == (1008, 504)
    assert model_size(1000, 2000, 1024) == (504, 1008)
    assert model_size(10000, 10, 448) == (448, 28)  # the short side never drops below one token
    w, h = model_size(640, 480, 448)
    assert w % 28 == 0 and h % 28 == 0 and abs(w / h - 640 / 480) < 0.1


def test_full_view_and_frames() -> None:
    view = full_view(2000, 1000)
    assert view.box == PixelBox(0, 0, 2000, 1000) and (view.width, view.height) == (1008, 504)
    assert view.to_original(504, 252) == (1000.0, 500.0)
    norm = full_view(2000, 1000, frame="norm1000")
    assert norm.to_original(500, 500) == (1000.0, 500.0)
    assert norm.box_to_original([0, 0, 500, 1000]) == (0.0, 0.0, 1000.0, 1000.0)
    assert "0..1000" in norm.describe() and "1008x504" in view.describe()
    with pytest.raises(ViewError, match="no pixels"):
        full_view(0, 10)


def test_zoom_in_maps_the_box_to_original_pixels() -> None:
    stack = ViewStack(2000, 1000, max_side=1024)
    view = stack.zoom_in([252, 126, 504, 252])  # the second quarter: original [500, 250, 1000, 500]
    assert view.box == PixelBox(500, 250, 1000, 500)
    assert (view.width, view.height) == (1008, 504)
    assert stack.zoom_out() == stack.views[0]


def test_zoom_clamps_a_box_that_spills_out_of_the_view() -> None:
    view = zoom_in(full_view(1000, 1000, max_side=1000 // 28 * 28), [-100, -50, 490, 490], 1000, 1000, 980)
    assert view.box.x1 == 0 and view.box.y1 == 0
    assert view.box.x2 == 500 and view.box.y2 == 500


def test_tiny_box_grows_to_the_minimum_around_its_centre() -> None:
    root = View(PixelBox(0, 0, 1000, 1000), 1000, 1000)
    limits = ZoomLimits(min_side=28, max_zoom=100.0)
    view = zoom_in(root, [500, 500, 502, 502], 1000, 1000, 1000, limits)
    assert view.box.width == 28 and view.box.height == 28
    assert view.box.x1 <= 500 and view.box.x2 >= 502
    # At the image's edge it grows inwards rather than leaving the image.
    edge = zoom_in(root, [998, 0, 1000, 2], 1000, 1000, 1000, limits)
    assert edge.box == PixelBox(972, 0, 1000, 28)


def test_max_zoom_limits_the_region_and_then_refuses() -> None:
    stack = ViewStack(2048, 2048, max_side=1024, limits=ZoomLimits(min_side=28, max_zoom=8.0))
    view = stack.zoom_in([500, 500, 501, 501])
    assert max(view.box.width, view.box.height) >= 2048 / 8
    with pytest.raises(ViewError, match="maximum zoom"):
        stack.zoom_in([10, 10, 20, 20])


def test_zoom_out_at_the_root_is_refused() -> None:
    with pytest.raises(ViewError, match="nothing to zoom out"):
        ViewStack(100, 100).zoom_out()


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([10, 10, 10, 20], "empty"),
        ([30, 10, 20, 20], "empty"),
        ([float("nan"), 0, 10, 10], "non-finite"),
        ([0, 0, float("inf"), 10], "non-finite"),
        ([2000, 2000, 2100, 2100], "outside the current view"),
        ([-50, -50, -10, -10], "outside the current view"),
        ([1, 2, 3], "four numbers"),
        ("0, 0, 10, 10", "four numbers"),
        ([0, 0, "a", 10], "four numbers"),
        (None, "four numbers"),
    ],
)
def test_bad_boxes_are_view_errors(bbox, message: str) -> None:
    with pytest.raises(ViewError, match=message):
        ViewStack(1000, 800).zoom_in(bbox)


@pytest.mark.parametrize(("point", "message"), [([1, 2, 3], "two numbers"), ([float("nan"), 1], "non-finite"),
                                                ([-1, 5], "outside"), ([5, 10_000], "outside")])
def test_bad_points_are_view_errors(point, message: str) -> None:
    with pytest.raises(ViewError, match=message):
        check_point(point, full_view(100, 100))


def test_render_view_and_mask_have_the_model_size() -> None:
    image = np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)
    mask = np.zeros((600, 900), bool)
    mask[100:200, 300:450] = True
    stack = ViewStack(900, 600, max_side=448)
    for view in (stack.current, stack.zoom_in([100, 20, 250, 120])):
        assert render_view(image, view).shape == (view.height, view.width, 3)
        small = resize_mask_to_view(mask, view)
        assert small.shape == (view.height, view.width) and small.dtype == bool
    # The zoomed view covers the mask; its share there matches the original share within resampling.
    b = stack.current.box
    assert small.mean() == pytest.approx(mask[b.y1 : b.y2, b.x1 : b.x2].mean(), abs=0.02)


@st.composite
def zoom_path(draw):
    width = draw(st.integers(64, 6000))
    height = draw(st.integers(64, 6000))
    max_side = draw(st.sampled_from([224, 448, 1024]))
    frame = draw(st.sampled_from(["pixels", "norm1000"]))
    stack = ViewStack(width, height, max_side=max_side, frame=frame)
    for _ in range(draw(st.integers(0, 5))):
        view = stack.current
        fw, fh = view.frame_width, view.frame_height
        x1 = draw(st.integers(0, int(fw) - 2))
        y1 = draw(st.integers(0, int(fh) - 2))
        x2 = draw(st.integers(x1 + 1, int(fw)))
        y2 = draw(st.integers(y1 + 1, int(fh)))
        try:
            stack.zoom_in([x1, y1, x2, y2])
        except ViewError:
            break  # at the maximum zoom: the path ends here
    return stack


@settings(max_examples=200, deadline=None)
@given(stack=zoom_path(), fx=st.floats(0, 1), fy=st.floats(0, 1))
def test_model_frame_round_trips_at_any_zoom_depth(stack: ViewStack, fx: float, fy: float) -> None:
    for view in stack.views:
        b = view.box
        assert 0 <= b.x1 < b.x2 <= stack.image_width and 0 <= b.y1 < b.y2 <= stack.image_height
        # An integer model-frame point goes to original pixels inside the view and comes back exactly.
        mx, my = round(fx * view.frame_width), round(fy * view.frame_height)
        ox, oy = view.to_original(mx, my)
        assert b.x1 - 1e-6 <= ox <= b.x2 + 1e-6 and b.y1 - 1e-6 <= oy <= b.y2 + 1e-6
        assert view.quantise(ox, oy) == (mx, my)
        # An original point, written as a model would (integers), lands within half a frame unit.
        px, py = b.x1 + fx * b.width, b.y1 + fy * b.height
        qx, qy = view.quantise(px, py)
        back_x, back_y = view.to_original(qx, qy)
        unit_x, unit_y = b.width / view.frame_width, b.height / view.frame_height
        assert abs(back_x - px) <= 0.5 * unit_x + 1e-6 and abs(back_y - py) <= 0.5 * unit_y + 1e-6
    # Child views sit inside the image and each zoom shows at least the minimum region side.
    for parent, child in zip(stack.views, stack.views[1:], strict=False):
        assert child.frame == parent.frame
        assert min(child.box.width, child.box.height) >= min(stack.limits.min_side, stack.image_width,
                                                               stack.image_height)
        assert max(child.box.width, child.box.height) >= math.ceil(
            max(stack.image_width, stack.image_height) / stack.limits.max_zoom) - 1
