"""``SegloopAgentLoop``: verl's ``AgentLoopBase`` registered as ``segloop_agent``, running our episode.

verl builds one loop object per trajectory (``hydra.utils.instantiate`` of the ``agent_loops.yaml`` entry,
whose keys besides ``name`` and ``_target_`` arrive here as keyword arguments, validated as
``LoopSettings``) inside an ``AgentLoopWorker`` Ray actor, and awaits ``run(sampling_params, **row)``.
The segmenter is built once per worker process and shared by its episodes: SAM2's weights load once, and
its embedding cache serves every episode of a group (they start from the same image).

Only the stable part of verl's API is used: ``AgentLoopBase`` (the arguments its signature names passed
through untouched, so both ``dataset_config`` (0.8) and ``data_config`` (0.9+) work), ``register``,
``AgentLoopOutput``, ``AgentLoopMetrics`` and ``server_manager.generate``. Import this module only where
verl is installed (``agent_loops.yaml`` names it).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from pydantic import ValidationError
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from segloop.rl.verl.episode import AGENT_NAME, LoopSettings, run_episode

_SEGMENTERS: dict[tuple[str, str | None, str], Any] = {}


def _plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes) as plain dicts and lists, for pydantic."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


@functools.cache
def _verl_arguments() -> frozenset[str]:
    """What verl passes a loop besides our settings: ``AgentLoopBase``'s parameters, the registry entry's
    ``name`` and the worker's ``tools`` (for verl's own tool loop)."""
    return frozenset(inspect.signature(AgentLoopBase.__init__).parameters) | {"name", "tools"}


def _segmenter(settings: LoopSettings) -> Any:
    from segloop.tools.segmenters import build_segmenter

    key = (settings.segmenter, settings.segmenter_model, settings.segmenter_device)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = build_segmenter(settings.segmenter, settings.segmenter_model, settings.segmenter_device)
    return _SEGMENTERS[key]


@functools.cache
def _generation_eos(path: str) -> list[int]:
    """The model's own end-of-turn ids, from its generation config when the checkpoint has one (Qwen's lists
    ``<|endoftext|>`` besides the tokenizer's ``<|im_end|>``)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        return []
    return [eos] if isinstance(eos, int) else list(eos or [])


@register(AGENT_NAME)
class SegloopAgentLoop(AgentLoopBase):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # verl's own arguments go to AgentLoopBase; every other key came from our agent_loops.yaml entry and
        # must be a LoopSettings field (a misspelt key is an error, not a silently ignored default).
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k not in _verl_arguments()}
        super().__init__(*args, **kwargs)
        try:
            self.settings = LoopSettings.model_validate(_plain(ours))
        except ValidationError as exc:
            raise ValueError(f"{AGENT_NAME} settings (agent_loops.yaml): {exc}") from exc
        if self.processor is None:
            raise ValueError("segloop_agent needs a vision-language model with a processor (a Qwen-VL checkpoint)")

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        rollout = self.config.actor_rollout_ref.rollout
        fields = await run_episode(
            self.server_manager, self.processor, kwargs, sampling_params, settings=self.settings,
            segmenter=_segmenter(self.settings), prompt_length=int(rollout.prompt_length),
            response_length=int(rollout.response_length),
            eos_ids=_generation_eos(str(self.config.actor_rollout_ref.model.path)),
        )
        metrics = fields.pop("metrics")
        return AgentLoopOutput(**fields, metrics=AgentLoopMetrics(**metrics))
