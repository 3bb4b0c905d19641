"""The overlay the model sees and the statistics line about the candidate mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segloop.tools.overlay import (
    _TINT,
    BOX_RGB,
    CONTOUR_RGB,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    MaskInView,
    draw_mask,
    mask_stats,
    render_overlay,
)
from segloop.tools.views import PixelBox, View, full_view, render_view


def _scene(width: int = 400, height: int = 300) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((height, width, 3), 128, np.uint8)
    mask = np.zeros((height, width), bool)
    mask[100:200, 150:250] = True
    return image, mask


def test_overlay_has_model_size_and_tints_only_the_mask() -> None:
    image, mask = _scene()
    view = full_view(400, 300, max_side=224)
    out = render_overlay(image, view, mask)
    assert out.shape == (view.height, view.width, 3) and out.dtype == np.uint8
    # Centre of the mask: tinted green; a far corner: untouched grey.
    cy, cx = round(150 * view.scale_y), round(200 * view.scale_x)
    r, g, b = (int(v) for v in out[cy, cx])
    assert g > 128 + 40 and r < 128 and b < 128
    assert tuple(out[2, 2]) == (128, 128, 128)


def test_overlay_draws_box_and_points_in_their_colours() -> None:
    image, mask = _scene()
    view = View(PixelBox(0, 0, 400, 300), 400, 300)
    out = render_overlay(image, view, np.zeros_like(mask), box=(20, 20, 120, 120),
                         points=[(300, 250), (60, 250)], labels=[1, 0])
    assert tuple(out[20, 70]) == BOX_RGB
    assert tuple(out[250, 300]) == POSITIVE_RGB
    assert tuple(out[250, 60]) == NEGATIVE_RGB


def test_overlay_in_a_zoomed_view_maps_original_pixels() -> None:
    image, _ = _scene()
    view = View(PixelBox(100, 50, 300, 250), 400, 400)  # 2x zoom
    out = render_overlay(image, view, None, points=[(150, 100)], labels=[1])
    assert tuple(out[100, 100]) == POSITIVE_RGB  # (150-100)*2, (100-50)*2


def test_overlay_rejects_wrong_mask_shape_and_label_count() -> None:
    image, mask = _scene()
    view = full_view(400, 300)
    with pytest.raises(ValueError, match="image-sized"):
        render_overlay(image, view, mask[:10])
    with pytest.raises(ValueError, match="labels"):
        render_overlay(image, view, mask, points=[(1, 1)], labels=[])


def test_stats_by_hand() -> None:
    _, mask = _scene()
    view = View(PixelBox(0, 0, 400, 300), 400, 300)
    stats = mask_stats(mask, view, (400, 300))
    assert stats.view_share == pytest.approx(100 * 100 / (400 * 300))
    assert stats.image_share == stats.view_share
    assert stats.box == (150, 100, 250, 200)
    assert stats.components == 1 and not stats.touches_border and stats.outside_share == 0
    assert "1 connected part" in stats.describe() and "[150, 100, 250, 200]" in stats.describe()


def test_stats_in_a_zoomed_norm1000_view() -> None:
    _, mask = _scene()
    mask[10:20, 10:20] = True  # a second part, outside the view below
    view = View(PixelBox(150, 100, 350, 300), 500, 500, "norm1000")
    stats = mask_stats(mask, view, (400, 300))
    assert stats.box == (0, 0, 500, 500)
    assert stats.touches_border
    assert stats.components == 1
    assert stats.outside_share == pytest.approx(100 / 10100)
    assert stats.view_share == pytest.approx(10000 / (200 * 200))
    assert "outside the view" in stats.describe() and "edge" in stats.describe()


def test_stats_empty_and_out_of_view() -> None:
    _, mask = _scene()
    assert mask_stats(np.zeros_like(mask), full_view(400, 300), (400, 300)).describe() == "mask is empty"
    stats = mask_stats(mask, View(PixelBox(0, 0, 100, 100), 112, 112), (400, 300))
    assert stats.box is None and stats.components == 0
    assert "outside this view" in stats.describe()
    with pytest.raises(ValueError, match="image-sized"):
        mask_stats(mask, full_view(400, 300), (300, 400))


def test_tint_matches_the_alpha_blend_and_a_given_base_is_reused_untouched() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mask = np.zeros((300, 400), bool)
    mask[40:220, 60:300] = rng.random((180, 240)) < 0.5  # ragged: many pixels in the box are not in the mask
    view = View(PixelBox(0, 0, 400, 300), 400, 300)
    base = render_view(image, view)
    kept = base.copy()
    out = render_overlay(image, view, mask, base=base)
    assert np.array_equal(base, kept)
    assert np.array_equal(out, render_overlay(image, view, mask))
    # Inside the mask (away from the contour drawn on its edges): canvas * 0.6 + green * 0.4, truncated.
    inner = np.zeros_like(mask)
    inner[40:220, 60:300] = mask[40:220, 60:300]
    interior = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
    expected = (image[interior] * 0.6 + np.array([0, 255, 0], np.float32) * 0.4).astype(np.uint8)
    contour_free = np.all(out[interior] != np.array([255, 255, 0]), axis=1)
    assert contour_free.mean() > 0.5
    assert np.array_equal(out[interior][contour_free], expected[contour_free])
    near = mask | np.roll(mask, 1, 0) | np.roll(mask, -1, 0) | np.roll(mask, 1, 1) | np.roll(mask, -1, 1)
    assert np.array_equal(out[~near], image[~near])  # away from the mask and its contour: untouched
    with pytest.raises(ValueError, match="base"):
        render_overlay(image, view, mask, base=base[:10])


def test_contours_traced_in_the_masks_box_are_those_of_the_whole_mask() -> None:
    """``draw_mask`` traces contours and tints only inside the mask's box: the picture is the one drawn from the
    whole view-size mask, for masks on the view's edges and corners, with holes, in several parts, of one pixel."""
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    view = View(PixelBox(0, 0, 160, 120), 160, 120)
    masks = []
    for corner in ((0, 0), (0, 150), (110, 0), (110, 150)):
        mask = np.zeros((120, 160), bool)
        mask[corner[0] : corner[0] + 10, corner[1] : corner[1] + 10] = True
        masks.append(mask)
    ring = np.zeros((120, 160), np.uint8)
    cv2.circle(ring, (60, 50), 30, 1, 6)
    masks += [ring.astype(bool), np.ones((120, 160), bool), rng.random((120, 160)) < 0.02]
    masks.append(np.zeros((120, 160), bool))
    masks[-1][60, 80] = True
    for mask in masks:
        expected = picture.copy()
        expected[mask] = cv2.LUT(picture, _TINT)[mask]
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(expected, contours, -1, CONTOUR_RGB, thickness=1)
        assert np.array_equal(draw_mask(picture, mask, view), expected)


