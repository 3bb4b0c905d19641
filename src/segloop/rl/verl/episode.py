"""One segloop episode with verl's rollout server as the generator, as the fields of verl's ``AgentLoopOutput``.

The episode is ours end to end: the ``Agent`` graph, the tools, the reward (``rl.rewards``) and a
``LedgerPolicy`` (``policies.ledger``: the same templating and observation-delta code the transformers
policy uses) whose generate function is ``server_manager.generate(request_id, prompt_ids=...,
sampling_params=..., image_data=...)``, verl's token-in/token-out call to its vLLM/SGLang server (stable
across verl 0.8 to 0.10). The ledger then splits into verl's layout: ``prompt_ids`` (the first template
call), ``response_ids`` (every later token), ``response_mask`` (1 on the policy's own tokens only),
``response_logprobs``, and the images shown, in the order of their image tokens. verl's worker recomputes
``pixel_values`` and the Qwen-VL rope positions from those images with the same processor.

The reward is computed here (IoU of the submitted mask with the row's ground truth, plus the format term)
and returned as ``reward_score``, so verl's reward manager is skipped; its parts travel in
``extra_fields``, where ``rl.verl.reward.compute_score`` finds them if a reward manager runs anyway.

Nothing here imports verl: this module runs in our environment, tested with a stand-in server manager
that speaks verl's protocol, and in verl's, under ``segloop.rl.verl.loop.SegloopAgentLoop``.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segloop.policies.ledger import (
    Generated,
    GenerateRequest,
    LedgerPolicy,
    TokenLedger,
    processor_max_side,
    turn_stops,
)
from segloop.policies.ledger import vision_ids as vision_token_ids
from segloop.rl.rewards import RewardConfig, episode_reward
from segloop.tools.masks import rle_decode

DATA_SOURCE = "segloop"
AGENT_NAME = "segloop_agent"


class LoopSettings(BaseModel):
    """What the agent loop's entry in ``agent_loops.yaml`` may set besides ``name`` and ``_target_``."""

    model_config = ConfigDict(extra="forbid")

    segmenter: str = "grabcut"
    segmenter_model: str | None = None
    segmenter_device: str = "cpu"
    max_turns: int = Field(6, ge=1, le=100)
    max_new_tokens: int = Field(256, ge=1, description="per turn; also capped by the response budget left")
    frame: Literal["pixels", "norm1000"] = "pixels"
    max_side: int | None = Field(None, ge=28, description="longest view side; default: what the processor takes")
    reward: RewardConfig = Field(default_factory=RewardConfig)


class EpisodeRow(BaseModel):
    """The parts of a dataset row (``rl.verl.export`` layout) an episode needs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: np.ndarray
    query: str
    ground_truth: np.ndarray
    ignore: np.ndarray | None
    sample_id: str


def _image_array(part: Any) -> np.ndarray:
    """An image as verl's dataset hands it to a loop: a PIL image, or ``{"bytes": ...}`` / ``{"image": ...}``
    (the row's ``images`` entry merged into the ``{"type": "image"}`` content part), bytes or a path."""
    from PIL import Image

    if isinstance(part, Mapping):
        part = part.get("bytes") if part.get("bytes") is not None else part.get("image")
    if isinstance(part, Mapping):  # {"image": {"bytes": ...}}
        return _image_array(part)
    if isinstance(part, Image.Image):
        return np.asarray(part.convert("RGB"))
    if isinstance(part, (bytes, bytearray)):
        with Image.open(io.BytesIO(part)) as image:
            return np.asarray(image.convert("RGB"))
    if isinstance(part, str):
        with Image.open(part) as image:
            return np.asarray(image.convert("RGB"))
    raise ValueError(f"cannot read an image from a {type(part).__name__}")


def parse_row(row: Mapping[str, Any]) -> EpisodeRow:
    """The image (the first image of ``raw_prompt``), query, ground truth and ignore region of a row."""
    images = [part for message in row.get("raw_prompt") or [] if not isinstance(message.get("content"), str)
              for part in message["content"] if isinstance(part, Mapping) and part.get("type") == "image"]
    if not images:
        raise ValueError("the row's raw_prompt holds no image: export the data with `segloop export-verl` "
                         "and set data.return_raw_chat=True")
    extra = dict(row.get("extra_info") or {})
    ground_truth = (row.get("reward_model") or {}).get("ground_truth")
    if "query" not in extra or not ground_truth:
        raise ValueError("the row needs extra_info.query and reward_model.ground_truth (segloop export-verl)")
    image = _image_array(images[0])
    mask = rle_decode(ground_truth)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"ground truth is {mask.shape}, image is {image.shape[:2]}")
    ignore = rle_decode(extra["ignore"]) if extra.get("ignore") else None
    return EpisodeRow(image=image, query=str(extra["query"]), ground_truth=mask, ignore=ignore,
                      sample_id=str(extra.get("id", extra.get("index", ""))))


