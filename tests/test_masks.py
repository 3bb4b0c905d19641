"""Mask metrics and formats, checked against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segloop.tools.masks import (
    Metrics,
    box_of,
    format_table,
    intersection_union,
    iou,
    polygons_to_mask,
    rle_decode,
    rle_encode,
    score_sample,
    size_class,
)


def _rect(shape: tuple[int, int], x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_iou_by_hand() -> None:
    a = _rect((10, 10), 0, 0, 4, 4)  # 16 px
    b = _rect((10, 10), 2, 2, 6, 6)  # 16 px, overlap 2x2 = 4
    assert intersection_union(a, b) == (4, 28)
    assert iou(a, b) == pytest.approx(4 / 28)


def test_iou_with_ignore_excludes_those_pixels_from_both() -> None:
    a = _rect((10, 10), 0, 0, 4, 4)
    b = _rect((10, 10), 2, 2, 6, 6)
    ignore = _rect((10, 10), 4, 0, 10, 10)  # drops b's pixels at x >= 4 (8 of them)
    assert intersection_union(a, b, ignore) == (4, 20)
    # Everything ignored: both empty, which counts as a correct "nothing".
    assert iou(a, b, np.ones((10, 10), bool)) == 1.0


def test_empty_versus_empty_is_one_and_empty_versus_something_is_zero() -> None:
    empty = np.zeros((5, 5), bool)
    assert iou(empty, empty) == 1.0
    assert iou(empty, _rect((5, 5), 0, 0, 1, 1)) == 0.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        iou(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        iou(np.zeros((2, 3), bool), np.zeros((2, 3), bool), np.zeros((3, 3), bool))


def test_giou_and_ciou_by_hand() -> None:
    gt1 = _rect((10, 10), 0, 0, 10, 10)  # 100 px
    pred1 = _rect((10, 10), 0, 0, 5, 10)  # IoU 50/100
    gt2 = _rect((10, 10), 0, 0, 2, 2)  # 4 px
    pred2 = _rect((10, 10), 0, 0, 2, 1)  # IoU 2/4
    gt3 = np.zeros((10, 10), bool)  # no target, answered with nothing: IoU 1, adds 0/0
    metrics = Metrics()
    metrics.add(score_sample("a", pred1, gt1, kind="x"))
    metrics.add(score_sample("b", pred2, gt2, kind="y"))
    metrics.add(score_sample("c", gt3, gt3, kind="y"))
    s = metrics.summary()
    assert s["n"] == 3
    assert s["giou"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert s["ciou"] == pytest.approx((50 + 2) / (100 + 4))
    assert s["by_kind"]["y"]["giou"] == pytest.approx(0.75)
    assert s["by_size"]["L"]["n"] == 1 and s["by_size"]["none"]["n"] == 1
    assert s["per_sample"] == {"a": 0.5, "b": 0.5, "c": 1.0}
    table = format_table(s)
    assert "size=L" in table and "kind=y" in table and table.splitlines()[1].split()[0] == "all"


def test_metrics_of_nothing() -> None:
    s = Metrics().summary()
    assert (s["n"], s["giou"], s["ciou"]) == (0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.0, "none"),
        (1e-9, "XXS"),
        (0.00017 - 1e-9, "XXS"),
        (0.00017, "XS"),
        (0.00055 - 1e-9, "XS"),
        (0.00055, "S"),
        (0.005, "M"),
        (0.05, "L"),
        (1.0, "L"),
    ],
)
def test_size_class_boundaries(fraction: float, expected: str) -> None:
    assert size_class(fraction) == expected


def test_box_of() -> None:
    assert box_of(_rect((10, 20), 3, 2, 7, 9)) == (3, 2, 7, 9)
    assert box_of(np.zeros((4, 4), bool)) is None


def test_rle_round_trip_through_json() -> None:
    mask = np.random.default_rng(0).random((37, 53)) > 0.6
    rle = rle_encode(mask)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_decode(json.dumps(rle)), mask)
    assert np.array_equal(rle_decode(rle), mask)


def test_rle_is_cocos_own_encoding_for_masks_of_every_layout() -> None:
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(1)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), _rect((5, 7), 6, 4, 7, 5), _rect((5, 7), 0, 0, 1, 1),
             _rect((5, 7), 6, 0, 7, 5), _rect((6, 9), 2, 0, 5, 6), np.zeros((0, 3), bool)]
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        if rng.random() < 0.5:
            masks.append(rng.random((height, width)) < rng.random())
        else:
            x1, y1 = int(rng.integers(0, width)), int(rng.integers(0, height))
            masks.append(_rect((height, width), x1, y1, int(rng.integers(x1, width + 1)),
                               int(rng.integers(y1, height + 1))))
    for mask in masks:
        expected = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle_encode(mask) == {"size": list(mask.shape), "counts": expected["counts"].decode()}, mask.shape


def test_rle_uncompressed_counts() -> None:
    # Column-major runs, starting with background: 2 off, 3 on, 1 off in a 3x2 mask.
    mask = rle_decode({"size": [3, 2], "counts": [2, 3, 1]})
    expected = np.array([[False, True], [False, True], [True, False]])
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("bad", [{"counts": "x"}, {"size": [2, 2]}, "[1, 2]"])
def test_rle_without_size_or_counts_is_an_error(bad) -> None:
    with pytest.raises(ValueError, match="size"):
        rle_decode(bad)


def test_polygons_rasterise_and_merge() -> None:
    square = [1, 1, 5, 1, 5, 5, 1, 5]
    other = [7, 7, 9, 7, 9, 9, 7, 9]
    mask = polygons_to_mask([square, other, [0, 0, 1, 1]], 10, 10)  # a 2-point "polygon" is dropped
    assert mask.shape == (10, 10)
    assert mask[3, 3] and mask[8, 8] and not mask[0, 9]
    assert box_of(mask)[:2] == (1, 1)
    assert not polygons_to_mask([], 4, 4).any()
