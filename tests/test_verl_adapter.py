"""The verl adapter: our episode with a server's token-in/token-out ``generate`` as the generator.

Runs here always: ``rl.verl.episode.run_episode`` (the body of ``SegloopAgentLoop.run``) against a stand-in
server manager that speaks verl's protocol (``generate(request_id, *, prompt_ids, sampling_params,
image_data)`` -> ``TokenOutput(token_ids, log_probs, ...)``), backed by the tiny model, which re-processes
the images it is sent as a server does; its output is checked against a ``TransformersPolicy`` ledger of the
same episode; configs/verl read back. Runs where verl is importable (its own environment, .venv-verl from
``bash scripts/setup.sh --verl``, where .ci/run runs this file; docs/verl.md): the
same episode through verl's real ``AgentLoopBase`` (built from configs/verl/agent_loops.yaml as verl's worker
builds it), ``RLHFDataset`` (reading our exported parquet), ``TokenOutput`` and ``AgentLoopOutput``; and
configs/verl/segloop_grpo.yaml composed with verl's own Hydra config and checked by its ``validate_config``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel

from segloop.agent.actions import Segment, Submit, ZoomIn
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.data.specs import load_items
from segloop.policies.hf import TransformersPolicy
from segloop.policies.ledger import GenerateRequest, TokenLedger
from segloop.rl.rewards import episode_reward
from segloop.rl.sft import ExpertForcing
from segloop.rl.verl.episode import AGENT_NAME, LoopSettings, fit_response, parse_row, run_episode
from segloop.rl.verl.export import row_of
from segloop.rl.verl.reward import compute_score
from segloop.tools.segmenters import build_segmenter

SIDE = 112
HAS_VERL = importlib.util.find_spec("verl") is not None
VERL_MISSING = ("verl is not installed in this environment (verl 0.9.1 pins transformers below 5.11): these run in "
                ".venv-verl, `bash scripts/setup.sh --verl && .venv-verl/bin/python -m pytest "
                "tests/test_verl_adapter.py`, which .ci/run does")
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "verl"


class TokenOutput(BaseModel):
    """verl's ``TokenOutput`` fields (``verl.workers.rollout.replica``)."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    routed_experts: Any = None
    stop_reason: str | None = None
    num_preempted: int | None = None
    extra_fields: dict[str, Any] = {}


class TinyServer:
    """A server manager backed by the tiny model. ``script`` given: each request id's turns are those texts,
    scored by one forward pass (a model that would write them); else greedy generation with the stop ids and
    token limit the request asks for. Images come as PIL images and are processed here, as vLLM does."""

    def __init__(self, policy: TransformersPolicy, script: list[str] | None = None,
                 output: type[BaseModel] = TokenOutput) -> None:
        self.policy = policy
        self.script = script
        self.output = output  # verl's own TokenOutput where verl is installed
        self.calls: list[dict[str, Any]] = []

    def _ledger(self, prompt_ids: list[int], image_data: list[Image.Image] | None) -> TokenLedger:
        ledger = TokenLedger(ids=list(prompt_ids), mask=[0] * len(prompt_ids), logprobs=[0.0] * len(prompt_ids),
                             prompt_length=len(prompt_ids))
        for image in image_data or []:
            out = self.policy.processor.image_processor(images=[image], return_tensors="pt")
            ledger.images.append(np.asarray(image))
            ledger.pixel_values.append(out["pixel_values"])
            ledger.image_grid_thw.append(out["image_grid_thw"][0])
        return ledger

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list[Any] | None = None, **kwargs: Any) -> TokenOutput:
        turn = sum(call["request_id"] == request_id for call in self.calls)
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "params": dict(sampling_params),
                           "images": len(image_data or [])})
        ledger = self._ledger(prompt_ids, image_data)
        if self.script is not None:
            text = self.script[min(turn, len(self.script) - 1)]
            ids = self.policy.tokenizer(text, add_special_tokens=False)["input_ids"]
            logprobs = await asyncio.to_thread(self.policy.score, ledger, ids)
            return self.output(token_ids=ids, log_probs=logprobs if sampling_params.get("logprobs") else None)
        assert set(sampling_params["stop_token_ids"]) == set(self.policy.stops.ids)
        self.policy.max_new_tokens = sampling_params["max_tokens"]
        out = await asyncio.to_thread(self.policy.generate_batch, [GenerateRequest(request_id, ledger, None, turn)])
        return self.output(token_ids=out[0].ids,
                           log_probs=out[0].logprobs if sampling_params.get("logprobs") else None)


