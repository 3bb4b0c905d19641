"""Segmenters behind one protocol; ``build_segmenter`` picks one by name.

Backends are imported only when built, so the weight-free GrabCut never pulls in torch.
"""

from __future__ import annotations

from tools.segmenters.base import Prompt, Segmenter, SegmenterError

SEGMENTERS = ("grabcut", "sam2", "sam2-official")

__all__ = ["SEGMENTERS", "Prompt", "Segmenter", "SegmenterError", "build_segmenter"]


def build_segmenter(name: str, model: str | None = None, device: str = "cpu", cache_size: int = 8) -> Segmenter:
    """The segmenter called ``name``; ``model`` is a checkpoint (hub id or path) for the SAM2 backends,
    their default when None. GrabCut takes no model."""
    if name == "grabcut":
        if model is not None:
            raise SegmenterError(f"the grabcut segmenter takes no model checkpoint (got {model!r})")
        from tools.segmenters.grabcut import GrabCutSegmenter

        return GrabCutSegmenter(cache_size=cache_size)
    if name == "sam2":
        from tools.segmenters.sam2_hf import DEFAULT_CHECKPOINT, Sam2Segmenter

        return Sam2Segmenter(model or DEFAULT_CHECKPOINT, device=device, cache_size=cache_size)
    if name == "sam2-official":
        from tools.segmenters.sam2_official import DEFAULT_CHECKPOINT, OfficialSam2Segmenter

        return OfficialSam2Segmenter(model or DEFAULT_CHECKPOINT, device=device, cache_size=cache_size)
    raise SegmenterError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
