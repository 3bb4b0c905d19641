"""SFT and GRPO pieces, on the compact policy through the learnable protocol only."""

import asyncio
import copy
import json

import numpy as np
import pytest
import torch

from segloop.agent.actions import Segment, ZoomIn
from segloop.agent.parser import format_call
from segloop.agent.policy import ChatMessage, PolicyContext
from segloop.policies.compact import CompactPolicy
from segloop.rl.grpo import GRPOConfig, aggregate, group_advantages, policy_loss
from segloop.rl.sft import sft_loss
from segloop.tools.views import full_view

QUERIES = ["the red circle", "the blue square left of the star"]


def _policy() -> CompactPolicy:
    return CompactPolicy.create(seed=3, max_side=112, root_input=64, zoom_input=64, grid=16, channels=16,
                                dilations=[1, 2])


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
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-2)
    first = sft_loss(policy, records).item()
    for _ in range(20):
        loss = sft_loss(policy, records)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert sft_loss(policy, records).item() < 0.8 * first
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_grpo_step_moves_probability_towards_positive_advantages() -> None:
    torch.manual_seed(0)
    policy = _policy()
    records = _sampled_records(policy)
    advantages = torch.tensor([1.0, -1.0] * 4)
    config = GRPOConfig(model="m", data="d", out="o", kl_coef=0.1)
    reference = CompactPolicy(policy.config, copy.deepcopy(policy.networks))
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


def test_search_stats_check_the_zoomed_views_hold_the_target_and_episode_stats_count_the_grammar() -> None:
    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.data.specs import load_items
    from segloop.evaluation.stats import episode_stats, search_stats
    from segloop.policies.scripted import OraclePolicy
    from segloop.rl.rollout import run_episodes
    from segloop.tools.segmenters import build_segmenter

    scenes = [load_items("synth:easy:768:1000:6")[i] for i in range(6)]
    agent = Agent(OraclePolicy(max_side=448), build_segmenter("grabcut"), config=EpisodeConfig(max_turns=8))
    results = asyncio.run(run_episodes(agent, [(s, f"z{i}") for i, s in enumerate(scenes)]))
    trajectories = [r.trajectory for r in results]
    zoomed = [t for t in trajectories if t.tool_counts.get("zoom_in", 0)]
    assert zoomed, "the oracle zooms on some of these scenes"
    # The oracle zooms onto the target, so every first zoom holds it.
    hits = search_stats(trajectories, [s.mask for s in scenes])
    assert hits["first_zoom_hit"] == hits["some_zoom_hit"] == 1.0 and hits["no_target_accuracy"] is None
    # The same zooms judged against a target in a corner: a hit only where the zoomed view reaches that corner.
    corner = np.zeros((768, 768), dtype=bool)
    corner[760:, 760:] = True
    first_views = [next(turn.view_box for turn in t.turns if turn.view_box != t.turns[0].view_box) for t in zoomed]
    holds_corner = [v[2] >= 768 and v[3] >= 768 for v in first_views]
    assert search_stats(trajectories, [corner] * 6)["first_zoom_hit"] == pytest.approx(np.mean(holds_corner))
    assert search_stats(trajectories, [np.zeros_like(corner)] * 6)["first_zoom_hit"] is None
    rates = episode_stats(trajectories)
    assert rates["valid_rate"] == 1.0 and rates["submit_rate"] == 1.0 and rates["segment_rate"] == 1.0
    assert rates["zoom_rate"] == pytest.approx(len(zoomed) / 6)


