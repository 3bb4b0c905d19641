"""Loading a checkpoint's processor where torchvision is missing.

``load_processor`` is ``AutoProcessor.from_pretrained``, falling back to an image-only subclass of the
family's processor (``policies.image_only_processing``): the stock Qwen-VL processors insist on a video
processor, which needs torchvision, and there is no working torchvision build for the CPU torch this project
pins. A checkpoint saved with an image-only processor (the tiny model of ``segloop make-tiny``, a trained one)
has the stock layout and loads with images in code that knows nothing of segloop: stock ``AutoProcessor``
where torchvision is installed, ``transformers serve --trust-remote-code`` anywhere (see that module).
"""

from __future__ import annotations

from typing import Any


def image_only_processor_class(model_type: str = "qwen2_5_vl") -> type:
    """The family's processor without a video processor, so it needs no torchvision (the stock ones insist
    on one). Imported on first use: importing transformers is heavy."""
    from segloop.policies.image_only_processing import IMAGE_ONLY

    if model_type not in IMAGE_ONLY:
        raise ValueError(f"no image-only processor for model type {model_type!r} (known: {', '.join(IMAGE_ONLY)})")
    return IMAGE_ONLY[model_type]


def load_processor(name_or_path: str) -> Any:
    """The processor of a checkpoint by hub id or path: ``AutoProcessor``, or, where that cannot build one
    because torchvision is missing (no video processor), the family's image-only processor."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import is_torchvision_available

    failure: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
    except Exception as exc:  # without torchvision it fails in several ways (AttributeError, ImportError, ...)
        failure, processor = exc, None
    # Without torchvision AutoProcessor may also quietly return the bare tokenizer.
    if getattr(processor, "image_processor", None) is not None:
        return processor
    if is_torchvision_available() and failure is not None:
        raise failure
    try:
        model_type = AutoConfig.from_pretrained(name_or_path).model_type
        return image_only_processor_class(model_type).from_pretrained(name_or_path)
    except Exception as exc:
        raise ValueError(f"cannot load an image-text processor from {name_or_path}: "
                         f"{str(failure or exc).splitlines()[0]}") from None