class _Expert:
    name, frame, max_side = "script", "pixels", SIDE

    def __init__(self, texts: list[str]) -> None:
        self.texts, self.turn = texts, 0

    async def act(self, context: PolicyContext) -> PolicyTurn:
        self.turn += 1
        return PolicyTurn(text=self.texts[min(self.turn - 1, len(self.texts) - 1)])

    def end_episode(self, episode_id: str) -> None:
        return None


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def item() -> Any:
    return load_items("synth:easy:256:3:1")[0]


@pytest.fixture(scope="module")
def texts(item: Any) -> list[str]:
    """Segment the target (its box in the 112 px view), zoom in, submit: three observations with images."""
    ys, xs = np.nonzero(item.mask)
    box = [int(xs.min() * SIDE / 256), int(ys.min() * SIDE / 256), int(np.ceil((xs.max() + 1) * SIDE / 256)),
           int(np.ceil((ys.max() + 1) * SIDE / 256))]
    return [format_call(Segment(bbox_2d=box)), format_call(ZoomIn(bbox_2d=[10, 10, 90, 90])), format_call(Submit())]


def verl_row(item: Any) -> dict[str, Any]:
    """Our exported row as verl's ``RLHFDataset`` hands it to a loop: ``<image>`` in the prompt replaced by
    ``{"type": "image", **images[0]}`` (``_build_messages``), under ``raw_prompt``."""
    row = row_of(item, 0, "train", SIDE, 4)
    messages = []
    for message in row["prompt"]:
        text = message["content"]
        if text.startswith("<image>"):
            content = [{"type": "image", **row["images"][0]}, {"type": "text", "text": text[len("<image>"):]}]
            messages.append({"role": message["role"], "content": content})
        else:
            messages.append(message)
    return {"raw_prompt": messages, "reward_model": row["reward_model"], "extra_info": row["extra_info"],
            "data_source": row["data_source"], "index": 0}


SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def _adapter(server: TinyServer, row: dict[str, Any], response_length: int = 4096, max_turns: int = 4) -> dict:
    settings = LoopSettings(max_turns=max_turns, max_new_tokens=12, max_side=SIDE)
    return asyncio.run(run_episode(server, server.policy.processor, row, SAMPLING, settings=settings,
                                   segmenter=build_segmenter("grabcut"), prompt_length=2048,
                                   response_length=response_length, eos_ids=_eos(server)))


def _eos(server: TinyServer) -> list[int]:
    """The checkpoint's generation-config EOS ids, which ``SegloopAgentLoop`` reads from the model path."""
    return list(server.policy.model.generation_config.eos_token_id)


def _reference(tiny: Path, item: Any, texts: list[str]) -> Any:
    student = TransformersPolicy(tiny, max_side=SIDE)
    agent = Agent(ExpertForcing(_Expert(texts), student), build_segmenter("grabcut"), EpisodeConfig(max_turns=4))
    return asyncio.run(agent.run(item.image, item.sample.query, episode_id="ref", ground_truth=item.mask))


