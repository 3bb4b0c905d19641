"""The episode graph with real LangGraph, real GrabCut and scripted policies on small drawn images."""

from __future__ import annotations

import asyncio
import json

import cv2
import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver

from segloop.agent.episode import Agent, EpisodeConfig, TurnEvent
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.agent.records import EpisodeResult, Trajectory, save_episode
from segloop.policies.scripted import OraclePolicy
from segloop.tools.images import load_image
from segloop.tools.masks import iou, rle_decode
from segloop.tools.segmenters import build_segmenter


def scene(width: int = 240, height: int = 180) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy background, a red disc (the target) and a green square (a distractor)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 50, (height, width, 3)).astype(np.uint8)
    truth = np.zeros((height, width), np.uint8)
    cv2.circle(image, (170, 60), 14, (230, 40, 40), -1)
    cv2.circle(truth, (170, 60), 14, 1, -1)
    cv2.rectangle(image, (30, 100), (90, 160), (40, 200, 60), -1)
    return image, truth.astype(bool)


class Replay:
    """Writes the given texts in order, then submits; records what it was shown."""

    name = "replay"

    def __init__(self, texts: list[str], frame: str = "pixels", max_side: int = 256) -> None:
        self.texts = list(texts)
        self.frame = frame
        self.max_side = max_side
        self.contexts: list[PolicyContext] = []
        self.ended: list[str] = []

    async def act(self, context: PolicyContext) -> PolicyTurn:
        self.contexts.append(context)
        text = self.texts.pop(0) if self.texts else '<tool_call>{"name": "submit", "arguments": {}}</tool_call>'
        if text == "RAISE":
            raise ConnectionError("server down")
        return PolicyTurn(text=text)

    def end_episode(self, episode_id: str) -> dict:
        self.ended.append(episode_id)
        return {"ledger_of": episode_id}


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture(scope="module")
def segmenter():
    return build_segmenter("grabcut")


def run(agent: Agent, image: np.ndarray, query: str = "the red disc", **kwargs) -> EpisodeResult:
    return asyncio.run(agent.run(image, query, **kwargs))


def test_oracle_episode_segments_the_target_and_records_every_turn(segmenter, tmp_path):
    image, truth = scene()
    agent = Agent(OraclePolicy(max_side=256), segmenter)
    result = run(agent, image, ground_truth=truth, episode_id="ep1")
    t = result.trajectory
    assert iou(result.mask, truth) > 0.8
    assert t.submitted and not t.budget_spent and t.invalid_actions == 0
    names = [turn.action["name"] for turn in t.turns]
    assert names[0] == "zoom_in" and "segment" in names and names[-1] == "submit"
    assert t.tool_counts["segment"] >= 1
    assert np.array_equal(rle_decode(t.final_mask_rle), result.mask)
    assert t.ledger is None and "ledger" not in json.loads(t.model_dump_json())
    # The first turn acted in the full view; later turns in the zoomed one.
    assert t.turns[0].view_box == (0, 0, 240, 180) and t.turns[1].view_box != (0, 0, 240, 180)
    folder = save_episode(result, tmp_path / "ep", image, truth)
    saved = Trajectory.model_validate_json((folder / "trajectory.json").read_text())
    assert [x.observation for x in saved.turns] == [x.observation for x in t.turns]
    for turn in t.turns:
        if turn.observation_image:
            assert (folder / turn.observation_image).is_file()
    assert (folder / "mask.png").is_file()
    assert load_image(folder / "final.png").shape == image.shape  # the answer over the whole image


def test_stream_yields_one_event_per_turn_then_the_result(segmenter):
    image, truth = scene()
    agent = Agent(OraclePolicy(max_side=256), segmenter)

    async def collect() -> list:
        return [item async for item in agent.stream(image, "the red disc", ground_truth=truth)]

    items = asyncio.run(collect())
    assert isinstance(items[-1], EpisodeResult)
    events = items[:-1]
    assert all(isinstance(e, TurnEvent) for e in events)
    assert [e.turn for e in events] == list(range(len(items[-1].trajectory.turns)))
    shown = [e for e in events if e.image is not None]
    assert shown and all(e.image.shape[2] == 3 and max(e.image.shape[:2]) <= 256 for e in shown)
    assert events[-1].action.name == "submit" and events[-1].call_text.startswith("<tool_call>")


