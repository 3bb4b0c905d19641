"""Which policies there are, and the one way to get one: by name (``build_policy``), or saved in a directory
(``load_learnable``: the ``segloop_policy`` key of its ``config.json`` names the policy; a directory without
one is a transformers checkpoint). A policy's module is imported only when it is built, so building a
scripted policy never pulls in torch or transformers; and this module is the only one that imports the
policy implementations, so they never import each other.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel

if TYPE_CHECKING:
    from segloop.agent.policy import Policy
    from segloop.policies.learnable import LearnablePolicy

# name -> (module, class). Scripted and server policies are built with ``cls(**options)`` (plus
# ``model=`` where one is given); checkpoint policies with ``cls.from_pretrained(model, **options)``.
POLICIES: dict[str, tuple[str, str]] = {
    "compact": ("segloop.policies.compact", "CompactPolicy"),
    "transformers": ("segloop.policies.hf", "TransformersPolicy"),
    "openai": ("segloop.policies.openai_compat", "OpenAIPolicy"),
    "oracle": ("segloop.policies.scripted", "OraclePolicy"),
    "compact-expert": ("segloop.policies.compact.expert", "CompactExpert"),
    "single-shot": ("segloop.policies.scripted", "SingleShotPolicy"),
    "random": ("segloop.policies.scripted", "RandomTextPolicy"),
}
# Policies that read the ground truth: for expert data, upper bounds and baselines, never for new images.
NEEDS_TRUTH = ("oracle", "compact-expert", "single-shot")
# The scripted policies (no model): the experts SFT may imitate.
ScriptedPolicy = Literal["oracle", "compact-expert", "single-shot", "random"]
SCRIPTED: tuple[str, ...] = get_args(ScriptedPolicy)
# Policies built from a checkpoint directory (``from_pretrained``): the learnable ones.
LEARNABLE = ("compact", "transformers")


class PolicyError(ValueError):
    """A policy that cannot be built: unknown name, missing module or checkpoint, bad option."""


def _policy_class(name: str) -> Any:
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    module_name, class_name = POLICIES[name]
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PolicyError(f"policy {name!r} is not available here ({exc})") from exc


def build_policy(name: str, model: str | None = None, **options: Any) -> Policy:
    """The policy called ``name``. ``model`` is a checkpoint (hub id or path) for ``transformers`` and
    ``compact`` (default: the shipped compact checkpoint), the served model's name for ``openai``."""
    cls = _policy_class(name)
    if name in LEARNABLE:
        if model is None and name == "compact":
            from segloop.policies.compact import DEFAULT_CHECKPOINT

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


def saved_policy(directory: str | Path) -> str:
    """The name of the learnable policy saved in ``directory``: its ``config.json``'s ``segloop_policy``, or
    ``transformers`` for a directory without one (a transformers checkpoint)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no model directory at {directory}")
    config_path = directory / "config.json"
    if not config_path.is_file():
        return "transformers"
    try:
        name = json.loads(config_path.read_text()).get("segloop_policy", "transformers")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{config_path} is not a JSON object: {exc}") from None
    if name not in LEARNABLE:
        raise PolicyError(f"{config_path}: segloop_policy {name!r} is not a learnable policy ({', '.join(LEARNABLE)})")
    return name


def load_learnable(directory: str | Path, *, seed: int | None = None, **options: Any) -> LearnablePolicy:
    """The learnable policy saved in ``directory``, whichever kind it is (``saved_policy``). ``seed`` seeds a
    compact policy's own generator (language models sample from torch's, which the trainers seed); other
    ``options`` go to its ``from_pretrained``."""
    name = saved_policy(directory)
    if name == "compact" and seed is not None:
        options["seed"] = seed
    return build_policy(name, str(directory), **options)


# Attributes of a built policy that say how it acts (sampling, server, views); what a result file records as
# the policy's effective settings, defaults included.
_SETTINGS = ("name", "model", "base_url", "frame", "max_side", "greedy", "temperature", "top_p", "max_tokens",
             "max_new_tokens", "seed", "timeout_s", "max_retries", "concurrency", "device")
# The open-vocabulary agent ``unknown_words_note`` points to: a vision-language model on a local vLLM server.
VLM = "Qwen/Qwen2.5-VL-7B-Instruct"
VLM_URL = "http://localhost:8000/v1"


def policy_settings(policy: Policy) -> dict[str, Any]:
    """The built policy's effective settings that exist on it (defaults included), JSON-able; a policy with a
    pydantic ``config`` gives every field of it."""
    settings: dict[str, Any] = {}
    config = getattr(policy, "config", None)
    for name in _SETTINGS:
        value = getattr(policy, name, None)
        if isinstance(value, (str, int, float, bool)) or value is None:
            if value is not None:
                settings[name] = value
        else:
            settings[name] = str(value)
    if isinstance(config, BaseModel):
        settings.update({k: v for k, v in config.model_dump(mode="json").items() if v is not None})
    return settings


def unknown_words_note(policy_name: str, words: list[str], command: str = 'run IMAGE "QUERY" --out DIR') -> str:
    """One line saying that the policy cannot read ``words`` of a request, and the command that uses a
    vision-language model instead: ``segloop {command}`` (the command the note is printed by, with its own
    arguments) with the server policy's flags."""
    listed = ", ".join(repr(w) for w in words)
    return (f"the {policy_name} policy does not know the word{'s' if len(words) != 1 else ''} {listed} (it knows "
            f"only the words it was trained on); for open vocabulary use a vision-language model: segloop {command} "
            f"--policy openai --model {VLM} --base-url {VLM_URL} (with `vllm serve {VLM}` running there)")
