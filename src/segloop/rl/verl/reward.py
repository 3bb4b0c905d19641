"""The fallback reward for verl's reward manager (``custom_reward_function.path/name``).

``segloop_agent`` computes each episode's reward itself (the IoU of the submitted mask needs the mask,
which only the episode has) and returns it as ``reward_score``, so verl skips its reward manager. If one
runs anyway (a config that forces it, or rows rolled out by another loop), this scores a row: the
episode's own reward when its ``extra_fields`` reached ``extra_info`` (verl passes them as
``tool_extra_fields``); otherwise only what the text shows: the format term for a final ``submit`` call,
0 else. It never invents an IoU.
"""

from __future__ import annotations

from typing import Any

from segloop.agent.parser import parse_turn
from segloop.rl.rewards import RewardConfig


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl's ``compute_score`` signature; returns ``{"score", "iou", "from_episode"}``."""
    extra = extra_info or {}
    if extra.get("segloop_reward") is not None:
        return {"score": float(extra["segloop_reward"]), "iou": float(extra.get("segloop_iou", 0.0)),
                "from_episode": 1.0}
    last_call = solution_str.rfind("<tool_call>")
    parsed = parse_turn(solution_str[last_call:]) if last_call >= 0 else None
    submitted = parsed is not None and parsed.action is not None and parsed.action.name == "submit"
    return {"score": RewardConfig().format_weight if submitted else 0.0, "iou": 0.0, "from_episode": 0.0}
