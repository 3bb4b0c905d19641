"""Loading a checkpoint's processor where torchvision is missing.

``load_processor`` is ``AutoProcessor.from_pretrained``, falling back to an image-only subclass of the
family's processor: the stock Qwen-VL processors insist on a video processor, which needs torchvision, and
there is no working torchvision build for the CPU torch this project pins.

Code that loads checkpoints by itself (``transformers serve``, a notebook) finds these classes through
``AutoProcessor`` once ``register_image_only_processors()`` has run in its process (``scripts/transformers_serve.py``
does so before starting the server): a checkpoint saved with one (the tiny model's ``processor_config.json`` names
``ImageOnlyQwen2_5_VLProcessor``) then loads with stock ``AutoProcessor.from_pretrained``.
"""

from __future__ import annotations

from typing import Any

# Qwen-VL families whose processor can run image-only: model_type -> processor class name in transformers.
_IMAGE_ONLY_BASES = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                     "qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}
_IMAGE_ONLY: dict[str, type] = {}


def image_only_processor_class(model_type: str = "qwen2_5_vl") -> type:
    """The family's processor without a video processor, so it needs no torchvision (the stock ones insist
    on one). Built on first use: importing transformers is heavy."""
    if model_type not in _IMAGE_ONLY_BASES:
        raise ValueError(f"no image-only processor for model type {model_type!r} "
                         f"(known: {', '.join(_IMAGE_ONLY_BASES)})")
    if model_type not in _IMAGE_ONLY:
        import transformers

        base = getattr(transformers, _IMAGE_ONLY_BASES[model_type])

        def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            self.video_processor = None  # read by the base __init__ before it would build one
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template)

        _IMAGE_ONLY[model_type] = type(f"ImageOnly{base.__name__}", (base,), {"__init__": __init__})
    return _IMAGE_ONLY[model_type]


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


def register_image_only_processors() -> list[str]:
    """Register every family's image-only processor with ``AutoProcessor`` (so that a checkpoint whose
    ``processor_config.json`` names one loads through it); returns the class names registered. A checkpoint
    naming the stock class still gets the stock class."""
    from transformers import AutoProcessor
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    names = []
    for model_type in _IMAGE_ONLY_BASES:
        cls = image_only_processor_class(model_type)
        AutoProcessor.register(CONFIG_MAPPING[model_type], cls, exist_ok=True)
        names.append(cls.__name__)
    return names