@pytest.mark.slow
def test_sft_from_a_refreshed_pool_then_grpo_and_resume_through_the_cli(tmp_path) -> None:
    from segloop.cli import main as cli_main
    from segloop.policies.registry import load_learnable
    from segloop.rl.curves import CurveLog

    world, held_out = "synth:easy:256:1:100000", "synth:easy:256:9:4"
    small = '{"max_side": 112, "root_input": 64, "zoom_input": 64, "grid": 16, "channels": 16, "dilations": [1, 2]}'
    assert cli_main(["train", "sft", "--init", "compact", "--data", world, "--eval-data", held_out, "--eval-n", "4",
                     "--out", str(tmp_path / "sft"), "--steps", "6", "--batch-size", "4", "--eval-every", "3",
                     "--pool-size", "8", "--refresh-every", "2", "--refresh-size", "4",
                     "--compact-options", small]) == 0
    rows = CurveLog(tmp_path / "sft" / "sft_log.csv").rows()
    assert [r["step"] for r in rows if r["eval_giou"]] == ["0", "3", "6"]
    assert (tmp_path / "sft" / "sft_curves.png").stat().st_size > 0
    assert isinstance(load_learnable(tmp_path / "sft" / "final"), CompactPolicy)

    grpo = ["train", "grpo", "--model", str(tmp_path / "sft" / "final"), "--data", "synth:easy:256:2:100000",
            "--eval-data", held_out, "--eval-n", "4", "--out", str(tmp_path / "grpo"), "--prompts-per-step", "2",
            "--group-size", "4", "--eval-every", "2", "--save-every", "1"]
    assert cli_main([*grpo, "--steps", "2", "--final", "best"]) == 0
    chosen = json.loads((tmp_path / "grpo" / "final" / "checkpoint.json").read_text())
    evaluations = {int(r["step"]): float(r["eval_giou"]) for r in CurveLog(tmp_path / "grpo" / "grpo_log.csv").rows()
                   if r["eval_giou"]}
    assert chosen["which"] == "best" and evaluations[chosen["step"]] == max(evaluations.values())
    result = json.loads((tmp_path / "grpo" / "grpo_summary.json").read_text())["result"]
    assert result.startswith(f"held-out gIoU {max(evaluations.values()):.4f}; ")  # the final's, not the last step's
    assert cli_main([*grpo, "--steps", "3", "--resume"]) == 0
    rows = CurveLog(tmp_path / "grpo" / "grpo_log.csv").rows()
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]  # resumed at 3, nothing repeated
    final = json.loads((tmp_path / "grpo" / "final" / "checkpoint.json").read_text())
    assert final["step"] == 3 and final["which"] == "last" and final["best_held_out"]["step"] in (0, 2, 3)
    summary = json.loads((tmp_path / "grpo" / "grpo_summary.json").read_text())
    assert summary["result"].endswith("(the last step, 3)") and summary["cpu_min"] >= 0
    assert all(0 <= float(r["zoom_rate"]) <= 1 for r in rows[1:])
    assert cli_main(["train", "grpo", "--model", str(tmp_path / "nowhere"), "--data", world,
                     "--out", str(tmp_path / "bad")]) == 2


def test_dr_grpo_advantages_keep_the_reward_scale_and_small_spreads_are_skipped() -> None:
    advantages, keep = group_advantages([0.50, 0.52, 0.0, 1.0], 2, normalise="none", min_spread=0.05)
    assert keep == [False, False, True, True] and advantages == [0.0, 0.0, -0.5, 0.5]
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token").item() == pytest.approx(8 / 5)
    assert aggregate(values, mask, "episode").item() == pytest.approx(2.5)   # each episode weighs the same


def test_search_stats_count_zoom_outs_some_zoom_hits_and_no_target_answers() -> None:
    from segloop.agent.records import Trajectory, TurnRecord
    from segloop.evaluation.stats import episode_stats, search_stats

    def trajectory(boxes, no_target=False, zoom_outs=0):
        turns = [TurnRecord(turn=i, raw_text="", observation="", view_box=b, policy_s=0, tool_s=0)
                 for i, b in enumerate(boxes)]
        return Trajectory(episode_id="e", thread_id="e", query="q", image_size=(100, 100), policy="p",
                          frame="pixels", max_side=112, max_turns=8, turns=turns, no_target=no_target,
                          tool_counts={"zoom_out": zoom_outs}, final_mask_rle={})

    mask = np.zeros((100, 100), dtype=bool)
    mask[60:70, 60:70] = True
    root = (0, 0, 100, 100)
    episodes = [trajectory([root, (0, 0, 50, 50), root, (50, 50, 100, 100)], zoom_outs=1),
                trajectory([root], no_target=True), trajectory([root], no_target=True)]
    rates = search_stats(episodes, [mask, mask, np.zeros_like(mask)])
    assert rates["first_zoom_hit"] == 0.0 and rates["some_zoom_hit"] == 1.0
    assert episode_stats(episodes)["zoom_out_rate"] == pytest.approx(1 / 3)
    assert rates["no_target_accuracy"] == 1.0 and rates["false_no_target"] == 0.5
