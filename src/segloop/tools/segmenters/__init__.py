"""Segmenters behind one protocol; ``build_segmenter`` picks one by name.

Backends are imported only when built, so the weight-free GrabCut never pulls in torch.
"""

from __future__ import annotations

from segloop.tools.segmenters.base import Prompt, Segmenter, SegmenterError

# "box" fills the prompt's box: for benchmarks and tests, not for answers.
SEGMENTERS = ("grabcut", "sam2", "sam2-official", "box")

__all__ = ["SEGMENTERS", "Prompt", "Segmenter", "SegmenterError", "build_segmenter"]


def build_segmenter(name: str, model: str | None = None, device: str = "cpu", cache_size: int = 8) -> Segmenter:
    """The segmenter called ``name``; ``model`` is a checkpoint (hub id or path) for the SAM2 backends,
    their default when None. GrabCut takes no model."""
    if name in ("grabcut", "box") and model is not None:
        raise SegmenterError(f"the {name} segmenter takes no model checkpoint (got {model!r})")
    if name == "grabcut":
        from segloop.tools.segmenters.grabcut import GrabCutSegmenter

        return GrabCutSegmenter(cache_size=cache_size)
    if name == "box":
        from segloop.tools.segmenters.box import BoxSegmenter

        return BoxSegmenter(cache_size=cache_size)
    if name == "sam2":
        from segloop.tools.segmenters.sam2_hf import DEFAULT_CHECKPOINT, Sam2Segmenter

        return Sam2Segmenter(model or DEFAULT_CHECKPOINT, device=device, cache_size=cache_size)
    if name == "sam2-official":
        from segloop.tools.segmenters.sam2_official import DEFAULT_CHECKPOINT, OfficialSam2Segmenter

        return OfficialSam2Segmenter(model or DEFAULT_CHECKPOINT, device=device, cache_size=cache_size)
    raise SegmenterError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
