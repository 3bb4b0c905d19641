"""The tiny model taught to write valid calls, so a real server can be shown serving a model that acts.

``teach_calls(tiny_dir, out_dir)`` fine-tunes the tiny Qwen2.5-VL checkpoint (``segloop make-tiny``) to answer the
first turn of an episode with ``CALLS[0]`` (segment a box near the top-left corner) and every later turn with
``CALLS[1]`` (submit). Its examples are the very requests ``OpenAIPolicy`` sends, in both tool modes (recorded by
the stand-in server over real episodes with varied image sizes and requests), rendered the way ``transformers
serve`` renders a request: image parts as images, structured ``tool_calls`` with their arguments as objects, the
checkpoint's chat template (``CALLER_TEMPLATE``). Greedy decoding then writes exactly these calls, whatever the
image. The box's digits are all different: a two-layer model counts repeated tokens badly ([0, 0, 28, 28] came
out as [0, 0, 28] now and then).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np

from segloop.agent.actions import Segment, Submit
from segloop.agent.parser import format_call
from segloop.policies.tiny import CHAT_TEMPLATE as TINY_TEMPLATE

CALLS = ["<think>the top left corner</think>" + format_call(Segment(bbox_2d=[1, 2, 35, 46])),
         "<think>done</think>" + format_call(Submit())]
# The caller's chat template: the tiny model's, but with a fixed short system turn (the system prompt and the tool
# schemas are still sent, and read by the server, but not shown to this model): its prompts are ~200 tokens
# instead of ~1000, which makes teaching it about five times cheaper.
CALLER_TEMPLATE = TINY_TEMPLATE.replace(
    "{%- if tools -%}", "{%- if false -%}").replace(
    "{%- if not (tools and loop.first and message['role'] == 'system') -%}", "{%- if message['role'] != 'system' -%}"
).replace(
    "{%- if loop.first and message['role'] != 'system' and not tools -%}", "{%- if loop.first -%}")
MAX_SIDE = 112  # small views: the vision tower dominates the cost of a training step


_WORDS = ("the", "only", "red", "blue", "green", "purple", "orange", "small", "medium", "large", "solid", "hollow",
          "striped", "dotted", "circle", "square", "hexagon", "star", "object", "bottommost", "leftmost", "person",
          "bottle", "car", "bus", "chair", "left of", "above", "next to", "a", "cat")


def _query(rng: np.random.Generator) -> str:
    """A request of 1 to 9 words, like the synthetic world's referring expressions and photo class names."""
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 10))))


