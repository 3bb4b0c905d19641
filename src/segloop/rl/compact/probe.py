"""The compact policy's decisions probed one by one, on held-out scenes of a perception cache.

Whole episodes mix every decision; these probes isolate the two the reward hangs on, with the policy's own
``act`` (greedy) on the states an episode reaches, built with the graph's view code:

- the first view: does its zoom hold the target (``first_view_hit``), is the target among the three best
  cells of its zoom map (``first_view_top3``; each zoomed with the sizes read there), does it answer "no
  such object" for requests without a target (``no_target``) and never for the others
  (``false_no_target``);
- the zoomed judge: after the first view, on the view the cache's zoom onto the target (it should segment)
  or onto a look-alike (it should zoom out), by kind of request (``judge_<target|lookalike>_<kind>``).

Each figure's ``<name>_n`` says how many states it was measured on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import torch

from segloop.agent.actions import ZoomIn
from segloop.agent.parser import format_call, parse_turn
from segloop.agent.policy import ChatMessage, PolicyContext
from segloop.data.specs import SynthSamples, load_samples
from segloop.data.synth import generate_scene, scene_seed
from segloop.policies.compact import CompactPolicy
from segloop.policies.compact.actions import PART, TOOL, call_text
from segloop.policies.compact.decisions import stack
from segloop.policies.scripted import model_box
from segloop.rl.compact.cache import PerceptionCache
from segloop.tools.views import PixelBox, View, ViewError, ViewStack, model_size, render_view, zoom_in


def _context(episode_id: str, query: str, image: np.ndarray, stack: ViewStack, pictures: dict[str, np.ndarray],
             messages: list[ChatMessage], turn: int) -> PolicyContext:
    height, width = image.shape[:2]
    return PolicyContext(episode_id=episode_id, query=query, messages=list(messages), images=pictures,
                         view=stack.current, view_depth=len(stack.views) - 1, image_size=(width, height),
                         turn=turn, max_turns=8, greedy=True)


def _holds(policy: CompactPolicy, parts: torch.Tensor, view: View, target: tuple[float, ...],
           image_size: tuple[int, int]) -> bool:
    """Whether the zoom these parts write, executed by the graph's view code, holds the whole target."""
    action = parse_turn(call_text(parts, view, policy.config.grid, policy.shares, policy.config.zoom_context)).action
    assert isinstance(action, ZoomIn)
    try:
        zoomed = zoom_in(view, action.bbox_2d, *image_size, policy.max_side)
    except ViewError:
        return False
    b = zoomed.box
    return b.x1 <= target[0] and b.y1 <= target[1] and b.x2 >= target[2] and b.y2 >= target[3]


def probe(policy: CompactPolicy, cache: PerceptionCache, n: int) -> dict[str, float]:
    """The figures of the module docstring on the first ``n`` scenes of ``cache`` (its ``data`` regenerated)."""
    from segloop.tools.masks import box_of

    spec = load_samples(cache.summary["data"])
    assert isinstance(spec, SynthSamples)
    policy.train(False)
    tallies: dict[str, list[float]] = {}

    def add(key: str, value: bool) -> None:
        tallies.setdefault(key, []).append(float(value))

    for scene in cache.scenes[:n]:
        made = generate_scene(scene_seed(spec.seed, scene["scene"]), spec.size, spec.difficulty,
                              spec.no_target_rate)
        image, query, kind = made.image, made.query, scene["kind"]
        height, width = image.shape[:2]
        target = box_of(made.mask) if made.mask is not None else None
        for zoom_view in [None, *scene["zooms"]]:
            if zoom_view is not None and zoom_view["name"] == "random":
                continue
            episode_id = f"probe-{scene['scene']}-{zoom_view['name'] if zoom_view else 'root'}"
            stack = ViewStack(width, height, policy.max_side)
            pictures = {"request": render_view(image, stack.current)}
            messages = [ChatMessage(role="system", content="tools"),
                        ChatMessage(role="user", content=query, image_id="request")]
            root = _context(episode_id, query, image, stack, pictures, messages, 0)
            asyncio.run(policy.act(root))
            if zoom_view is None:
                decision = (policy.end_episode(episode_id) or [None])[-1]
                assert decision is not None
                tool = int(decision.parts[PART["tool"]])
                if target is None:
                    add("no_target", tool == TOOL["submit_no_target"])
                else:
                    add("false_no_target", tool == TOOL["submit_no_target"])
                    add("first_view_hit", tool == TOOL["zoom_in"] and _holds(
                        policy, decision.parts, root.view, target, (width, height)))
                    add("first_view_top3", _top3_holds(policy, decision, root.view, target, (width, height)))
            else:
                x1, y1, x2, y2 = zoom_view["box"]
                size = model_size(x2 - x1, y2 - y1, policy.max_side)
                view = View(PixelBox(x1, y1, x2, y2), *size)
                stack.views.append(view)
                pictures["turn_01"] = render_view(image, view)
                messages += [ChatMessage(role="assistant", content=format_call(
                                 ZoomIn(bbox_2d=model_box(stack.views[0], (x1, y1, x2, y2))))),
                             ChatMessage(role="tool", content="Zoomed in.", image_id="turn_01")]
                judged = asyncio.run(policy.act(_context(episode_id, query, image, stack, pictures, messages, 1)))
                name = parse_turn(judged.text).action
                says_here = name is not None and name.name == "segment"
                is_target = zoom_view["name"] == "target"
                add(f"judge_{'target' if is_target else 'lookalike'}_{kind}", says_here == is_target)
                policy.end_episode(episode_id)
    for side in ("target", "lookalike"):
        values = [v for k, vs in tallies.items() if k.startswith(f"judge_{side}_") for v in vs]
        if values:
            tallies[f"judge_{side}"] = values
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(tallies.items())} | {
        f"{k}_n": len(v) for k, v in sorted(tallies.items())}


def _top3_holds(policy: CompactPolicy, decision: Any, view: View, target: tuple[int, ...],
                image_size: tuple[int, int]) -> bool:
    """Whether a zoom onto one of the three best legal cells of the first view's zoom map holds the target."""
    net = policy.decisions(0)
    chosen = torch.full((1, len(PART)), -1, dtype=torch.long)
    chosen[0, PART["tool"]] = TOOL["zoom_in"]
    with torch.no_grad():
        logits = net(stack([decision.features]), chosen)
        centre = logits[PART["centre"]][0]
        legal = int(decision.features.zoom_cells.sum())
        for cell in centre.topk(min(3, max(legal, 1))).indices.tolist():
            chosen[0, PART["centre"]] = cell
            sizes = net(stack([decision.features]), chosen)
            parts = chosen[0].clone()
            parts[PART["width"]] = int(sizes[PART["width"]][0].argmax())
            parts[PART["height"]] = int(sizes[PART["height"]][0].argmax())
            if _holds(policy, parts, view, target, image_size):
                return True
    return False

