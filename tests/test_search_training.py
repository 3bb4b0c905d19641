"""The compact policy's two networks, search memory and legal actions, the compact expert, DAgger labels,
the render cache and the GRPO recipe options."""

import asyncio

import numpy as np
import pytest
import torch

from segloop.agent.actions import Submit, ZoomIn, ZoomOut
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call, parse_turn
from segloop.agent.policy import ChatMessage, PolicyContext
from segloop.data.specs import load_items
from segloop.policies.compact import TOOLS, CompactPolicy
from segloop.policies.scripted import OraclePolicy
from segloop.rl.grpo import aggregate, group_advantages
from segloop.rl.sft import DAggerForcing
from segloop.tools.segmenters import build_segmenter
from segloop.tools.views import ViewStack

QUERIES = ["the red circle", "the blue square left of the star"]


def _policy(**options) -> CompactPolicy:
    return CompactPolicy.create(QUERIES, seed=3, max_side=112, input_size=64, grid=16, channels=16, word_dim=8,
                                cond_dim=16, dilations=[1, 2], **options)


def _context(episode_id: str, stack: ViewStack, turn: int, messages: list, pictures: dict) -> PolicyContext:
    return PolicyContext(episode_id=episode_id, query=QUERIES[0], messages=list(messages), images=pictures,
                         view=stack.current, view_depth=len(stack.views) - 1, image_size=(320, 320), turn=turn,
                         max_turns=8)


def test_a_view_zoomed_into_and_left_is_painted_as_visited_and_counted() -> None:
    policy = _policy()
    stack = ViewStack(320, 320, 112)
    picture = np.zeros((112, 112, 3), dtype=np.uint8)
    messages = [ChatMessage(role="user", content="q", image_id="p0")]
    pictures = {"p0": picture}
    first = policy.inputs_of(_context("e", stack, 0, messages, pictures))
    assert not first["visited"].any()
    stack.zoom_in([0, 0, 28, 28])                  # the top-left quarter of the 112-px frame: 80 x 80 px
    messages += [ChatMessage(role="assistant", content=format_call(ZoomIn(bbox_2d=[0, 0, 28, 28]))),
                 ChatMessage(role="tool", content="ok", image_id="p1")]
    pictures["p1"] = picture
    inside = policy.inputs_of(_context("e", stack, 1, messages, pictures))
    assert not inside["visited"].any()
    stack.zoom_out()
    messages += [ChatMessage(role="assistant", content=format_call(ZoomOut())),
                 ChatMessage(role="tool", content="ok", image_id="p2")]
    pictures["p2"] = picture
    back = policy.inputs_of(_context("e", stack, 2, messages, pictures))
    visited = back["visited"].numpy()
    # The zoom's object is the view's central quarter: (30, 30)-(50, 50) of 320 px, 6..10 of a 64-px input.
    assert visited[6:10, 6:10].all() and visited.sum() == 4 * 4
    assert not torch.equal(first["state"], back["state"])          # zoom and zoom-out counts moved
    assert policy.zooms_so_far("e") == 1


def test_a_zoom_cannot_name_a_visited_object_again() -> None:
    policy = _policy()
    inputs = {"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "candidate": torch.zeros(64, 64, dtype=torch.bool),
              "visited": torch.zeros(64, 64, dtype=torch.bool), "query": torch.tensor([2, 3]),
              "state": torch.zeros(policy_state_size())}
    inputs["state"][8] = 1.0  # previous tool: none; depth 0
    inputs["visited"][0:8, 0:8] = True  # cells (0, 0), (0, 1), (1, 0), (1, 1) of the 16-cell grid
    out = policy.outputs(policy.stack([inputs]))
    blocked = [0, 1, 16, 17]
    assert (out["centre"][0, blocked] < -1e3).all() and (out["centre"][0, 2:16] > -1e3).all()
    inputs["visited"][:] = True  # nothing left: the mask lets every cell be chosen again
    assert (policy.outputs(policy.stack([inputs]))["centre"] > -1e3).all()


def policy_state_size() -> int:
    from segloop.policies.compact.network import STATE_SIZE

    return STATE_SIZE