BAD_TURNS = [
    ("no call at all", "No tool call found"),
    ("<tool_call>{not json}</tool_call>", "not valid JSON"),
    (call("crop", bbox_2d=[0, 0, 5, 5]), "Unknown tool"),
    (call("segment"), "segment needs bbox_2d"),
    (call("zoom_in", bbox_2d=[300, 300, 400, 400]), "outside the current view"),
    (call("zoom_in", bbox_2d=[50, 50, 10, 10]), "is empty"),
    (call("zoom_out"), "nothing to zoom out of"),
    (call("inspect_mask"), "no candidate mask"),
    (call("segment", points_2d=[[999, 5]]), "outside the current view"),
    (call("segment", bbox_2d=[1, 2, 3, 4], points_2d=[[5, 5]], point_labels=[1, 0]), "one label per point"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_TURNS)
def test_a_bad_call_is_an_error_observation_and_costs_a_turn(segmenter, text, expected):
    image, _ = scene()
    policy = Replay([text])
    result = run(Agent(policy, segmenter), image)
    first, last = result.trajectory.turns
    assert expected in first.error and first.observation.startswith("Error:")
    assert result.trajectory.invalid_actions == 1
    assert last.action == {"name": "submit", "no_target": False} and result.trajectory.submitted
    # The policy saw the error text in the tool message of its next turn.
    assert expected in policy.contexts[1].messages[-1].content
    assert not result.mask.any()


def test_maximum_zoom_is_refused_with_an_error(segmenter):
    image, _ = scene()
    texts = [call("zoom_in", bbox_2d=[150, 40, 190, 80])] * 6
    result = run(Agent(Replay(texts), segmenter, EpisodeConfig(max_turns=7, max_zoom=4)), image)
    errors = [t.error for t in result.trajectory.turns if t.error]
    assert errors and "maximum zoom" in errors[-1]


def test_turn_budget_submits_the_current_candidate(segmenter):
    image, truth = scene()
    texts = [call("segment", bbox_2d=[150, 40, 190, 80])] + [call("inspect_mask")] * 10
    result = run(Agent(Replay(texts, max_side=240), segmenter, EpisodeConfig(max_turns=4)), image)
    t = result.trajectory
    assert len(t.turns) == 4 and t.budget_spent and not t.submitted
    assert iou(result.mask, truth) > 0.7


def test_submit_without_candidate_and_no_target_give_empty_masks(segmenter):
    image, _ = scene()
    for texts in ([call("submit")], [call("segment", bbox_2d=[150, 40, 190, 80]), call("submit", no_target=True)]):
        result = run(Agent(Replay(texts, max_side=240), segmenter), image)
        assert result.trajectory.submitted and not result.mask.any()
    assert result.trajectory.no_target


def test_an_empty_mask_without_no_target_is_flagged_empty_not_no_such_object(segmenter):
    """Item 1: an empty answer is not "no such object", and neither reads as a normal submission."""
    image, _ = scene()
    empty = run(Agent(Replay([call("submit")], max_side=240), segmenter), image).trajectory
    assert empty.empty and not empty.no_target and empty.submitted
    assert "submitted an EMPTY mask" in empty.outcome()
    none = run(Agent(Replay([call("submit", no_target=True)], max_side=240), segmenter), image).trajectory
    assert none.no_target and not none.empty and none.outcome().startswith("no such object")
    spent = run(Agent(Replay([call("inspect_mask")] * 3, max_side=240), segmenter, EpisodeConfig(max_turns=2)),
                image).trajectory
    assert spent.budget_spent and spent.empty and "EMPTY mask" in spent.outcome()
    found = run(Agent(Replay([call("segment", bbox_2d=[150, 40, 190, 80])], max_side=240), segmenter), image)
    assert not found.trajectory.empty and found.trajectory.outcome().startswith("submitted a mask of")
    assert json.loads(found.trajectory.model_dump_json())["empty"] is False


def test_policy_exception_ends_the_episode_with_its_candidate(segmenter):
    image, truth = scene()
    policy = Replay([call("segment", bbox_2d=[150, 40, 190, 80]), "RAISE"], max_side=240)
    result = run(Agent(policy, segmenter), image, episode_id="crash")
    t = result.trajectory
    assert "ConnectionError: server down" in t.failure.reason
    assert t.failure is not None and t.failure.kind == "policy" and "server down" in t.failure.reason
    assert t.failed and not t.empty and t.outcome().startswith("FAILED after 1 turn (policy: ConnectionError")
    assert len(t.turns) == 1 and not t.submitted and iou(result.mask, truth) > 0.7
    assert policy.ended == ["crash"] and t.ledger == {"ledger_of": "crash"}


def test_segment_maps_view_coordinates_to_original_pixels(segmenter):
    """A box written in the zoomed view's frame reaches the segmenter as the right original pixels."""
    from segloop.tools.views import full_view, zoom_in

    image, truth = scene()
    root = full_view(240, 180, max_side=240)
    zoomed = zoom_in(root, [110, 5, 215, 110], 240, 180, max_side=240)
    assert zoomed.box.x1 > 0 and zoomed.width != zoomed.box.width  # a real change of frame
    x1, y1 = zoomed.quantise(156, 46)
    x2, y2 = zoomed.quantise(185, 75)
    policy = Replay([call("zoom_in", bbox_2d=[110, 5, 215, 110]), call("segment", bbox_2d=[x1, y1, x2, y2])],
                    max_side=240)
    result = run(Agent(policy, segmenter), image)
    b = zoomed.box
    assert result.trajectory.turns[0].observation.startswith(f"Zoomed in on original region [{b.x1}, {b.y1}, "
                                                             f"{b.x2}, {b.y2}]")
    assert result.trajectory.turns[1].view_box == b.as_tuple()
    assert iou(result.mask, truth) > 0.8


def test_norm1000_frame(segmenter):
    image, truth = scene()
    result = run(Agent(OraclePolicy(frame="norm1000", max_side=256), segmenter), image, ground_truth=truth)
    assert iou(result.mask, truth) > 0.8
    # The disc's box (156..185, 46..75 of 240x180) written as 0..1000 of the full view.
    policy = Replay([call("segment", bbox_2d=[650, 256, 771, 417])], frame="norm1000")
    result = run(Agent(policy, segmenter), image)
    assert "0 to 1000" in policy.contexts[0].messages[0].content
    assert iou(result.mask, truth) > 0.8


@pytest.mark.parametrize("kind", ["gray", "rgba", "uint16"])
def test_any_image_kind_runs(segmenter, kind):
    image, truth = scene()
    if kind == "gray":
        image = image.mean(axis=2).astype(np.uint8)
    elif kind == "rgba":
        image = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    else:
        image = image.astype(np.uint16) * 257
    result = run(Agent(OraclePolicy(max_side=256), segmenter), image, ground_truth=truth)
    assert result.mask.shape == truth.shape and result.trajectory.submitted


@pytest.mark.parametrize("size", [(1, 1), (20, 400), (27, 27)])
def test_a_tiny_image_is_refused_before_any_turn(segmenter, size):
    """Item 12: an image too small to zoom into is one clear refusal, not a run of refused zooms."""
    from segloop.agent.episode import MIN_IMAGE_SIDE
    from segloop.tools.images import ImageError

    policy = Replay([call("zoom_in", bbox_2d=[0, 0, 1, 1])] * 7)
    height, width = size
    with pytest.raises(ImageError, match=f"{width}x{height} pixels, too small.*at least {MIN_IMAGE_SIDE} pixels"):
        run(Agent(policy, segmenter), np.zeros((height, width, 3), np.uint8))
    assert policy.contexts == []
    smallest = np.zeros((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE, 3), np.uint8)
    assert run(Agent(Replay([]), segmenter), smallest).trajectory.submitted


def test_the_words_a_policy_cannot_read_are_recorded(segmenter):
    """Item 7: an optional ``unknown_words`` of the policy goes into the record; policies without it read all."""
    class ClosedVocabulary(Replay):
        def unknown_words(self, query: str) -> list[str]:
            return [w for w in query.split() if w not in {"the", "red", "disc"}]

    image, _ = scene()
    t = run(Agent(ClosedVocabulary([]), segmenter), image, query="the red bus bus").trajectory
    assert t.unknown_words == ["bus"]
    assert run(Agent(Replay([]), segmenter), image, query="the red bus").trajectory.unknown_words == []


def test_empty_query_and_bad_ground_truth_fail_before_the_episode(segmenter):
    image, truth = scene()
    policy = Replay([])
    agent = Agent(policy, segmenter)
    with pytest.raises(ValueError, match="query is empty"):
        run(agent, image, query="  ")
    with pytest.raises(ValueError, match="ground_truth"):
        run(agent, image, ground_truth=truth[:10])
    assert policy.contexts == []


def test_concurrent_episodes_match_sequential_ones(segmenter):
    image, truth = scene()
    agent = Agent(OraclePolicy(max_side=256, box_jitter=0.05), segmenter, EpisodeConfig(seed=3))
    sequential = [run(agent, image, ground_truth=truth, episode_id=f"e{i}") for i in range(4)]

    async def together() -> list[EpisodeResult]:
        return await asyncio.gather(*(agent.run(image, "the red disc", ground_truth=truth, episode_id=f"e{i}")
                                      for i in range(4)))

    for a, b in zip(sequential, asyncio.run(together()), strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert [t.raw_text for t in a.trajectory.turns] == [t.raw_text for t in b.trajectory.turns]


def test_more_running_episodes_than_kept_workspaces_all_finish(segmenter):
    """Eviction of kept workspaces never touches a running episode's, however many run at once."""
    image, truth = scene(120, 90)
    agent = Agent(OraclePolicy(max_side=128), segmenter, checkpointer=InMemorySaver(), kept_workspaces=2)

    async def together() -> list[EpisodeResult]:
        return await asyncio.gather(*(agent.run(image, "the red disc", ground_truth=truth, episode_id=f"e{i}")
                                      for i in range(6)))

    results = asyncio.run(together())
    assert all(r.trajectory.turns and r.trajectory.turns[-1].error is None for r in results)
    assert len(agent.held_threads) == 2  # idle threads are trimmed back to the limit afterwards


def test_in_memory_checkpointer_continues_a_conversation(segmenter):
    image, _ = scene()
    policy = Replay([call("zoom_in", bbox_2d=[120, 10, 230, 120]), call("submit")], max_side=240)
    agent = Agent(policy, segmenter, checkpointer=InMemorySaver())
    first = run(agent, image, thread_id="chat", episode_id="a")
    policy.texts = [call("inspect_mask")]
    second = run(agent, image, query="now the green square", thread_id="chat", episode_id="b")
    context = policy.contexts[-2]  # the first turn of the follow-up
    roles = [m.role for m in context.messages]
    assert roles[:2] == ["system", "user"] and roles.count("user") == 2
    assert "New request: now the green square" in context.messages[-1].content
    zoomed = first.trajectory.turns[1].view_box
    # A follow-up is a new request: it looks again from the whole image, with no candidate.
    assert zoomed != (0, 0, 240, 180) and context.view.box.as_tuple() == (0, 0, 240, 180)
    assert context.view_depth == 0 and context.candidate is None
    assert all(m.image_id in context.images for m in context.messages if m.image_id)
    assert first.trajectory.episode_id == "a" and [t.turn for t in second.trajectory.turns] == [0, 1]
    assert "no candidate mask" in second.trajectory.turns[0].error
    with pytest.raises(ValueError, match="not 100x100"):
        run(agent, np.zeros((100, 100, 3), np.uint8), thread_id="chat")


def test_sqlite_checkpointer_round_trips_state_across_agents(segmenter, tmp_path):
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    image, truth = scene()
    path = str(tmp_path / "ck.sqlite")

    async def scenario() -> tuple:
        async with AsyncSqliteSaver.from_conn_string(path) as saver:
            agent = Agent(OraclePolicy(max_side=256), segmenter, checkpointer=saver)
            result = await agent.run(image, "the red disc", ground_truth=truth, thread_id="t1", episode_id="x")
            state = (await agent.graph.aget_state({"configurable": {"thread_id": "t1"}})).values
        # A new process: another Agent on the same database continues the thread, its pictures rebuilt.
        async with AsyncSqliteSaver.from_conn_string(path) as saver:
            replay = Replay([call("inspect_mask")], max_side=256)
            again = Agent(replay, segmenter, checkpointer=saver)
            follow = await again.run(image, "is that right?", thread_id="t1", episode_id="y")
        return result, state, replay, follow

    result, state, replay, follow = asyncio.run(scenario())
    assert state["candidate"] == result.trajectory.final_mask_rle
    assert [r["raw_text"] for r in state["records"]] == [t.raw_text for t in result.trajectory.turns]
    context = replay.contexts[0]
    assert len(context.messages) == len(state["messages"]) + 1
    assert all(m.image_id in context.images for m in context.messages if m.image_id)
    # The follow-up looks again: the first request's candidate is not carried over.
    assert "no candidate mask" in follow.trajectory.turns[0].error
    assert not follow.mask.any()


def test_bench_agent_reports_overhead_without_policy_and_segmenter_time(capsys):
    from segloop.cli import main as cli
    from segloop.cli.bench_agent import bench

    figures = bench(size=256, episodes=2, max_side=224)
    assert figures["turns"] >= 4
    assert 0 < figures["median_overhead_ms"] <= figures["median_turn_wall_ms"]
    assert cli(["bench", "agent", "--size", "128", "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == "128x128"


def test_a_thread_runs_one_episode_at_a_time(segmenter):
    image, _ = scene()
    agent = Agent(Replay([call("inspect_mask")] * 3), segmenter)

    async def twice() -> list:
        return await asyncio.gather(agent.run(image, "x", episode_id="same"), agent.run(image, "x", episode_id="same"),
                                    return_exceptions=True)

    first, second = asyncio.run(twice())
    assert isinstance(first, EpisodeResult)
    assert isinstance(second, ValueError) and "already running" in str(second)
    assert isinstance(run(agent, image, episode_id="same"), EpisodeResult)  # free again afterwards


def test_a_segmenter_crash_fails_the_episode_and_a_refused_prompt_costs_a_turn():
    from segloop.tools.segmenters.base import Segmenter

    class Broken(Segmenter):
        def _encode(self, crop):
            return None

        def _predict(self, embedding, crop, prompt):
            raise MemoryError("out of memory")

    image, _ = scene()
    texts = [call("segment", bbox_2d=[10, 10, 50, 50]), call("segment", bbox_2d=[60, 60, 80, 80])]
    result = run(Agent(Replay(texts), Broken()), image)
    t = result.trajectory
    assert t.failure is not None and t.failure.kind == "segmenter" and "MemoryError: out of memory" in t.failure.reason
    assert t.failed and len(t.turns) == 1 and not t.submitted and not t.empty
    assert "FAILED" in t.outcome() and "segmenter" in t.outcome()
    # A prompt the segmenter refuses (points outside the view's region) is the call's fault: an error observation.
    refused = run(Agent(Replay([call("segment", points_2d=[[500, 500]], point_labels=[1])]), build_segmenter("box")),
                  image)
    assert refused.trajectory.turns[0].error and refused.trajectory.failure is None and refused.trajectory.submitted


