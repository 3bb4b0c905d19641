"""The compact grounding policy: shapes, the text it writes, persistence, recorded log-probs."""

import asyncio

import numpy as np
import pytest
import torch

from agent.actions import Segment, ZoomIn, format_call, parse_turn
from agent.policy import ChatMessage, PolicyContext
from policies.compact import PARTS, TOOLS, CompactPolicy
from policies.compact.network import STATE_SIZE
from rl.learnable import LearnablePolicy, load_learnable
from tools.views import check_box, check_point, full_view, zoom_in

QUERIES = ["the red circle left of the blue square", "the small green triangle"]


def _context(episode_id: str, view=None, turn: int = 0, candidate=None, seed: int = 0) -> PolicyContext:
    rng = np.random.default_rng(seed)
    view = view or full_view(640, 480, 112)
    image = rng.integers(0, 255, (view.height, view.width, 3), dtype=np.uint8)
    messages = [ChatMessage(role="system", content="tools"), ChatMessage(role="user", content="q", image_id="img0")]
    return PolicyContext(episode_id=episode_id, query=QUERIES[seed % 2], messages=messages, images={"img0": image},
                         view=view, view_depth=0, image_size=(640, 480), turn=turn, max_turns=6, candidate=candidate)


@pytest.fixture
def policy() -> CompactPolicy:
    torch.manual_seed(0)
    return CompactPolicy.create(QUERIES, seed=1, max_side=112, input_size=64, grid=16, channels=16, word_dim=8,
                                cond_dim=16, dilations=[1, 2])


def test_it_is_a_learnable_policy_and_forward_has_the_documented_shapes(policy: CompactPolicy) -> None:
    assert isinstance(policy, LearnablePolicy)
    out = policy.net(torch.zeros(3, 3, 64, 64, dtype=torch.uint8), torch.zeros(3, 64, 64, dtype=torch.bool),
                     torch.tensor([[2, 3, 0], [4, 0, 0], [1, 1, 1]]), torch.zeros(3, STATE_SIZE))
    assert out["tool"].shape == (3, len(TOOLS))
    assert out["use_point"].shape == (3, 2)
    assert out["top_left"].shape == out["bottom_right"].shape == out["point"].shape == (3, 16 * 16)


def test_act_writes_parseable_calls_with_coordinates_inside_the_view(policy: CompactPolicy) -> None:
    view = zoom_in(full_view(640, 480, 112), [10, 10, 60, 50], 640, 480, 112)
    contexts = [_context(f"e{i}", view=view, seed=i) for i in range(64)]

    async def act_all():
        return await asyncio.gather(*[policy.act(c) for c in contexts])

    turns = asyncio.run(act_all())
    seen = set()
    for turn in turns:
        action = parse_turn(turn.text).action
        assert action is not None, turn.text
        seen.add(action.name)
        if isinstance(action, (ZoomIn, Segment)):
            assert check_box(action.bbox_2d, view) == tuple(action.bbox_2d)
            assert all(float(v).is_integer() for v in action.bbox_2d)
            for point in getattr(action, "points_2d", None) or []:
                check_point(point, view)
    assert {"zoom_in", "segment"} <= seen  # an untrained policy samples every tool


def test_recorded_log_probs_match_a_later_forward(policy: CompactPolicy) -> None:
    async def episode(i: int):
        for turn in range(3):
            await policy.act(_context(f"e{i}", turn=turn, seed=i))
        return policy.end_episode(f"e{i}")

    records = [asyncio.run(episode(i)) for i in range(5)]
    scored = policy.log_probs(records)
    assert scored.log_probs.shape == (5, 3 * len(PARTS))
    assert torch.allclose(scored.log_probs, scored.recorded, atol=1e-5)
    assert (scored.log_probs[scored.mask == 0] == 0).all()
    assert (scored.mask[:, 0::len(PARTS)] == 1).all()  # every turn chooses a tool
    assert scored.entropy is not None and (scored.entropy >= 0).all()


def test_imitate_records_the_expert_box_as_cells(policy: CompactPolicy) -> None:
    context = _context("x")
    text = format_call(Segment(bbox_2d=[14, 21, 42, 63], points_2d=[[28, 40]]))
    turn = asyncio.run(policy.imitate(context, text))
    assert turn.text == text
    parts = turn.decision.parts.tolist()
    grid, cell = 16, 112 / 16                      # view is 112 x 84; cells 7 x 5.25 px
    assert parts[0] == TOOLS.index("segment")
    assert parts[1] == int(21 / 5.25) * grid + int(14 / cell)
    assert parts[2] == (int(np.ceil(63 / 5.25)) - 1) * grid + (int(np.ceil(42 / cell)) - 1)
    assert parts[3:] == [1, int(40 / 5.25) * grid + int(28 / cell)]
    with pytest.raises(ValueError, match="not a valid action"):
        asyncio.run(policy.imitate(_context("y"), "no call here"))


def test_save_and_load_give_identical_outputs(policy: CompactPolicy, tmp_path) -> None:
    policy.save_pretrained(tmp_path / "m")
    loaded = load_learnable(tmp_path / "m")
    assert isinstance(loaded, CompactPolicy) and loaded.config == policy.config
    policy.greedy = loaded.greedy = True
    for i in range(4):
        a = asyncio.run(policy.act(_context(f"a{i}", seed=i)))
        b = asyncio.run(loaded.act(_context(f"b{i}", seed=i)))
        assert a.text == b.text
        assert torch.equal(a.decision.log_probs, b.decision.log_probs)
    with pytest.raises(FileNotFoundError, match="missing"):
        CompactPolicy.from_pretrained(tmp_path)
