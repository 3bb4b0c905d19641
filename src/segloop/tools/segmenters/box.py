"""``BoxSegmenter``: the prompt's box filled. A segmenter with (almost) no compute of its own, for benchmarks
of everything around the segmenter and for tests that need masks to follow prompts exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from segloop.tools.segmenters.base import Prompt, Segmenter


class BoxSegmenter(Segmenter):
    """The prompt's box (in the crop's frame) filled; points alone give an empty mask."""

    name = "box"

    def _encode(self, crop: np.ndarray) -> None:
        return None

    def _predict(self, embedding: Any, crop: np.ndarray, prompt: Prompt) -> np.ndarray:
        mask = np.zeros(crop.shape[:2], dtype=bool)
        if prompt.box is not None:
            x1, y1, x2, y2 = (round(v) for v in prompt.box)
            mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
        return mask
