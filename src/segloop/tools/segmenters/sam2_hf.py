"""SAM 2 / 2.1 through transformers' ``Sam2Model``, with our own pre- and post-processing.

transformers' ``Sam2Processor`` needs torchvision, which cannot be installed next to the CPU torch this
project uses, so this module does what it would: resize the crop to the model's square input (SAM 2
stretches, it does not pad), ImageNet-normalise, scale prompt coordinates into that square, and scale
the low-resolution mask logits back to the crop. The image encoder runs once per (image, region)
through the base class's cache; each prompt after that is a prompt-encoder + mask-decoder forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from transformers import Sam2Model

from segloop.tools.segmenters.base import Prompt, Segmenter, SegmenterError

DEFAULT_CHECKPOINT = "facebook/sam2.1-hiera-large"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# A previous bool mask fed back as a dense prompt: SAM expects logits, so foreground/background become
# confident logits of this magnitude (SAM's own low-res logits typically lie within about +-20).
MASK_HINT_LOGIT = 10.0


def load_sam2(checkpoint: str, device: str = "cpu") -> Sam2Model:
    """A ``Sam2Model`` from a hub id or a folder written by ``save_pretrained``, in eval mode on ``device``."""
    try:
        model = Sam2Model.from_pretrained(checkpoint)
    except Exception as exc:  # from_pretrained raises OSError, ValueError, HTTP errors...: one message
        raise SegmenterError(
            f"cannot load the SAM2 checkpoint {checkpoint!r} ({type(exc).__name__}: {exc}); give a hub id "
            "reachable from this machine or a folder saved with Sam2Model.save_pretrained"
        ) from exc
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as exc:
        raise SegmenterError(f"cannot move the SAM2 model to device {device!r}: {exc}") from exc


@dataclass(frozen=True)
class _Embedding:
    features: list[torch.Tensor]


class Sam2Segmenter(Segmenter):
    """SAM 2 via transformers; ``model`` may be a checkpoint name/path or an already-built ``Sam2Model``."""

    name = "sam2"

    def __init__(self, model: str | Path | Sam2Model = DEFAULT_CHECKPOINT, device: str = "cpu",
                 cache_size: int = 8) -> None:
        super().__init__(cache_size)
        self.model = model.to(device).eval() if isinstance(model, Sam2Model) else load_sam2(str(model), device)
        self.device = torch.device(device)
        size = self.model.config.prompt_encoder_config.image_size
        self.input_size = int(size if isinstance(size, int) else size[0])

    def _encode(self, crop: np.ndarray) -> _Embedding:
        side = self.input_size
        shrinking = max(crop.shape[:2]) > side
        resized = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        normalised = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        pixels = torch.from_numpy(normalised.transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            features = self.model.get_image_embeddings(pixels)
        return _Embedding(list(features))

    def _predict(self, embedding: _Embedding, crop: np.ndarray, prompt: Prompt) -> np.ndarray:
        height, width = crop.shape[:2]
        sx, sy = self.input_size / width, self.input_size / height
        inputs: dict[str, torch.Tensor] = {}
        # The model adds half a pixel to every coordinate (it takes pixel indices); our coordinates are
        # continuous, so half a pixel comes off first and x / width is what the model encodes.
        if prompt.points:
            points = [[x * sx - 0.5, y * sy - 0.5] for x, y in prompt.points]
            inputs["input_points"] = torch.tensor([[points]], dtype=torch.float32, device=self.device)
            inputs["input_labels"] = torch.tensor([[list(prompt.point_labels)]], dtype=torch.long, device=self.device)
        if prompt.box is not None:
            x1, y1, x2, y2 = prompt.box
            box = [max(x1, 0.0) * sx - 0.5, max(y1, 0.0) * sy - 0.5,
                   min(x2, width) * sx - 0.5, min(y2, height) * sy - 0.5]
            inputs["input_boxes"] = torch.tensor([[box]], dtype=torch.float32, device=self.device)
        if prompt.mask is not None and prompt.mask.any():
            side = self.model.prompt_encoder.mask_input_size[0]
            share = cv2.resize(prompt.mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
            logits = (2.0 * share - 1.0) * MASK_HINT_LOGIT
            inputs["input_masks"] = torch.from_numpy(logits)[None, None].to(self.device)
        with torch.inference_mode():
            out = self.model(image_embeddings=embedding.features, multimask_output=True, **inputs)
        best = int(out.iou_scores[0, 0].argmax())
        low_res = out.pred_masks[0, 0, best].float().cpu().numpy()
        return cv2.resize(low_res, (width, height), interpolation=cv2.INTER_LINEAR) > 0.0