class ServerGenerate:
    """``LedgerPolicy``'s generate function over verl's server manager.

    Every turn of an episode uses the episode's request id (verl routes it to the same server, whose prefix
    cache then holds the history). A turn stops at an EOS id or at ``</tool_call>``, and gets at most
    ``max_new_tokens`` or what is left of the response budget. A vision placeholder the model writes ends the
    turn before it (it would be read as an image the next time the ledger goes through the model).
    """

    def __init__(self, server_manager: Any, sampling_params: Mapping[str, Any], *, stops: Any,
                 vision_ids: list[int], max_new_tokens: int, response_length: int) -> None:
        self.server_manager = server_manager
        self.sampling_params = dict(sampling_params)
        self.stops = stops
        self.vision_ids = set(vision_ids)
        self.max_new_tokens = max_new_tokens
        self.response_length = response_length
        self.request_ids: dict[str, str] = {}
        self.logprobs_missing = False
        self.seconds = 0.0

    async def __call__(self, request: GenerateRequest) -> Generated:
        from PIL import Image

        ledger = request.ledger
        left = self.response_length - (len(ledger.ids) - ledger.prompt_length)
        if left < 1:
            raise ValueError(f"the response budget of {self.response_length} tokens is spent "
                             "(raise actor_rollout_ref.rollout.response_length or lower max_turns)")
        params = {**self.sampling_params, "max_tokens": min(self.max_new_tokens, left),
                  "stop_token_ids": list(self.stops.ids)}
        if self.stops.strings:
            params.update(stop=list(self.stops.strings), include_stop_str_in_output=True)
        request_id = self.request_ids.setdefault(request.episode_id, uuid.uuid4().hex)
        started = time.perf_counter()
        output = await self.server_manager.generate(
            request_id=request_id, prompt_ids=list(ledger.ids), sampling_params=params,
            image_data=[Image.fromarray(a) for a in ledger.images] or None)
        self.seconds += time.perf_counter() - started
        ids = [int(i) for i in output.token_ids]
        if output.log_probs is None:
            # calculate_log_probs off: verl then trains without rollout log-probs; the ledger holds zeros.
            self.logprobs_missing = True
            logprobs = [0.0] * len(ids)
        else:
            logprobs = [float(x) for x in output.log_probs]
        cut = next((k for k, i in enumerate(ids) if i in self.vision_ids), len(ids))
        return Generated(ids[:cut], logprobs[:cut])