def _picture(rng: np.random.Generator, i: int) -> np.ndarray:
    """Pictures of every kind the model must ignore: noise, smooth scenes with shapes (like the synthetic world and
    photos), flat colour."""
    import cv2

    height, width = int(rng.integers(60, 1600)), int(rng.integers(60, 1600))
    if i % 3 == 0:
        return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    if i % 3 == 1:
        return np.full((height, width, 3), rng.integers(0, 255, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, 3)
    image = np.clip(base + np.stack([x * 60 // width, y * 60 // height, (x + y) * 40 // (width + height)], -1),
                    0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 12))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        size = int(rng.integers(4, max(5, min(height, width) // 4)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, size, colour, -1)
        else:
            cv2.rectangle(image, centre, (centre[0] + size, centre[1] + size), colour, -1)
    return image


def recorded_requests(episodes: int = 8, seed: int = 0) -> list[tuple[dict[str, Any], str]]:
    """(request body, the answer to teach) pairs from real episodes of ``OpenAIPolicy`` in both tool modes."""
    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.data.synth import generate_scene
    from segloop.policies.registry import build_policy
    from segloop.tools.segmenters import build_segmenter
    from support.openai_server import OpenAIServer, scripted_turns

    rng = np.random.default_rng(seed)
    pairs = []
    for mode in ("prompt", "native"):
        with OpenAIServer(script=scripted_turns(CALLS), tool_parser=True) as server:
            policy = build_policy("openai", model="caller", base_url=server.base_url, max_side=MAX_SIDE,
                                  tool_mode=mode)
            # Both segmenters: their observations read differently ("1 connected part" or several, shares).
            agents = [Agent(policy, build_segmenter(name), EpisodeConfig(max_turns=8)) for name in ("box", "grabcut")]
            for i in range(episodes):
                if i % 4 == 3:  # a scene of the synthetic world with its own request
                    scene = generate_scene(int(rng.integers(2**31)), size=int(rng.integers(200, 1000)),
                                           difficulty="easy")
                    image, query = scene.image, scene.query
                else:
                    image, query = _picture(rng, i), _query(rng)
                agent = agents[i % 2]
                asyncio.run(agent.run(image, query, episode_id=f"{mode}{i}"))
        for body in server.requests:
            turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
            pairs.append((body, CALLS[min(turn, len(CALLS) - 1)]))
    return pairs


def render_request(processor: Any, body: dict[str, Any]) -> tuple[str, list[Any]]:
    """The prompt text and images ``transformers serve`` builds from a chat-completions body."""
    from PIL import Image

    from segloop.tools.encoding import decode_data_url

    messages, images = [], []
    for message in body["messages"]:
        rendered: dict[str, Any] = {"role": message["role"], "content": []}
        if message.get("tool_calls"):
            rendered["tool_calls"] = [{"type": "function", "function": {
                "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in message["tool_calls"]]
            content: Any = []  # the server drops an assistant's content beside its tool_calls
        else:
            content = message.get("content") or []
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for part in content:
            if part["type"] == "image_url":
                images.append(Image.fromarray(decode_data_url(part["image_url"]["url"])))
                rendered["content"].append({"type": "image"})
            else:
                rendered["content"].append({"type": "text", "text": part["text"]})
        messages.append(rendered)
    text = processor.apply_chat_template(messages, tools=body.get("tools"), tokenize=False,
                                         add_generation_prompt=True)
    return text, images


def _examples(processor: Any, pairs: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    """Tokenised (prompt + answer) with labels on the answer only."""
    examples = []
    for body, answer in pairs:
        prompt, images = render_request(processor, body)
        full = processor(text=[prompt + answer + "<|im_end|>"], images=images or None, return_tensors="pt",
                         add_special_tokens=False)
        prompt_len = processor(text=[prompt], images=images or None, return_tensors="pt",
                               add_special_tokens=False)["input_ids"].shape[1]
        labels = full["input_ids"].clone()
        labels[:, :prompt_len] = -100
        examples.append({**full, "labels": labels})
    return examples


def _all_exact(model: Any, examples: list[dict[str, Any]]) -> bool:
    """Whether greedy decoding writes every example's answer (each answer token is the argmax after its prefix)."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            for example in examples:
                logits = model(**{k: v for k, v in example.items() if k != "labels"}).logits[0, :-1]
                labels = example["labels"][0, 1:]
                taught = labels != -100
                if not bool((logits.argmax(-1)[taught] == labels[taught]).all()):
                    return False
        return True
    finally:
        model.train()


def teach_calls(tiny_dir: Path, out_dir: Path, max_steps: int = 400, seed: int = 0, lr: float = 4e-3) -> Path:
    """Fine-tune the tiny checkpoint to write ``CALLS`` (see the module docstring) until greedy decoding writes
    them on requests it was not taught on (checked every 40 steps; typically 80-160 steps of ~0.2 s on two
    cores); saved like a hub checkpoint, with ``CALLER_TEMPLATE`` as its chat template."""
    import torch
    from transformers import AutoModelForImageTextToText

    from segloop.policies.processors import load_processor

    torch.manual_seed(seed)
    processor = load_processor(str(tiny_dir))
    processor.chat_template = CALLER_TEMPLATE
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=torch.float32)
    examples = _examples(processor, recorded_requests(episodes=16, seed=seed))
    unseen = _examples(processor, recorded_requests(episodes=8, seed=seed + 1))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    # Warm up for 20 steps, then decay slowly: a constant rate this high diverges, a lower one takes 3x longer.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: min(1.0, (i + 1) / 20) * max(0.1, 1 - i / max_steps))
    model.train()
    order = np.random.default_rng(seed).permutation(max(max_steps, len(examples)))[:max_steps] % len(examples)
    for step, index in enumerate(order, start=1):
        loss = model(**examples[index]).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % 40 == 0 and _all_exact(model, unseen) and _all_exact(model, examples):
            break
    else:
        raise RuntimeError(f"the tiny model did not learn to write the calls in {max_steps} steps")
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