def test_the_episode_through_a_server_is_the_transformers_ledger(tiny: Path, item: Any, texts: list[str]) -> None:
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE), script=texts)
    out = _adapter(server, verl_row(item))
    reference = _reference(tiny, item, texts)
    ledger = reference.trajectory.ledger
    assert [t.action["name"] for t in reference.trajectory.turns] == ["segment", "zoom_in", "submit"]
    # Same tokens, same policy-token mask, same log-probs, same images, same reward.
    assert out["prompt_ids"] == ledger.ids[: ledger.prompt_length]
    assert out["response_ids"] == ledger.ids[ledger.prompt_length:]
    assert out["response_mask"] == ledger.mask[ledger.prompt_length:]
    assert np.allclose(out["response_logprobs"], ledger.logprobs[ledger.prompt_length:], atol=1e-4)
    assert sum(out["response_mask"]) == sum(len(server.policy.tokenizer(t)["input_ids"]) for t in texts)
    images = out["multi_modal_data"]["images"]
    assert len(images) == len(ledger.images) == 3
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(images, ledger.images, strict=True))
    expected = episode_reward(reference, item.mask, None)
    assert out["reward_score"] == pytest.approx(expected.reward) and out["extra_fields"]["segloop_iou"] > 0
    assert out["num_turns"] == 7 and out["extra_fields"]["segloop_submitted"]
    # What verl's worker does with the images (re-process them) gives exactly the image tokens in the ids.
    processed = server.policy.processor.image_processor(images=images, return_tensors="pt")
    pad = server.policy.processor.image_token_id
    n_pads = (out["prompt_ids"] + out["response_ids"]).count(pad)
    assert n_pads == int(processed["image_grid_thw"].prod(-1).sum()) // 4
    # One request id per episode (verl routes it to one server); each call is the ledger so far.
    assert len({c["request_id"] for c in server.calls}) == 1 and len(server.calls) == 3
    assert [c["images"] for c in server.calls] == [1, 2, 3]
    assert all(c["params"]["stop_token_ids"] and c["params"]["max_tokens"] == 12 for c in server.calls)
    full = out["prompt_ids"] + out["response_ids"]
    assert all(full[: len(c["prompt_ids"])] == c["prompt_ids"] for c in server.calls)


def test_generated_turns_match_the_transformers_policy(tiny: Path, item: Any) -> None:
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE, greedy=True))
    out = _adapter(server, verl_row(item), max_turns=2)
    policy = TransformersPolicy(tiny, max_side=SIDE, greedy=True, max_new_tokens=12)
    result = asyncio.run(Agent(policy, build_segmenter("grabcut"), EpisodeConfig(max_turns=2)).run(
        item.image, item.sample.query, episode_id="greedy"))
    ledger = result.trajectory.ledger
    assert not out["extra_fields"]["segloop_failure"]
    assert out["prompt_ids"] + out["response_ids"] == ledger.ids
    assert out["response_mask"] == ledger.mask[ledger.prompt_length:] and sum(out["response_mask"]) > 0
    assert np.allclose(out["response_logprobs"], ledger.logprobs[ledger.prompt_length:], atol=1e-4)


def test_a_short_budget_cuts_the_response_at_an_image_boundary(tiny: Path, item: Any, texts: list[str]) -> None:
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE), script=texts)
    whole = _adapter(server, verl_row(item))
    tok = server.policy.tokenizer
    start, end = tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    response = whole["response_ids"]
    second_image = response.index(start)
    prompt = whole["prompt_ids"]
    ledger = TokenLedger(ids=prompt + response, mask=[0] * len(prompt) + whole["response_mask"],
                         logprobs=[0.0] * (len(prompt) + len(response)), prompt_length=len(prompt),
                         images=[np.zeros((1, 1, 3), np.uint8)] * 3)
    parts, kept = fit_response(ledger, second_image + 5, (start, end))  # inside the second image's tokens
    assert parts["response_ids"] == response[:second_image] and kept == 1
    parts, kept = fit_response(ledger, response.index(end) + 1, (start, end))  # just after it
    assert kept == 2 and parts["response_ids"][-1] == end
    # An episode whose budget runs out ends with the error recorded, its output within the budget.
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE), script=texts)
    short = _adapter(server, verl_row(item), response_length=second_image + 5)
    assert len(short["response_ids"]) <= second_image + 5 and len(short["multi_modal_data"]["images"]) == 1
    assert "response budget" in short["extra_fields"]["segloop_failure"]
    assert len(short["response_mask"]) == len(short["response_ids"]) == len(short["response_logprobs"])


def test_missing_log_probs_and_bad_rows(tiny: Path, item: Any, texts: list[str]) -> None:
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE), script=texts)
    settings = LoopSettings(max_turns=2, max_new_tokens=12, max_side=SIDE)
    out = asyncio.run(run_episode(server, server.policy.processor, verl_row(item), {**SAMPLING, "logprobs": False},
                                  settings=settings, segmenter=build_segmenter("grabcut"), prompt_length=2048,
                                  response_length=4096))
    assert out["response_logprobs"] is None  # verl then trains without rollout log-probs
    with pytest.raises(ValueError, match="no image"):
        parse_row({"raw_prompt": [{"role": "user", "content": "hi"}]})
    row = verl_row(item)
    row["extra_info"] = {}
    with pytest.raises(ValueError, match=r"extra_info\.query"):
        parse_row(row)