def fit_response(ledger: TokenLedger, response_length: int, vision: tuple[int, int]) -> tuple[dict[str, list], int]:
    """The ledger's prompt/response lists with at most ``response_length`` response tokens, and how many
    images the kept tokens show. A cut never splits an image's tokens (verl recomputes the image inputs from
    the images kept, so their tokens must be whole): it moves back to the image's ``<|vision_start|>``.
    ``vision`` is the ids of ``<|vision_start|>`` and ``<|vision_end|>``."""
    from segloop.policies.lm_tensors import ledger_parts

    start_id, end_id = vision
    parts = ledger_parts(ledger)
    response = parts["response_ids"]
    spans, opened = [], None
    for k, token in enumerate(response):
        if token == start_id:
            opened = k
        elif token == end_id and opened is not None:
            spans.append((opened, k))
            opened = None
    cut = min(response_length, len(response))
    for start, end in spans:
        if start < cut <= end:
            cut = start
    kept = sum(i == start_id for i in parts["prompt_ids"]) + sum(end < cut for _, end in spans)
    return {key: value if key == "prompt_ids" else value[:cut] for key, value in parts.items()}, kept


async def run_episode(server_manager: Any, processor: Any, row: Mapping[str, Any], sampling_params: Mapping[str, Any],
                      *, settings: LoopSettings, segmenter: Any, prompt_length: int, response_length: int,
                      eos_ids: list[int] | None = None) -> dict[str, Any]:
    """One episode of ``row`` generated by ``server_manager``: ``AgentLoopOutput``'s fields, with
    ``metrics`` as a plain dict (seconds generating and in tools)."""
    from PIL import Image

    from segloop.agent.episode import EpisodeConfig
    from segloop.policies.assembly import AgentSpec, build_agent

    data = parse_row(row)
    tokenizer = processor.tokenizer
    stops = turn_stops(tokenizer, eos_ids or [])
    generate = ServerGenerate(server_manager, sampling_params, stops=stops, vision_ids=vision_token_ids(tokenizer),
                              max_new_tokens=settings.max_new_tokens, response_length=response_length)
    policy = LedgerPolicy(processor, generate, stops=stops, frame=settings.frame, name="verl",
                          max_side=processor_max_side(processor, settings.max_side, "the rollout model"))
    spec = AgentSpec(policy="verl", episode=EpisodeConfig(max_turns=settings.max_turns))
    agent = build_agent(spec, policy=policy, segmenter=segmenter)
    started = time.perf_counter()
    result = await agent.run(data.image, data.query, episode_id=f"verl-{uuid.uuid4().hex}",
                             ground_truth=data.ground_truth, ignore=data.ignore)
    seconds = time.perf_counter() - started
    trajectory = result.trajectory
    ledger: TokenLedger | None = trajectory.ledger
    if ledger is None:
        failure = trajectory.failure.describe() if trajectory.failure else "no reason recorded"
        raise ValueError(f"the episode ended before the policy acted: {failure}")
    if ledger.prompt_length > prompt_length:
        raise ValueError(f"the first prompt has {ledger.prompt_length} tokens, more than "
                         f"rollout.prompt_length={prompt_length}: raise it or lower max_side")
    reward = await asyncio.to_thread(episode_reward, result, data.ground_truth, data.ignore, settings.reward)
    vision = tuple(tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"]))
    parts, n_images = fit_response(ledger, response_length, vision)
    return {
        **parts,
        "response_logprobs": None if generate.logprobs_missing else parts["response_logprobs"],
        "multi_modal_data": {"images": [Image.fromarray(a) for a in ledger.images[:n_images]]},
        "reward_score": reward.reward,
        # verl counts messages after the system prompt: the user turn, then an assistant and a tool turn each.
        "num_turns": 1 + 2 * len(trajectory.turns),
        "metrics": {"generate_sequences": generate.seconds, "tool_calls": max(seconds - generate.seconds, 0.0)},
        "extra_fields": {
            "turn_scores": [], "tool_rewards": [],
            "segloop_reward": reward.reward, "segloop_iou": reward.iou, "segloop_format": reward.format,
            "segloop_turns": len(trajectory.turns), "segloop_submitted": trajectory.submitted,
            "segloop_invalid_actions": trajectory.invalid_actions,
            "segloop_failure": trajectory.failure.describe() if trajectory.failure else None,
            "segloop_tool_counts": dict(trajectory.tool_counts), "segloop_sample_id": data.sample_id,
        },
    }
