"""The one sample type every data source produces, and a sample with its arrays decoded.

A sample is a reference, not pixels: an image file with its ground truth (a PNG path, a COCO RLE dict, or
polygons with the image size), or a scene of the synthetic world named by its seed and settings. It is
decoded when it is used (``load``), so a dataset of thousands of samples stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from segloop.data.synth import generate_scene
from segloop.tools.images import image_size, load_image, load_mask
from segloop.tools.masks import polygons_to_mask, rle_decode

# A mask reference: a PNG path; {"size": [h, w], "counts": ...} (COCO RLE); or
# {"polygons": [[x1, y1, x2, y2, ...], ...]} rasterised at the image's size.
MaskRef = Path | dict[str, Any]


def decode_mask_ref(ref: MaskRef, shape: tuple[int, int]) -> np.ndarray:
    """The bool mask a reference names, at ``shape`` (H, W); a size mismatch is an error."""
    if isinstance(ref, Path):
        return load_mask(ref, shape)
    if "polygons" in ref:
        return polygons_to_mask(ref["polygons"], shape[0], shape[1])
    mask = rle_decode(ref)
    if mask.shape != tuple(shape):
        raise ValueError(f"RLE mask is {mask.shape}, image is {shape}")
    return mask


class SceneRef(BaseModel):
    """A scene of the synthetic world: ``generate_scene``'s arguments (the same ones give the same pixels)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int
    size: int
    difficulty: str
    no_target_rate: float = 0.0


class Sample(BaseModel):
    """An image, a request about it, and the mask that answers it.

    The image is a file (``image``, with ``mask`` and ``ignore_mask`` references) or a synthetic scene
    (``scene``, generated when loaded). ``mask`` is None for a "no such object" query: the right answer is an
    empty mask.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    id: str
    query: str
    image: Path | None = None
    scene: SceneRef | None = None
    mask: MaskRef | None = None
    ignore_mask: MaskRef | None = None
    kind: str = "unknown"
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> Sample:
        if (self.image is None) == (self.scene is None):
            raise ValueError(f"sample {self.id!r} needs either an image file or a synthetic scene")
        return self

    def load(self) -> Item:
        """The image and its masks, decoded."""
        if self.scene is not None:
            scene = generate_scene(**self.scene.model_dump())
            mask = scene.mask if scene.mask is not None else np.zeros(scene.image.shape[:2], dtype=bool)
            return Item(self, scene.image, mask, None)
        image = load_image(self.image)
        shape = image.shape[:2]
        return Item(self, image, *self._truth(shape))

    def load_truth(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The target and ignore masks at the image's size; a file sample reads only its image's header."""
        if self.scene is not None:
            item = self.load()
            return item.mask, item.ignore
        width, height = image_size(self.image)
        return self._truth((height, width))

    def _truth(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        mask = np.zeros(shape, dtype=bool) if self.mask is None else decode_mask_ref(self.mask, shape)
        ignore = None if self.ignore_mask is None else decode_mask_ref(self.ignore_mask, shape)
        return mask, ignore


@dataclass
class Item:
    """A sample with its arrays decoded: the image, the target mask (all False for "no such object") and the
    ignore region (None when there is none)."""

    sample: Sample
    image: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray | None
