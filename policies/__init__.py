"""Who chooses the next action. ``build_policy`` picks one by name and imports only that one's module,
so building a scripted policy never pulls in torch or transformers."""

from __future__ import annotations

import importlib
from typing import Any

# name -> (module, class). Scripted and server policies are built with ``cls(**options)`` (plus
# ``model=`` where one is given); checkpoint policies with ``cls.from_pretrained(model, **options)``.
POLICIES: dict[str, tuple[str, str]] = {
    "oracle": ("policies.scripted", "OraclePolicy"),
    "single-shot": ("policies.scripted", "SingleShotPolicy"),
    "random": ("policies.scripted", "RandomTextPolicy"),
    "transformers": ("policies.hf", "TransformersPolicy"),
    "openai": ("policies.openai_compat", "OpenAIPolicy"),
    "compact": ("policies.compact", "CompactPolicy"),
}
_FROM_PRETRAINED = ("transformers", "compact")


class PolicyError(ValueError):
    """A policy that cannot be built: unknown name, missing module or checkpoint, bad option."""


def build_policy(name: str, model: str | None = None, **options: Any) -> Any:
    """The policy called ``name``. ``model`` is a checkpoint (hub id or path) for ``transformers`` and
    ``compact`` (default: the shipped compact checkpoint), the served model's name for ``openai``."""
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    module_name, class_name = POLICIES[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PolicyError(f"policy {name!r} is not available here ({exc})") from exc
    if name in _FROM_PRETRAINED:
        if model is None and name == "compact":
            from policies.compact import DEFAULT_CHECKPOINT

            model = str(DEFAULT_CHECKPOINT)
        if model is None:
            raise PolicyError(f"policy {name!r} needs --model (a checkpoint path or hub id)")
        return cls.from_pretrained(model, **options)
    if name == "openai" and model is None:
        raise PolicyError("policy 'openai' needs --model (the served model's name)")
    if model is not None:
        if name != "openai":
            raise PolicyError(f"policy {name!r} takes no model (got {model!r})")
        options["model"] = model
    try:
        return cls(**options)
    except TypeError as exc:
        raise PolicyError(f"bad options for policy {name!r}: {exc}") from exc