def test_a_mask_in_a_view_is_drawn_and_described_once() -> None:
    image, mask = _scene()
    view = View(PixelBox(100, 50, 300, 250), 224, 224)
    base = render_view(image, view)
    seen = MaskInView(mask, view, (400, 300), base)
    assert seen.picture is seen.picture  # made once, shared
    assert np.array_equal(seen.picture, render_overlay(image, view, mask))
    assert seen.stats == mask_stats(mask, view, (400, 300))
    assert np.array_equal(base, render_view(image, view))  # the view rendered is left as it was


def test_result_picture_keeps_a_one_pixel_mask_visible_and_outlines_the_truth() -> None:
    """What a person sees of a result (report, demo): a mask of one pixel in a 3000-px image survives the shrink
    to 768 px, outlined, with a zoomed inset; the ground truth is outlined in its own colour."""
    from segloop.tools.overlay import CONTOUR_RGB, TRUTH_RGB, result_picture

    image = np.zeros((2000, 3000, 3), np.uint8)
    mask = np.zeros((2000, 3000), bool)
    mask[1500, 2500] = True
    truth = np.zeros((2000, 3000), bool)
    truth[200:400, 300:600] = True
    picture = result_picture(image, mask, truth, max_side=768)
    assert picture.shape == (512, 768, 3)
    assert np.all(picture == CONTOUR_RGB, axis=-1).sum() >= 4
    assert np.all(picture == TRUTH_RGB, axis=-1).any()
    plain = result_picture(image, None, None, max_side=768)
    assert plain.shape == (512, 768, 3) and not plain.any()


def test_a_tiny_target_gets_an_inset_with_its_truth_and_the_answer_there() -> None:
    """Report pictures: the inset goes where the ground truth is (not where a wrong, large mask is), and shows
    both outlines, so a reader sees how the answer covers a target a few pixels wide."""
    from segloop.tools.overlay import CONTOUR_RGB, INSET_RGB, TRUTH_RGB, result_picture

    image = np.full((1500, 2000, 3), 60, np.uint8)
    truth = np.zeros((1500, 2000), bool)
    truth[1300:1310, 1800:1810] = True  # 10 px in a 2000-px image, bottom right
    mask = np.zeros_like(truth)
    mask[1290:1320, 1790:1820] = True  # the target and some around it
    mask[100:700, 100:900] = True  # and a large wrong region: the mask alone would get no inset
    picture = result_picture(image, mask, truth, max_side=1000)
    ys, xs = np.nonzero(np.all(picture == INSET_RGB, axis=-1))
    away = np.hypot(ys - 652, xs - 902) > 60  # the inset's frame, not the mark around the target (650, 900)
    assert away.any()
    inset = picture[ys[away].min():ys[away].max(), xs[away].min():xs[away].max()]
    assert np.all(inset == TRUTH_RGB, axis=-1).sum() > 50 and np.all(inset == CONTOUR_RGB, axis=-1).sum() > 50
    without_truth = result_picture(image, mask, None, max_side=1000)
    assert not np.all(without_truth == INSET_RGB, axis=-1).any()  # the mask is large: no inset
