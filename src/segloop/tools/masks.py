"""Masks and the metrics they are scored by.

Masks are bool arrays (H, W) at original-image size. IoU ignores pixels under an ignore mask and counts
empty-vs-empty as 1 ("no such object", answered correctly). gIoU is the mean per-sample IoU and cIoU
the total intersection over the total union, as in LISA and Seg-Zero.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as coco_mask

# Target size classes by share of the image's pixels. XXS/XS/S follow FineRS (S > 0.055 %,
# XS 0.017-0.055 %, XXS < 0.017 %); M and L are coarser bins above for ordinary benchmarks.
SIZE_CLASS_BOUNDS: tuple[tuple[str, float], ...] = (
    ("XXS", 0.00017),
    ("XS", 0.00055),
    ("S", 0.005),
    ("M", 0.05),
    ("L", float("inf")),
)
SIZE_CLASSES = (*(name for name, _ in SIZE_CLASS_BOUNDS), "none")


def size_class(area_fraction: float) -> str:
    """The size class of a target covering ``area_fraction`` of the image (``none`` when empty)."""
    if area_fraction <= 0:
        return "none"
    for name, upper in SIZE_CLASS_BOUNDS:
        if area_fraction < upper:
            return name
    return "L"


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")


def intersection_union(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int]:
    """Pixel counts of intersection and union, pixels under ``ignore`` excluded."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _check_pair(pred, gt)
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        _check_pair(ignore, gt)
        keep = ~ignore
        pred, gt = pred & keep, gt & keep
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two masks; both empty (after ignoring) is 1."""
    inter, union = intersection_union(pred, gt, ignore)
    return 1.0 if union == 0 else inter / union


def box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x1, y1, x2, y2), x2/y2 exclusive, of the mask's pixels; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def rle_encode(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask, with ``counts`` as a str so it serialises to JSON."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"an RLE encodes one (H, W) mask, got shape {mask.shape}")
    height, width = mask.shape
    # COCO RLE runs down the columns. Only the band of columns the mask touches is read in that order (a
    # candidate is usually a small part of a multi-megapixel image): the runs are where the band's
    # column-major pixels change, offset by the empty columns before it.
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        counts = np.array([height * width])
    else:
        first, last = int(columns[0]), int(columns[-1]) + 1
        # The band in column-major order between two background pixels, so every run has both its ends.
        padded = np.zeros(height * (last - first) + 2, np.uint8)
        padded[1:-1] = cv2.transpose(np.ascontiguousarray(mask[:, first:last]).view(np.uint8)).ravel()
        changes = np.flatnonzero(padded[1:] != padded[:-1]) + first * height
        counts = np.diff(changes, prepend=0, append=height * width)
        if counts[-1] == 0:  # the last pixel is foreground: no closing run of background
            counts = counts[:-1]
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts.astype(np.uint32)}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict | str) -> np.ndarray:
    """A COCO RLE (compressed or uncompressed counts, dict or its JSON) as a bool mask."""
    if isinstance(rle, str):
        rle = json.loads(rle)
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE needs 'size' [height, width] and 'counts'")
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(rle).astype(bool)


def polygons_to_mask(polygons: Iterable[Iterable[float]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons given as flat [x1, y1, x2, y2, ...] lists (COCO style) into one mask."""
    flat = [list(map(float, p)) for p in polygons]
    flat = [p for p in flat if len(p) >= 6]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(flat, height, width)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


@dataclass
class SampleScore:
    """One sample's result, as it enters the metrics."""

    id: str
    iou: float
    intersection: int
    union: int
    kind: str = "unknown"
    size_class: str = "none"


def score_sample(sample_id: str, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None,
                 kind: str = "unknown") -> SampleScore:
    inter, union = intersection_union(pred, gt, ignore)
    fraction = float(np.count_nonzero(gt)) / gt.size if gt.size else 0.0
    return SampleScore(
        id=sample_id,
        iou=1.0 if union == 0 else inter / union,
        intersection=inter,
        union=union,
        kind=kind,
        size_class=size_class(fraction),
    )


@dataclass
class Metrics:
    """gIoU and cIoU over a set of samples, overall and broken down by kind and size class."""

    scores: list[SampleScore] = field(default_factory=list)

    def add(self, score: SampleScore) -> None:
        self.scores.append(score)

    @staticmethod
    def _summary(scores: list[SampleScore]) -> dict:
        inter = sum(s.intersection for s in scores)
        union = sum(s.union for s in scores)
        return {
            "n": len(scores),
            "giou": float(np.mean([s.iou for s in scores])) if scores else 0.0,
            "ciou": (inter / union if union else 1.0) if scores else 0.0,
        }

    def summary(self) -> dict:
        """``n``, ``giou``, ``ciou``, ``by_kind``, ``by_size`` and the per-sample IoUs."""
        by_kind: dict[str, list[SampleScore]] = defaultdict(list)
        by_size: dict[str, list[SampleScore]] = defaultdict(list)
        for s in self.scores:
            by_kind[s.kind].append(s)
            by_size[s.size_class].append(s)
        return {
            **self._summary(self.scores),
            "by_kind": {k: self._summary(v) for k, v in sorted(by_kind.items())},
            "by_size": {k: self._summary(by_size[k]) for k in SIZE_CLASSES if k in by_size},
            "per_sample": {s.id: s.iou for s in self.scores},
        }


def format_table(summary: dict) -> str:
    """A plain-text table of a ``Metrics.summary()``: overall, by size class, by kind."""
    lines = [f"{'group':<24}{'n':>6}{'gIoU':>9}{'cIoU':>9}"]
    lines.append(f"{'all':<24}{summary['n']:>6}{summary['giou']:>9.4f}{summary['ciou']:>9.4f}")
    for title, key in (("size", "by_size"), ("kind", "by_kind")):
        for name, row in summary.get(key, {}).items():
            label = f"{title}={name}"
            lines.append(f"{label:<24}{row['n']:>6}{row['giou']:>9.4f}{row['ciou']:>9.4f}")
    return "\n".join(lines)
