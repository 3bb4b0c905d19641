"""The reward of an episode: how good the submitted mask is, plus a small term for well-formed turns.

IoU is computed with ignore regions excluded (``tools.masks.iou``; empty answer to a "no such
object" query scores 1). ``tiered`` maps IoU to SAM-R1's steps (> 0.8 -> 4, 0.7-0.8 -> 3,
0.5-0.7 -> 2, else 0); the optional tool bonus is DeepEyes' success-only bonus: paid only when a
listed tool was used *and* the answer is good, so the policy is not paid for calling tools as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segloop.tools.masks import iou as mask_iou

if TYPE_CHECKING:
    from segloop.agent.records import EpisodeResult

# SAM-R1's tiers: (IoU strictly above, reward), checked in order; below the last -> 0.
TIERS: tuple[tuple[float, float], ...] = ((0.8, 4.0), (0.7, 3.0), (0.5, 2.0))


class RewardConfig(BaseModel):
    """How an episode is scored. Defaults: continuous IoU plus 0.1 x share of valid turns."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["continuous", "tiered"] = Field("continuous", description="IoU as it is, or SAM-R1's tiers")
    format_weight: float = Field(0.1, ge=0, description="times the share of turns whose action was valid")
    invalid_penalty: float = Field(0.0, ge=0, description="subtracted per invalid action")
    tool_bonus: float = Field(0.0, ge=0, description="paid when a bonus tool was used and IoU > threshold",
                              json_schema_extra={"cli_aliases": ["--tool-bonus"]})
    bonus_tools: tuple[str, ...] = Field(("zoom_in",), description="the tools the bonus is paid for")
    bonus_threshold: float = Field(0.5, ge=0, le=1, description="IoU above which the tool bonus is paid")
    turn_cost: float = Field(0.0, ge=0, description="subtracted per turn taken")


class RewardBreakdown(BaseModel):
    """The reward and its parts, for logs."""

    reward: float
    iou: float
    accuracy: float
    format: float
    tool_bonus: float
    turn_cost: float


def accuracy_reward(iou: float, mode: Literal["continuous", "tiered"]) -> float:
    if mode == "continuous":
        return float(iou)
    for threshold, value in TIERS:
        if iou > threshold:
            return value
    return 0.0


def compute_reward(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None, *, turns: int,
                   invalid_actions: int, tool_counts: Mapping[str, int],
                   config: RewardConfig | None = None) -> RewardBreakdown:
    """Score one episode from its submitted mask and its turn counts (default ``RewardConfig()``)."""
    config = config or RewardConfig()
    if turns < 0 or invalid_actions < 0 or invalid_actions > turns:
        raise ValueError(f"need 0 <= invalid_actions ({invalid_actions}) <= turns ({turns})")
    overlap = mask_iou(pred, gt, ignore)
    accuracy = accuracy_reward(overlap, config.mode)
    valid_share = (turns - invalid_actions) / turns if turns else 0.0
    fmt = config.format_weight * valid_share - config.invalid_penalty * invalid_actions
    used_bonus_tool = any(tool_counts.get(tool, 0) > 0 for tool in config.bonus_tools)
    bonus = config.tool_bonus if used_bonus_tool and overlap > config.bonus_threshold else 0.0
    cost = config.turn_cost * turns
    return RewardBreakdown(reward=accuracy + fmt + bonus - cost, iou=overlap, accuracy=accuracy, format=fmt,
                           tool_bonus=bonus, turn_cost=cost)


def episode_reward(result: EpisodeResult, gt: np.ndarray, ignore: np.ndarray | None = None,
                   config: RewardConfig | None = None) -> RewardBreakdown:
    """Score an ``agent.episode.EpisodeResult``: its final mask and its trajectory's counts."""
    config = config or RewardConfig()
    trajectory = result.trajectory
    return compute_reward(result.mask, gt, ignore, turns=len(trajectory.turns),
                          invalid_actions=trajectory.invalid_actions, tool_counts=trajectory.tool_counts,
                          config=config)
