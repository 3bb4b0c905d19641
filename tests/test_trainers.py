"""SFT and GRPO pieces, on the compact policy through the learnable protocol only."""

import asyncio
import copy

import numpy as np
import pytest
import torch

from agent.actions import Segment, ZoomIn, format_call
from agent.policy import ChatMessage, PolicyContext
from policies.compact import CompactPolicy
from rl.grpo import GRPOConfig, group_advantages, policy_loss
from rl.sft import sft_loss
from tools.views import full_view

QUERIES = ["the red circle", "the blue square left of the star"]


def _policy() -> CompactPolicy:
    return CompactPolicy.create(QUERIES, seed=3, max_side=112, input_size=64, grid=16, channels=16, word_dim=8,
                                cond_dim=16, dilations=[1, 2])


def _context(episode_id: str, seed: int, turn: int = 0) -> PolicyContext:
    view = full_view(320, 240, 112)
    image = np.random.default_rng(seed).integers(0, 255, (view.height, view.width, 3), dtype=np.uint8)
    messages = [ChatMessage(role="system", content="tools"), ChatMessage(role="user", content="q", image_id="i")]
    return PolicyContext(episode_id=episode_id, query=QUERIES[seed % 2], messages=messages, images={"i": image},
                         view=view, view_depth=0, image_size=(320, 240), turn=turn, max_turns=6)


def _expert_records(policy: CompactPolicy, n: int = 6) -> list:
    texts = [format_call(ZoomIn(bbox_2d=[10, 8, 50, 40])), format_call(Segment(bbox_2d=[20, 20, 60, 70]))]

    async def episode(i: int):
        for turn, text in enumerate(texts):
            await policy.imitate(_context(f"x{i}", i, turn), text)
        return policy.end_episode(f"x{i}")

    return [asyncio.run(episode(i)) for i in range(n)]


def _sampled_records(policy: CompactPolicy, n: int = 8) -> list:
    async def episode(i: int):
        for turn in range(2):
            await policy.act(_context(f"s{i}", i, turn))
        return policy.end_episode(f"s{i}")

    return [asyncio.run(episode(i)) for i in range(n)]


def test_all_equal_group_gets_zero_advantage_and_is_skipped() -> None:
    advantages, keep = group_advantages([0.5, 0.5, 0.5, 0.1, 0.3, 0.5], group_size=3)
    assert advantages[:3] == [0.0, 0.0, 0.0] and keep[:3] == [False] * 3
    assert keep[3:] == [True] * 3
    assert sum(advantages[3:]) == pytest.approx(0.0, abs=1e-6)
    assert advantages[3] < 0 < advantages[5]
    assert advantages[5] == pytest.approx(1.0, rel=1e-4)  # (0.5 - 0.3) / sample std 0.2
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages([1.0, 2.0, 3.0], group_size=4)


def test_sft_steps_lower_the_loss_on_a_fixed_batch_and_change_parameters() -> None:
    torch.manual_seed(0)
    policy = _policy()
    records = _expert_records(policy)
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = sft_loss(policy, records).item()
    for _ in range(15):
        loss = sft_loss(policy, records)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert sft_loss(policy, records).item() < 0.7 * first
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_grpo_step_moves_probability_towards_positive_advantages() -> None:
    torch.manual_seed(0)
    policy = _policy()
    records = _sampled_records(policy)
    advantages = torch.tensor([1.0, -1.0] * 4)
    config = GRPOConfig(model="m", data="d", out="o", kl_coef=0.1)
    reference = copy.deepcopy(policy)
    loss, stats = policy_loss(policy, records, advantages, config, reference)
    assert stats["clip_frac"] == 0.0 and stats["kl"] == pytest.approx(0.0, abs=1e-6)
    start = policy.log_probs(records)
    gain_before = ((start.log_probs * start.mask).sum(1) @ advantages).item()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(3):
        loss, stats = policy_loss(policy, records, advantages, config, reference)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = policy.log_probs(records)
    assert ((after.log_probs * after.mask).sum(1) @ advantages).item() > gain_before
    assert stats["kl"] > 0
    assert torch.equal(after.recorded, start.recorded)  # act-time log-probs stay what they were
