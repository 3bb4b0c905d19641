"""GrabCut: a segmenter that needs no weights, the offline default.

OpenCV's GrabCut fits colour models to foreground and background from a box and/or points and cuts the
region along colour edges. Its cost grows with pixels x iterations, so it never runs on more than
``work_side`` pixels a side: it works on the target's window plus a margin of context, at full
resolution when that fits, else on a copy of the crop downscaled to ``work_side`` (the "embedding" the
base class caches, so a huge view is resized once however many prompts follow). The local window also
makes the background colour model describe the target's surroundings rather than the whole view, which
matters most for small targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segloop.tools.segmenters.base import Prompt, Segmenter, SegmenterError

# GrabCut fits 5-component GMMs to each side; with fewer samples than this its k-means cannot start.
_MIN_SAMPLES = 10
# Context margin around the target window never thinner than this (work-frame pixels).
_MIN_CONTEXT = 8


@dataclass(frozen=True)
class _Frame:
    """Where GrabCut works: the crop's pixels [x1, x2) x [y1, y2), resampled to ``pixels``' size."""

    x1: int
    y1: int
    x2: int
    y2: int
    pixels: np.ndarray

    @property
    def sx(self) -> float:
        return self.pixels.shape[1] / (self.x2 - self.x1)

    @property
    def sy(self) -> float:
        return self.pixels.shape[0] / (self.y2 - self.y1)

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.x1) * self.sx, (y - self.y1) * self.sy


class GrabCutSegmenter(Segmenter):
    """GrabCut from a box and/or points, optionally seeded with the previous candidate mask.

    - A box: outside it is sure background, inside probable foreground (or the previous mask's split).
    - Positive points: small disks of sure foreground (the window grows to cover them); negative points:
      disks of sure background.
    - Points without a box: a window around the positive points (``point_window`` of the crop's longest
      side on each side) is searched; everything outside it is background.
    - ``context``: the margin around the window, as a share of the window's size, that GrabCut sees.
    """

    name = "grabcut"

    def __init__(self, cache_size: int = 8, work_side: int = 512, iterations: int = 4,
                 point_window: float = 0.25, context: float = 0.5) -> None:
        super().__init__(cache_size)
        self.work_side = work_side
        self.iterations = iterations
        self.point_window = point_window
        self.context = context

    def _encode(self, crop: np.ndarray) -> np.ndarray:
        height, width = crop.shape[:2]
        scale = min(1.0, self.work_side / max(height, width))
        if scale == 1.0:
            return np.ascontiguousarray(crop)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)

    def _predict(self, embedding: np.ndarray, crop: np.ndarray, prompt: Prompt) -> np.ndarray:
        height, width = crop.shape[:2]
        window = self._window(prompt, width, height)
        frame = self._frame(embedding, crop, window)
        seed = self._seed(prompt, frame, window, whole=window == (0, 0, width, height))
        foreground = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
        if np.count_nonzero(foreground) >= _MIN_SAMPLES and np.count_nonzero(~foreground) >= _MIN_SAMPLES:
            bgd_model = np.zeros((1, 65), np.float64)
            fgd_model = np.zeros((1, 65), np.float64)
            # GrabCut's k-means starts from OpenCV's per-thread RNG: seed it so a prompt gives the same mask
            # whichever worker thread runs it.
            cv2.setRNGSeed(0)
            try:
                cv2.grabCut(frame.pixels, seed, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
            except cv2.error as exc:
                raise SegmenterError(f"GrabCut failed on a {seed.shape[1]}x{seed.shape[0]} region: {exc.err}") from exc
            foreground = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
        # else: too few pixels on one side to fit colour models (a tiny crop or box): the seed is the answer.
        result = np.zeros((height, width), bool)
        size = (frame.x2 - frame.x1, frame.y2 - frame.y1)
        if foreground.shape[::-1] != size:
            # Linear upsampling of the 0/1 mask then a 0.5 threshold: smoother edges than nearest.
            foreground = cv2.resize(foreground.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
        result[frame.y1 : frame.y2, frame.x1 : frame.x2] = foreground
        return result

    def _window(self, prompt: Prompt, width: int, height: int) -> tuple[int, int, int, int]:
        """Integer crop-pixel box where the target may be."""
        positives = [p for p, label in zip(prompt.points, prompt.point_labels, strict=True) if label == 1]
        if prompt.box is not None:
            # Positive points outside the box still mark the target: the window covers them too.
            xs = [prompt.box[0], prompt.box[2], *(p[0] for p in positives)]
            ys = [prompt.box[1], prompt.box[3], *(p[1] for p in positives)]
        elif positives:
            pad = self.point_window * max(width, height)
            xs = [min(p[0] for p in positives) - pad, max(p[0] for p in positives) + pad]
            ys = [min(p[1] for p in positives) - pad, max(p[1] for p in positives) + pad]
        else:
            # Only negative points: nothing says where the target is, so everything else is candidate.
            xs, ys = [0.0, float(width)], [0.0, float(height)]
        x1 = min(max(math.floor(min(xs)), 0), width - 1)
        y1 = min(max(math.floor(min(ys)), 0), height - 1)
        x2 = max(min(math.ceil(max(xs)), width), x1 + 1)
        y2 = max(min(math.ceil(max(ys)), height), y1 + 1)
        return x1, y1, x2, y2

    def _frame(self, small: np.ndarray, crop: np.ndarray, window: tuple[int, int, int, int]) -> _Frame:
        """The window plus context, at full resolution if it fits in ``work_side``, else from ``small``."""
        height, width = crop.shape[:2]
        x1, y1, x2, y2 = window
        scale = small.shape[1] / width
        # Context margins in crop pixels: at least _MIN_CONTEXT work-frame pixels in either frame.
        mx = max(_MIN_CONTEXT / scale, self.context * (x2 - x1))
        my = max(_MIN_CONTEXT / scale, self.context * (y2 - y1))
        cx1, cy1 = max(0, math.floor(x1 - mx)), max(0, math.floor(y1 - my))
        cx2, cy2 = min(width, math.ceil(x2 + mx)), min(height, math.ceil(y2 + my))
        if max(cx2 - cx1, cy2 - cy1) <= self.work_side:
            return _Frame(cx1, cy1, cx2, cy2, np.ascontiguousarray(crop[cy1:cy2, cx1:cx2]))
        # Too large for full resolution: the same region cut from the downscaled copy, snapped to its grid.
        sy = small.shape[0] / height
        sx1, sy1 = math.floor(cx1 * scale), math.floor(cy1 * sy)
        sx2 = max(min(math.ceil(cx2 * scale), small.shape[1]), sx1 + 1)
        sy2 = max(min(math.ceil(cy2 * sy), small.shape[0]), sy1 + 1)
        fx1, fy1 = math.floor(sx1 / scale), math.floor(sy1 / sy)
        fx2, fy2 = min(width, math.ceil(sx2 / scale)), min(height, math.ceil(sy2 / sy))
        return _Frame(fx1, fy1, fx2, fy2, np.ascontiguousarray(small[sy1:sy2, sx1:sx2]))

    def _seed(self, prompt: Prompt, frame: _Frame, window: tuple[int, int, int, int], whole: bool) -> np.ndarray:
        """The GrabCut label image (GC_BGD / GC_FGD / GC_PR_*) the prompt describes, in the work frame."""
        height, width = frame.pixels.shape[:2]
        seed = np.full((height, width), cv2.GC_BGD, np.uint8)
        wx1, wy1 = frame.point(window[0], window[1])
        wx2, wy2 = frame.point(window[2], window[3])
        wx1, wy1 = min(max(math.floor(wx1), 0), width - 1), min(max(math.floor(wy1), 0), height - 1)
        wx2, wy2 = max(min(math.ceil(wx2), width), wx1 + 1), max(min(math.ceil(wy2), height), wy1 + 1)
        inside = seed[wy1:wy2, wx1:wx2]
        hint = prompt.mask
        if hint is not None and hint.any():
            local = hint[frame.y1 : frame.y2, frame.x1 : frame.x2].astype(np.uint8)
            local = cv2.resize(local, (width, height), interpolation=cv2.INTER_NEAREST)
            inside[:] = np.where(local[wy1:wy2, wx1:wx2] > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
        else:
            inside[:] = cv2.GC_PR_FGD
        rim = max(1, round(0.03 * min(width, height)))
        if whole and min(width, height) > 4 * rim:
            # The window is the whole crop: no sure background, so the crop's rim (where a framed object
            # usually is not) becomes probable background for the background colour model.
            border = np.ones((height, width), bool)
            border[rim:-rim, rim:-rim] = False
            seed[border & (seed == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
        radius = max(2, round(0.01 * max(width, height)))
        marks = sorted(zip(prompt.points, prompt.point_labels, strict=True), key=lambda m: m[1])
        for (x, y), label in marks:  # negatives first, so a positive point wins where disks overlap
            px, py = frame.point(x, y)
            if not (-radius <= px <= width + radius and -radius <= py <= height + radius):
                continue  # a negative point far outside the work frame: background there already
            centre = (min(max(round(px), 0), width - 1), min(max(round(py), 0), height - 1))
            cv2.circle(seed, centre, radius, int(cv2.GC_FGD if label == 1 else cv2.GC_BGD), thickness=-1)
        return seed
