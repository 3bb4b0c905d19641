"""The one sample type every dataset reader produces.

A ground-truth mask is referenced, not held: a PNG path, a COCO RLE dict, or polygons with the image
size; it is decoded when a sample is scored, so a manifest of thousands of samples stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segloop.tools.images import load_image, load_mask
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


class Sample(BaseModel):
    """An image, a request about it, and the mask that answers it.

    ``mask`` is None for a "no such object" query: the right answer is an empty mask.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    id: str
    image: Path
    query: str
    mask: MaskRef | None = None
    ignore_mask: MaskRef | None = None
    kind: str = "unknown"
    meta: dict[str, Any] = Field(default_factory=dict)

    def load_image(self) -> np.ndarray:
        return load_image(self.image)

    def load_mask(self, shape: tuple[int, int]) -> np.ndarray:
        if self.mask is None:
            return np.zeros(shape, dtype=bool)
        return decode_mask_ref(self.mask, shape)

    def load_ignore(self, shape: tuple[int, int]) -> np.ndarray | None:
        return None if self.ignore_mask is None else decode_mask_ref(self.ignore_mask, shape)
