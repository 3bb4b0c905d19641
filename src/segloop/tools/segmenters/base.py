"""The one protocol every segmenter speaks.

A segmenter takes the full image, a key naming it, the pixel region of the current view and a prompt in
original-image pixels; it returns a bool mask at original-image size that is empty outside the region.
It computes the (expensive) image embedding once per (image, region) and keeps a bounded LRU cache of
them, so every prompt in a view after the first costs only the (cheap) prompt decoder.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segloop.tools.views import PixelBox


class SegmenterError(RuntimeError):
    """A segmenter that cannot run (missing weights or package) or a prompt it cannot take."""


@dataclass(frozen=True)
class Prompt:
    """Prompts in continuous original-image pixel coordinates.

    ``point_labels``: 1 for a point on the target, 0 for a point on the background. ``mask`` is the
    previous candidate (full-image bool), a hint some backends use to refine.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.box is None and not self.points:
            raise SegmenterError("a prompt needs a box, points, or both")
        if len(self.points) != len(self.point_labels):
            raise SegmenterError(
                f"{len(self.points)} points but {len(self.point_labels)} point labels; give one label per point"
            )
        if any(label not in (0, 1) for label in self.point_labels):
            raise SegmenterError("point labels must be 1 (target) or 0 (background)")

    def shifted(self, dx: float, dy: float) -> Prompt:
        """The same prompt with coordinates moved by (-dx, -dy): into a crop's frame."""
        box = None if self.box is None else (self.box[0] - dx, self.box[1] - dy, self.box[2] - dx, self.box[3] - dy)
        points = tuple((x - dx, y - dy) for x, y in self.points)
        return Prompt(box, points, self.point_labels, self.mask)


class Segmenter(ABC):
    """Base class: crop to the region, cache embeddings per (image, region), paste the mask back."""

    name: str = "segmenter"

    def __init__(self, cache_size: int = 8) -> None:
        self.cache_size = cache_size
        self.encoder_calls = 0
        self._cache: OrderedDict[tuple[str, tuple[int, int, int, int]], Any] = OrderedDict()
        self._lock = threading.Lock()

    @abstractmethod
    def _encode(self, crop: np.ndarray) -> Any:
        """The embedding of an RGB uint8 crop (whatever the backend needs to answer prompts)."""

    @abstractmethod
    def _predict(self, embedding: Any, crop: np.ndarray, prompt: Prompt) -> np.ndarray:
        """A bool mask of the crop's shape for a prompt in the crop's pixel frame."""

    def embedding(self, image: np.ndarray, image_key: str, region: PixelBox) -> Any:
        """The cached embedding of ``region`` of the image named ``image_key``; computed on first use."""
        key = (image_key, region.as_tuple())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        crop = np.ascontiguousarray(image[region.y1 : region.y2, region.x1 : region.x2])
        value = self._encode(crop)
        with self._lock:
            self.encoder_calls += 1
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value

    def segment(self, image: np.ndarray, image_key: str, region: PixelBox, prompt: Prompt) -> np.ndarray:
        """The mask for ``prompt`` inside ``region``, at the full image's size."""
        height, width = image.shape[:2]
        if not (0 <= region.x1 < region.x2 <= width and 0 <= region.y1 < region.y2 <= height):
            raise SegmenterError(f"region {region.as_tuple()} is not inside the {width}x{height} image")
        _check_prompt(prompt, region, (height, width))
        embedding = self.embedding(image, image_key, region)
        crop = image[region.y1 : region.y2, region.x1 : region.x2]
        local = prompt.shifted(region.x1, region.y1)
        if local.mask is not None:
            local = Prompt(local.box, local.points, local.point_labels,
                           np.asarray(local.mask[region.y1 : region.y2, region.x1 : region.x2], dtype=bool))
        crop_mask = np.asarray(self._predict(embedding, crop, local), dtype=bool)
        if crop_mask.shape != crop.shape[:2]:
            raise SegmenterError(f"{self.name} returned a {crop_mask.shape} mask for a {crop.shape[:2]} crop")
        mask = np.zeros((height, width), dtype=bool)
        mask[region.y1 : region.y2, region.x1 : region.x2] = crop_mask
        return mask

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _check_prompt(prompt: Prompt, region: PixelBox, image_shape: tuple[int, int]) -> None:
    """Refuse prompts that cannot mean anything in ``region``: points outside it, a box not overlapping
    it, a previous mask of another size. A box partly outside is fine (backends clip it)."""
    r = region
    for x, y in prompt.points:
        if not (r.x1 <= x <= r.x2 and r.y1 <= y <= r.y2):
            raise SegmenterError(f"point ({x:g}, {y:g}) is outside the region {r.as_tuple()}")
    if prompt.box is not None:
        x1, y1, x2, y2 = prompt.box
        if not (x1 < x2 and y1 < y2):
            raise SegmenterError(f"box {prompt.box} is empty: need x1 < x2 and y1 < y2")
        if x2 <= r.x1 or y2 <= r.y1 or x1 >= r.x2 or y1 >= r.y2:
            raise SegmenterError(f"box {prompt.box} does not overlap the region {r.as_tuple()}")
    if prompt.mask is not None and np.shape(prompt.mask) != image_shape:
        raise SegmenterError(f"previous mask is {np.shape(prompt.mask)}, image is {image_shape}")
