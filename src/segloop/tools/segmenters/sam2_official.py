"""SAM 2 / 2.1 through Meta's ``sam2`` package (``SAM2ImagePredictor``): an optional backend.

The package imports torchvision, which the default install does not have (there is no CPU build of it
for this project's torch), so it is an extra for hosts that have a working torchvision:

    SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2 && pip install hydra-core iopath

The predictor holds one image's features at a time; this backend keeps each (image, region)'s features
in the base class's cache and puts them back into the predictor before a prompt.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segloop.tools.segmenters.base import Prompt, Segmenter, SegmenterError

DEFAULT_CHECKPOINT = "facebook/sam2.1-hiera-large"
INSTALL_HINT = ("install it where torchvision works: SAM2_BUILD_CUDA=0 pip install --no-deps "
                "--no-build-isolation sam2 && pip install hydra-core iopath (it needs torchvision)")
# Meta's checkpoint files name their config: sam2.1_hiera_base_plus.pt -> configs/sam2.1/sam2.1_hiera_b+.yaml.
_SIZE_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
_CHECKPOINT_NAME = re.compile(r"^(sam2(?:\.1)?)_hiera_(tiny|small|base_plus|large)$")
# As in sam2_hf: SAM expects mask logits, a bool hint becomes confident logits of this size.
MASK_HINT_LOGIT = 10.0


def _import_sam2() -> tuple[Any, Any, Any]:
    try:
        from sam2.build_sam import build_sam2, build_sam2_hf
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as exc:
        raise SegmenterError(f"the sam2-official segmenter needs Meta's sam2 package ({exc}); {INSTALL_HINT}, "
                             "or use --segmenter sam2 (transformers) instead") from exc
    return build_sam2, build_sam2_hf, SAM2ImagePredictor


def config_for_checkpoint(path: Path) -> str:
    """The packaged hydra config that matches a Meta checkpoint file name."""
    match = _CHECKPOINT_NAME.match(path.stem)
    if match is None:
        raise SegmenterError(
            f"cannot tell the model size from {path.name!r}; keep Meta's file name "
            "(e.g. sam2.1_hiera_large.pt) or give a hub id such as facebook/sam2.1-hiera-large"
        )
    family, size = match.groups()
    return f"configs/{family}/{family}_hiera_{_SIZE_SUFFIX[size]}.yaml"


@dataclass(frozen=True)
class _Features:
    features: dict[str, Any]
    orig_hw: list[tuple[int, int]]


class OfficialSam2Segmenter(Segmenter):
    """``model``: a hub id (``facebook/sam2.1-hiera-large``), a Meta ``.pt`` checkpoint file, or a built
    ``SAM2Base`` model."""

    name = "sam2-official"

    def __init__(self, model: Any = DEFAULT_CHECKPOINT, device: str = "cpu", cache_size: int = 8) -> None:
        super().__init__(cache_size)
        build_sam2, build_sam2_hf, predictor_class = _import_sam2()
        if isinstance(model, (str, Path)):
            path = Path(model)
            try:
                if path.suffix == ".pt":
                    if not path.is_file():
                        raise SegmenterError(f"{path}: no such checkpoint file")
                    model = build_sam2(config_for_checkpoint(path), ckpt_path=str(path), device=device)
                else:
                    model = build_sam2_hf(str(model), device=device)
            except SegmenterError:
                raise
            except Exception as exc:  # hydra, hub and torch errors alike: one clear message
                raise SegmenterError(f"cannot load the SAM2 checkpoint {str(model)!r} "
                                     f"({type(exc).__name__}: {exc})") from exc
        self.predictor = predictor_class(model)
        # The predictor hard-codes the feature sizes of a 1024-px model (strides 4, 8, 16); a model built at
        # another resolution needs them to follow its image size.
        side = int(getattr(model, "image_size", 1024))
        self.predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
        # The predictor keeps the current image's features in its own attributes: one user at a time.
        self._predictor_lock = threading.Lock()

    def _encode(self, crop: np.ndarray) -> _Features:
        with self._predictor_lock:
            self.predictor.set_image(crop)
            return _Features(self.predictor._features, list(self.predictor._orig_hw))

    def _predict(self, embedding: _Features, crop: np.ndarray, prompt: Prompt) -> np.ndarray:
        height, width = crop.shape[:2]
        # The predictor adds half a pixel (it takes pixel indices); ours are continuous coordinates.
        points = labels = box = mask_input = None
        if prompt.points:
            points = np.array(prompt.points, np.float32) - 0.5
            labels = np.array(prompt.point_labels, np.int32)
        if prompt.box is not None:
            x1, y1, x2, y2 = prompt.box
            box = np.array([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)], np.float32) - 0.5
        if prompt.mask is not None and prompt.mask.any():
            side = self.predictor.model.sam_prompt_encoder.mask_input_size[0]
            share = cv2.resize(prompt.mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
            mask_input = ((2.0 * share - 1.0) * MASK_HINT_LOGIT)[None]
        with self._predictor_lock:
            p = self.predictor
            p._features, p._orig_hw, p._is_image_set, p._is_batch = embedding.features, embedding.orig_hw, True, False
            masks, scores, _ = p.predict(point_coords=points, point_labels=labels, box=box, mask_input=mask_input,
                                         multimask_output=True)
        return np.asarray(masks[int(np.argmax(scores))]) > 0