def test_each_stage_has_its_own_network() -> None:
    policy = _policy()
    depth0 = torch.zeros(policy_state_size())
    depth0[8] = 1.0
    depth1 = torch.zeros(policy_state_size())
    depth1[9] = 1.0
    plane = torch.zeros(64, 64, dtype=torch.bool)
    inputs = [{"image": torch.full((3, 64, 64), 90, dtype=torch.uint8), "candidate": plane, "visited": plane,
               "query": torch.tensor([2, 3]), "state": state} for state in (depth0, depth1)]
    before = policy.outputs(policy.stack(inputs))["centre"].detach().clone()
    with torch.no_grad():
        for p in policy.nets["zoomed"].heatmaps.parameters():
            p.add_(1.0)
    after = policy.outputs(policy.stack(inputs))["centre"]
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_illegal_tools_get_no_probability_in_acting_and_scoring() -> None:
    policy = _policy()
    state = torch.zeros(2, policy_state_size())
    state[0, 8] = 1.0  # depth 0 (index len(PREVIOUS) = 8), no candidate
    state[1, 9] = 1.0  # depth 1
    legal = policy.legal_tools(state)
    assert not legal[0, TOOLS.index("zoom_out")] and not legal[0, TOOLS.index("submit")]
    assert legal[0, TOOLS.index("zoom_in")] and legal[0, TOOLS.index("submit_no_target")]
    assert not legal[:, TOOLS.index("inspect_mask")].any()
    assert legal[1, TOOLS.index("zoom_out")] and not legal[1, TOOLS.index("zoom_in")]
    assert not legal[1, TOOLS.index("submit_no_target")]


def test_compact_expert_leaves_a_view_without_the_target_and_never_inspects() -> None:
    expert = OraclePolicy(max_side=112, compact=True)
    truth = np.zeros((320, 320), dtype=bool)
    truth[250:260, 250:262] = True
    stack = ViewStack(320, 320, 112)
    stack.zoom_in([0, 0, 28, 28])
    messages = [ChatMessage(role="user", content="q", image_id="p"),
                ChatMessage(role="assistant", content=format_call(ZoomIn(bbox_2d=[0, 0, 28, 28])))]
    context = _context("o", stack, 1, messages, {})
    context.ground_truth = truth
    assert isinstance(parse_turn(asyncio.run(expert.act(context)).text).action, ZoomOut)
    context.ground_truth = np.zeros_like(truth)    # "no such object": also leave a zoomed view
    assert isinstance(parse_turn(asyncio.run(expert.act(context)).text).action, ZoomOut)
    root = _context("r", ViewStack(320, 320, 112), 0, messages[:1], {})
    root.ground_truth = np.zeros_like(truth)
    action = parse_turn(asyncio.run(expert.act(root)).text).action
    assert isinstance(action, Submit) and action.no_target


def test_dagger_records_the_expert_label_while_the_student_action_is_executed() -> None:
    scenes = load_items("synth:easy:256:5:6")
    student = _policy()
    expert = OraclePolicy(max_side=112, compact=True)
    driver = DAggerForcing(expert, student, follow_expert=0.0, greedy_share=0.0, seed=1)
    agent = Agent(driver, build_segmenter("grabcut"), EpisodeConfig(max_turns=5))

    async def run():
        return await asyncio.gather(*[agent.run(s.image, s.sample.query, episode_id=f"d{i}", ground_truth=s.mask)
                                      for i, s in enumerate(scenes)])

    results = asyncio.run(run())
    differed = 0
    for result, _scene in zip(results, scenes, strict=True):
        records = result.trajectory.ledger
        assert len(records) == len(result.trajectory.turns)
        assert all(r.imitated for r in records)
        for record, turn in zip(records, result.trajectory.turns, strict=True):
            executed = student.parts_of(turn.raw_text, _view_of(turn, result))
            if int(record.parts[0]) >= 0:
                differed += not torch.equal(record.parts[:1], executed[:1])
    assert differed > 0  # an untrained student does other things than the expert would


def _view_of(turn, result):
    from segloop.tools.views import PixelBox, View, model_size

    x1, y1, x2, y2 = turn.view_box
    width, height = model_size(x2 - x1, y2 - y1, result.trajectory.max_side)
    return View(PixelBox(x1, y1, x2, y2), width, height)


def test_dagger_episodes_are_reproducible_whatever_runs_beside_them() -> None:
    scenes = load_items("synth:easy:256:5:4")

    def texts(order: list[int]) -> dict[int, list[str]]:
        student = _policy()
        agent = Agent(DAggerForcing(OraclePolicy(max_side=112, compact=True), student, greedy_share=0.0, seed=2),
                      build_segmenter("grabcut"), EpisodeConfig(max_turns=4, seed=2))

        async def run():
            return await asyncio.gather(*[agent.run(scenes[i].image, scenes[i].sample.query, episode_id=f"r{i}",
                                                    ground_truth=scenes[i].mask) for i in order])

        return {i: [t.raw_text for t in r.trajectory.turns] for i, r in zip(order, asyncio.run(run()), strict=True)}

    everything = texts([0, 1, 2, 3])
    assert everything == texts([3, 2, 1, 0])
    assert texts([2])[2] == everything[2]


