"""Reward values computed by hand."""

import numpy as np
import pytest
from pydantic import ValidationError

from segloop.rl.rewards import RewardConfig, accuracy_reward, compute_reward


def _masks() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((10, 10), dtype=bool)
    gt[0:4, 0:4] = True          # 16 px
    pred = np.zeros((10, 10), dtype=bool)
    pred[0:4, 2:6] = True        # 16 px, 8 shared -> IoU 8 / 24
    return pred, gt


def test_continuous_reward_is_iou_plus_valid_share() -> None:
    pred, gt = _masks()
    r = compute_reward(pred, gt, None, turns=4, invalid_actions=1, tool_counts={"segment": 1})
    assert r.iou == pytest.approx(1 / 3)
    assert r.format == pytest.approx(0.1 * 3 / 4)
    assert r.reward == pytest.approx(1 / 3 + 0.075)


def test_ignore_region_is_left_out_of_the_iou() -> None:
    pred, gt = _masks()
    ignore = np.zeros_like(gt)
    ignore[:, 4:] = True          # hides the 8 predicted pixels outside the target
    config = RewardConfig(format_weight=0)
    r = compute_reward(pred, gt, ignore, turns=1, invalid_actions=0, tool_counts={}, config=config)
    assert r.reward == pytest.approx(8 / 16)


@pytest.mark.parametrize(("iou", "expected"), [(0.81, 4.0), (0.8, 3.0), (0.75, 3.0), (0.7, 2.0), (0.55, 2.0),
                                               (0.5, 0.0), (0.1, 0.0)])
def test_tiers_follow_sam_r1(iou: float, expected: float) -> None:
    assert accuracy_reward(iou, "tiered") == expected


def test_tool_bonus_is_paid_only_on_success_with_the_tool() -> None:
    gt = np.zeros((8, 8), dtype=bool)
    gt[2:6, 2:6] = True
    config = RewardConfig(tool_bonus=0.5, format_weight=0.0, bonus_threshold=0.5)
    good = compute_reward(gt, gt, None, turns=3, invalid_actions=0, tool_counts={"zoom_in": 1}, config=config)
    no_tool = compute_reward(gt, gt, None, turns=3, invalid_actions=0, tool_counts={"zoom_in": 0}, config=config)
    bad = compute_reward(np.zeros_like(gt), gt, None, turns=3, invalid_actions=0, tool_counts={"zoom_in": 2},
                         config=config)
    assert (good.reward, no_tool.reward, bad.reward) == (1.5, 1.0, 0.0)


def test_turn_cost_and_invalid_penalty_subtract() -> None:
    gt = np.zeros((4, 4), dtype=bool)
    config = RewardConfig(format_weight=0.2, invalid_penalty=0.05, turn_cost=0.01)
    r = compute_reward(gt, gt, None, turns=5, invalid_actions=2, tool_counts={}, config=config)
    # empty answer to a no-target query: IoU 1; format 0.2 * 3/5 - 0.05 * 2 = 0.02; cost 0.05
    assert r.reward == pytest.approx(1.0 + 0.02 - 0.05)


def test_bad_counts_and_bad_config_are_refused() -> None:
    gt = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="invalid_actions"):
        compute_reward(gt, gt, None, turns=1, invalid_actions=2, tool_counts={})
    with pytest.raises(ValidationError):
        RewardConfig(mode="stepwise")