def test_exported_parquet_reads_back_into_the_episode_row(item: Any, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from segloop.cli import main

    assert main(["export-verl", "--data", "synth:easy:256:3:2", "--out", str(tmp_path / "d.parquet")]) == 0
    rows = pq.read_table(tmp_path / "d.parquet").to_pylist()
    assert len(rows) == 2 and {r["agent_name"] for r in rows} == {"segloop_agent"}
    first = rows[0]
    assert first["prompt"][1]["content"].startswith("<image>") and first["extra_info"]["query"] == item.sample.query
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first["images"][0]["bytes"]))), item.image)
    parsed = parse_row(verl_row(item))
    assert np.array_equal(parsed.image, item.image) and np.array_equal(parsed.ground_truth, item.mask)
    assert json.loads(first["reward_model"]["ground_truth"])["size"] == [256, 256]
    assert main(["export-verl", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.parquet")]) == 2


def test_fallback_reward_uses_the_episode_reward_or_only_the_format() -> None:
    assert compute_score("segloop", "", "{}", {"segloop_reward": 0.8, "segloop_iou": 0.7})["score"] == 0.8
    assert compute_score("segloop", "x" + format_call(Submit()), "{}", {})["score"] == pytest.approx(0.1)
    assert compute_score("segloop", format_call(ZoomIn(bbox_2d=[0, 0, 9, 9])), "{}", None)["score"] == 0.0
    assert compute_score("segloop", "no call at all", "{}", {})["score"] == 0.0


def test_the_shipped_configs_name_our_loop_with_valid_settings() -> None:
    """configs/verl: the registry entry builds a valid ``LoopSettings``, and the trainer config points at it,
    at our reward and at turn/view budgets that agree with the entry."""
    import yaml

    (entry,) = yaml.safe_load((CONFIGS / "agent_loops.yaml").read_text())
    assert entry["name"] == AGENT_NAME and entry["_target_"] == "segloop.rl.verl.loop.SegloopAgentLoop"
    settings = LoopSettings.model_validate({k: v for k, v in entry.items() if k not in ("name", "_target_")})
    trainer = yaml.safe_load((CONFIGS / "segloop_grpo.yaml").read_text())
    rollout = trainer["actor_rollout_ref"]["rollout"]
    assert rollout["agent"]["default_agent_loop"] == AGENT_NAME
    assert (REPO / rollout["agent"]["agent_loop_config_path"]).is_file()
    assert rollout["limit_images"] == settings.max_turns + 1  # the first view and one per turn
    assert trainer["algorithm"]["adv_estimator"] == "grpo" and rollout["name"] == "vllm" and rollout["n"] > 1
    reward = trainer["reward"]["custom_reward_function"]
    assert reward["path"] == "pkg://segloop.rl.verl.reward" and reward["name"] == compute_score.__name__


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}.{key}" if prefix else key)]


@pytest.mark.skipif(not HAS_VERL, reason=VERL_MISSING)
def test_the_trainer_config_composes_with_verls_own() -> None:
    """Every key of segloop_grpo.yaml is one of verl's (in its ppo_trainer.yaml, or a field of the dataclass
    that section becomes), and the composed config passes main_ppo's own ``validate_config``."""
    import dataclasses

    import yaml
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.utils import get_class
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.workers.config import RolloutConfig

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        config = compose(config_name="segloop_grpo")
    with initialize_config_module("verl.trainer.config", version_base=None):
        base = compose(config_name="ppo_trainer")
    ours = yaml.safe_load((CONFIGS / "segloop_grpo.yaml").read_text())
    for path in _leaves({k: v for k, v in ours.items() if k not in ("hydra", "defaults")}):
        assert OmegaConf.select(config, path) == OmegaConf.select(OmegaConf.create(ours), path), path
        if OmegaConf.select(base, path, default="<absent>") != "<absent>":
            continue
        parent = path.rsplit(".", 1)[0]
        target = OmegaConf.select(base, f"{parent}._target_")
        assert target, f"{path} is not a key of verl's ppo_trainer config"
        assert path.rsplit(".", 1)[1] in {f.name for f in dataclasses.fields(get_class(target))}, path
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert isinstance(rollout, RolloutConfig) and rollout.limit_images == 7 and rollout.n == 8
    assert omega_conf_to_dataclass(config.algorithm).adv_estimator == "grpo"


@pytest.mark.skipif(not HAS_VERL, reason=VERL_MISSING)
def test_real_verl_agent_loop_runs_our_episode(tiny: Path, item: Any, texts: list[str], tmp_path: Path) -> None:
    """Our exported parquet through verl's ``RLHFDataset``; the loop built from agent_loops.yaml as
    ``AgentLoopWorker._run_agent_loop`` builds it; the server answering with verl's ``TokenOutput``."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import (
        AgentLoopOutput,
        DictConfigWrap,
        ToolListWrap,
        _agent_loop_registry,
    )
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.workers.rollout.replica import TokenOutput as VerlTokenOutput

    from segloop.rl.verl.export import export
    from segloop.rl.verl.loop import SegloopAgentLoop

    assert set(VerlTokenOutput.model_fields) == set(TokenOutput.model_fields)  # our stand-in speaks verl's
    assert _agent_loop_registry[AGENT_NAME]["_target_"] == "segloop.rl.verl.loop.SegloopAgentLoop"
    export("synth:easy:256:3:1", tmp_path / "train.parquet", max_side=SIDE, max_turns=4)
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE), script=texts, output=VerlTokenOutput)
    processor, tokenizer = server.policy.processor, server.policy.tokenizer
    data = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "return_raw_chat": True,
                             "max_prompt_length": 4096, "filter_overlong_prompts": False,
                             "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset(data_files=[str(tmp_path / "train.parquet")], tokenizer=tokenizer, config=data,
                          processor=processor)
    row = dataset[0]
    assert row["agent_name"] == AGENT_NAME
    trainer = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 2048, "response_length": 4096},
                                                      "model": {"path": str(tiny)}}, "data": data})
    # The shipped entry, with this test's segmenter (no SAM2 weights here) and the tiny model's budgets.
    (entry,) = OmegaConf.load(CONFIGS / "agent_loops.yaml")
    entry = OmegaConf.merge(entry, {"segmenter": "grabcut", "segmenter_model": None, "max_turns": 4,
                                    "max_new_tokens": 12, "max_side": SIDE})
    loop = hydra.utils.instantiate(config=entry, trainer_config=DictConfigWrap(config=trainer), server_manager=server,
                                   tokenizer=tokenizer, processor=processor, hf_model_type="qwen2_5_vl",
                                   dataset_cls=RLHFDataset, data_config=DictConfigWrap(trainer.data),
                                   tools=ToolListWrap([]))
    assert isinstance(loop, SegloopAgentLoop) and loop.settings.reward.format_weight == 0.1
    agent_row = {k: v for k, v in row.items() if k != "agent_name"}  # the worker takes it out
    output = asyncio.run(loop.run(dict(SAMPLING), **agent_row))
    assert isinstance(output, AgentLoopOutput)
    ledger = _reference(tiny, item, texts).trajectory.ledger
    assert output.prompt_ids + output.response_ids == ledger.ids
    assert output.response_mask == ledger.mask[ledger.prompt_length:]
    tensors = output.as_dict()
    assert tensors["rm_scores"][-1] == pytest.approx(output.reward_score)
    assert torch.allclose(tensors["rollout_log_probs"],
                          torch.tensor(ledger.logprobs[ledger.prompt_length:]), atol=1e-4)
    with pytest.raises(Exception, match=r"segloop_agent settings \(agent_loops.yaml\)(.|\n)*max_turn\b"):
        # A misspelt setting is refused, not left at its default.
        hydra.utils.instantiate(config=OmegaConf.merge(entry, {"max_turn": 3}),
                                trainer_config=DictConfigWrap(config=trainer), server_manager=server,
                                tokenizer=tokenizer, processor=processor, dataset_cls=RLHFDataset,
                                data_config=DictConfigWrap(trainer.data))


@pytest.mark.skipif(not HAS_VERL, reason=VERL_MISSING)
def test_verls_worker_turns_our_episodes_into_a_training_batch(tiny: Path, item: Any, texts: list[str],
                                                               tmp_path: Path) -> None:
    """verl's real ``AgentLoopWorker`` (all but Ray and vLLM): our trainer config, our registry entry, our
    parquet through ``RLHFDataset`` and ``DataProto``; its ``generate_sequences`` runs a group of our episodes
    and pads, re-processes the images and computes the M-RoPE positions as for training. The model's forward
    pass on that batch gives back the rollout's log-probs: what verl trains on is what was sampled."""
    import types

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import AutoConfig
    from transformers.models.qwen2_5_vl import Qwen2_5_VLModel
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    from verl.workers.rollout.replica import TokenOutput as VerlTokenOutput

    from segloop.rl.verl.export import export

    export("synth:easy:256:3:1", tmp_path / "train.parquet", max_side=SIDE, max_turns=4)
    (entry,) = OmegaConf.load(CONFIGS / "agent_loops.yaml")
    OmegaConf.save([OmegaConf.merge(entry, {"segmenter": "grabcut", "segmenter_model": None, "max_turns": 4,
                                            "max_new_tokens": 12, "max_side": SIDE})], tmp_path / "loops.yaml")
    prompt_length, response_length, group = 2048, 4096, 2
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        config = compose(config_name="segloop_grpo", overrides=[
            f"actor_rollout_ref.model.path={tiny}", f"data.train_files={tmp_path / 'train.parquet'}",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={tmp_path / 'loops.yaml'}",
            f"data.max_prompt_length={prompt_length}", f"data.max_response_length={response_length}",
            f"actor_rollout_ref.rollout.n={group}",
            # Its length filter needs qwen_vl_utils, which imports torchvision (never installed here).
            "data.filter_overlong_prompts=false"])
    server = TinyServer(TransformersPolicy(tiny, max_side=SIDE), script=texts, output=VerlTokenOutput)
    worker = AgentLoopWorker(config, llm_client=server)
    # verl's hf_processor gets None here: AutoProcessor needs torchvision for Qwen's video processor. Ours is
    # the image-only one; bound as hf_processor binds the stock one.
    processor = server.policy.processor
    processor.config = AutoConfig.from_pretrained(tiny)
    processor.get_rope_index = types.MethodType(Qwen2_5_VLModel.get_rope_index, processor)
    processor.get_vision_position_ids = types.MethodType(Qwen2_5_VLModel.get_vision_position_ids, processor)
    worker.processor = processor
    dataset = RLHFDataset(data_files=[str(tmp_path / "train.parquet")], tokenizer=worker.tokenizer,
                          config=config.data, processor=processor)
    batch = DataProto.from_single_dict(collate_fn([dataset[0]])).repeat(group, interleave=True)
    out = asyncio.run(worker.generate_sequences(batch))

    ledger = _reference(tiny, item, texts).trajectory.ledger
    prompt, response = ledger.ids[:ledger.prompt_length], ledger.ids[ledger.prompt_length:]
    tensors = out.batch
    assert tensors["input_ids"].shape == (group, prompt_length + response_length)
    assert tensors["position_ids"].shape == (group, 4, prompt_length + response_length)  # text + 3 M-RoPE axes
    model = server.policy.model
    for k in range(group):
        assert tensors["prompts"][k][-len(prompt):].tolist() == prompt
        assert tensors["responses"][k][:len(response)].tolist() == response
        assert tensors["response_mask"][k].tolist() == ledger.mask[ledger.prompt_length:] + [0] * (
            response_length - len(response))
        reward = out.non_tensor_batch["segloop_reward"][k]
        assert tensors["rm_scores"][k][len(response) - 1] == pytest.approx(reward) and reward > 0
        inputs = out.non_tensor_batch["multi_modal_inputs"][k]
        assert inputs["image_grid_thw"].shape[0] == len(ledger.images) == 3
        keep = tensors["attention_mask"][k].bool()
        ids = tensors["input_ids"][k][keep][None]
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=tensors["position_ids"][k][:, keep][:, None],
                           pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]).logits
        logprobs = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        generated = torch.tensor(ledger.mask[ledger.prompt_length:], dtype=torch.bool)
        assert torch.allclose(logprobs[len(prompt) - 1:][generated],
                              tensors["rollout_log_probs"][k][:len(response)][generated], atol=1e-4)
    assert out.non_tensor_batch["__num_turns__"].tolist() == [7] * group