def test_render_cache_states_are_the_policys_inputs_with_the_experts_labels(tmp_path) -> None:
    from segloop.data.synth import VOCABULARY
    from segloop.policies.compact import CompactConfig, build_vocabulary
    from segloop.rl.render_cache import STEPS, RenderCache, build_cache

    config = CompactConfig(vocabulary=build_vocabulary(list(VOCABULARY)), max_side=112, input_size=64, grid=16)
    summary = build_cache(tmp_path / "c", config.model_dump(), "synth:easy:256:3:6:0.3", chunk=4)
    cache = RenderCache(tmp_path / "c")
    assert len(cache) == summary["states"] > 6
    cache.check(config)
    steps = [STEPS[int(t[1])] for t in cache.arrays["tags"]]
    tools = [TOOLS[int(p[0])] for p in cache.arrays["parts"]]
    assert all(tool == "zoom_out" for step, tool in zip(steps, tools, strict=True) if step == "lookalike_view"
               and tool != "segment")
    assert {"root", "target_view", "lookalike_view", "root_after_miss"} <= set(steps)
    record = cache.record(0)
    assert record.image.shape == (3, 64, 64) and record.visited.shape == (64, 64) and record.imitated
    after = [i for i, s in enumerate(steps) if s == "root_after_miss"]
    assert all(cache.record(i).visited.any() for i in after)
    # Swapped queries: the same zoomed picture as a look-alike's view (or a target's), another query,
    # the opposite label; the named object's box is stored as its target.
    tags, queries = cache.arrays["tags"], cache.arrays["query"]
    for i, step in enumerate(steps):
        if step != "swapped_view":
            continue
        twin = i - 1  # the view it was made from is the state stored just before it
        assert STEPS[int(tags[twin][1])] in ("lookalike_view", "target_view")
        assert cache.arrays["index"][i] == cache.arrays["index"][twin]
        assert not np.array_equal(queries[i], queries[twin])
        assert tools[i] == ("segment" if steps[twin] == "lookalike_view" else "zoom_out") != tools[twin]
    assert {"segment", "zoom_out"} <= {tools[i] for i, s in enumerate(steps) if s == "swapped_view"}
    with pytest.raises(ValueError, match="rebuild"):
        cache.check(CompactConfig(vocabulary=config.vocabulary, max_side=112, input_size=64, grid=32))


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


def test_dagger_drops_an_expert_label_that_names_a_visited_object() -> None:
    """The student zoomed into an object and left it; an expert pointing back at it (the target the
    student wrongly rejected) is a choice the policy cannot make there: no decision, not a -1e9 log-prob."""
    from segloop.agent.actions import Segment
    from segloop.agent.policy import PolicyTurn

    policy = _policy()
    stack = ViewStack(320, 320, 112)
    picture = np.zeros((112, 112, 3), dtype=np.uint8)
    messages = [ChatMessage(role="user", content="q", image_id="p0")]
    pictures = {"p0": picture, "p1": picture, "p2": picture}
    policy.inputs_of(_context("e", stack, 0, messages, pictures))
    stack.zoom_in([0, 0, 28, 28])
    messages += [ChatMessage(role="assistant", content=format_call(ZoomIn(bbox_2d=[0, 0, 28, 28]))),
                 ChatMessage(role="tool", content="ok", image_id="p1")]
    policy.inputs_of(_context("e", stack, 1, messages, pictures))
    stack.zoom_out()
    messages += [ChatMessage(role="assistant", content=format_call(ZoomOut())),
                 ChatMessage(role="tool", content="ok", image_id="p2")]
    context = _context("e", stack, 2, messages, pictures)

    def label(box: list[int]) -> None:
        asyncio.run(policy.act_and_imitate(context, PolicyTurn(text=format_call(Segment(bbox_2d=box))), greedy=True))

    label([12, 12, 16, 16])  # the visited object's centre (model pixels 10.5..17.5)
    label([80, 80, 90, 90])  # elsewhere
    records = policy.end_episode("e")
    assert (records[-2].parts == -1).all()
    assert records[-1].parts[0] == TOOLS.index("segment") and records[-1].parts[1] >= 0
    assert torch.isfinite(policy.log_probs([records[-2:]]).log_probs).all()
    assert policy.log_probs([records[-1:]]).log_probs.min() > -1e3
