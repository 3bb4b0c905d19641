"""Scripted policies through the real graph and GrabCut, and the policy registry."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from segloop.agent.episode import Agent, EpisodeConfig
from segloop.policies.registry import PolicyError, build_policy
from segloop.policies.scripted import OraclePolicy, RandomTextPolicy, SingleShotPolicy
from segloop.tools.masks import iou, rle_decode
from segloop.tools.segmenters import build_segmenter


def small_target_scene(size: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """A large image with a 14-px target: small enough that the oracle zooms."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    truth = np.zeros((size, size), np.uint8)
    cv2.rectangle(image, (470, 120), (484, 134), (250, 220, 30), -1)
    cv2.rectangle(truth, (470, 120), (484, 134), 1, -1)
    cv2.circle(image, (200, 400), 40, (30, 90, 240), -1)
    return image, truth.astype(bool)


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter("grabcut")


def run(policy, segmenter, image, truth, max_turns=8, episode_id=None, seed=None):
    agent = Agent(policy, segmenter, EpisodeConfig(max_turns=max_turns, seed=seed))
    return asyncio.run(agent.run(image, "the yellow square", ground_truth=truth, episode_id=episode_id))


def test_oracle_zooms_on_a_small_target_and_single_shot_does_not(segmenter):
    image, truth = small_target_scene()
    oracle = run(OraclePolicy(max_side=224), segmenter, image, truth)
    names = [t.action["name"] for t in oracle.trajectory.turns]
    assert names[:2] == ["zoom_in", "segment"] and names[-1] == "submit"
    assert iou(oracle.mask, truth) > 0.8
    single = run(SingleShotPolicy(max_side=224), segmenter, image, truth)
    assert [t.action["name"] for t in single.trajectory.turns] == ["segment", "submit"]
    # At 224 px the 14-px target is 5 frame pixels wide; the oracle boxes it in a view at least 4x closer.
    segment_view = next(t.view_box for t in oracle.trajectory.turns if t.action["name"] == "segment")
    assert (segment_view[2] - segment_view[0]) * 4 <= 640
    assert single.trajectory.turns[0].view_box == (0, 0, 640, 640)


def test_oracle_refines_with_points_when_the_mask_is_poor(segmenter):
    image, truth = small_target_scene()
    policy = OraclePolicy(max_side=448, box_jitter=0.6, good_iou=0.99)
    result = run(policy, segmenter, image, truth, max_turns=10, episode_id="refine", seed=5)
    refinements = [t.action for t in result.trajectory.turns if t.action.get("points_2d")]
    assert refinements and all(set(a["point_labels"]) <= {0, 1} for a in refinements)
    assert result.trajectory.submitted


def test_oracle_noise_follows_the_episode_seed(segmenter):
    image, truth = small_target_scene()
    texts = []
    for seed in (1, 1, 2):
        result = run(OraclePolicy(max_side=448, box_jitter=0.2), segmenter, image, truth, episode_id="e", seed=seed)
        texts.append([t.raw_text for t in result.trajectory.turns])
    assert texts[0] == texts[1] != texts[2]
    skipping = run(OraclePolicy(max_side=448, skip_inspect=1.0), segmenter, image, truth)
    assert "inspect_mask" not in skipping.trajectory.tool_counts


def test_no_target_and_missing_ground_truth(segmenter):
    image, truth = small_target_scene()
    empty = np.zeros_like(truth)
    for policy in (OraclePolicy(), SingleShotPolicy()):
        result = run(policy, segmenter, image, empty)
        assert result.trajectory.no_target and not result.mask.any() and len(result.trajectory.turns) == 1
        blind = run(policy, segmenter, image, None)
        assert "needs the ground-truth mask" in blind.trajectory.failure.reason


def test_random_text_never_breaks_an_episode(segmenter):
    """~50 episodes of garbage, broken JSON and random calls: each ends with a mask and a record."""
    image, truth = small_target_scene(200)
    policy = RandomTextPolicy(max_side=224)
    agent = Agent(policy, segmenter, EpisodeConfig(max_turns=6, seed=11))

    async def many():
        return await asyncio.gather(*(agent.run(image, "anything", episode_id=f"r{i}") for i in range(50)))

    results = asyncio.run(many())
    invalid = sum(r.trajectory.invalid_actions for r in results)
    turns = sum(len(r.trajectory.turns) for r in results)
    assert invalid > 0 and turns > 50
    for r in results:
        t = r.trajectory
        assert r.mask.shape == truth.shape and t.failure is None
        assert t.submitted or (t.budget_spent and len(t.turns) == 6)
        assert np.array_equal(rle_decode(t.final_mask_rle), r.mask)
    assert {name for r in results for name in r.trajectory.tool_counts} >= {"segment", "zoom_in", "submit"}


def test_build_policy_registry():
    assert isinstance(build_policy("oracle", max_side=448, box_jitter=0.1), OraclePolicy)
    assert build_policy("single-shot").name == "single-shot"
    assert build_policy("random", frame="norm1000").frame == "norm1000"
    with pytest.raises(PolicyError, match="unknown policy 'nope'"):
        build_policy("nope")
    with pytest.raises(PolicyError, match="takes no model"):
        build_policy("oracle", model="x")
    with pytest.raises(PolicyError, match="bad options"):
        build_policy("single-shot", seed=1)
    with pytest.raises(PolicyError, match="needs --model"):
        build_policy("transformers")


def test_build_policy_openai_needs_the_served_model_name():
    with pytest.raises(PolicyError, match="needs --model"):
        build_policy("openai")
