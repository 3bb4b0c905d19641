"""One episode as a LangGraph state machine: ``policy`` -> ``tools`` -> ``policy`` ... until ``submit`` or
the turn budget.

The graph state holds only serialisable values (ids, view boxes, counters, the transcript as dicts, the
candidate as COCO RLE), so any checkpointer can save it. Pixel arrays (the image, the pictures shown to
the policy, the decoded candidate) live in a per-thread ``_Workspace`` outside the state; a workspace
lost with its process is rebuilt from the state and the image given with the next request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from segloop.agent import prompts
from segloop.agent.actions import Action
from segloop.agent.parser import ParsedTurn, echo, parse_turn
from segloop.agent.policy import ChatMessage, Policy, PolicyContext, PolicyUnavailable, unknown_words
from segloop.agent.records import EpisodeResult, Failure, Trajectory, TurnRecord
from segloop.tools.images import ImageError, as_rgb
from segloop.tools.masks import rle_decode, rle_encode
from segloop.tools.overlay import MaskInView
from segloop.tools.segmenters import Prompt, Segmenter, SegmenterError
from segloop.tools.views import (
    SIDE_MULTIPLE,
    PixelBox,
    View,
    ViewError,
    ViewStack,
    ZoomLimits,
    model_size,
    render_view,
)

# Segmenter cache keys: unique per workspace image within the process (a counter, not uuid4: os.urandom
# showed up at ~0.5 ms per call on a loaded machine).
_IMAGE_KEYS = itertools.count()
# The smallest image side an episode accepts: a vision-language model sees images in 28-pixel tiles, and a
# smaller image leaves nothing to zoom into (every zoom would be refused, turn after turn).
MIN_IMAGE_SIDE = SIDE_MULTIPLE


class EpisodeConfig(BaseModel):
    """How an episode runs: the turn budget, how far zooming may go, and the seed of sampled choices."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(8, ge=1, le=100, description="turn budget of an episode")
    zoom_min_side: int = Field(28, ge=1, description="smallest region side a zoom may show, in original pixels")
    max_zoom: float = Field(16.0, gt=1, description="how much larger than the full image's scale a view may be shown")
    seed: int | None = Field(None, description="seed of the policy's sampled choices (an episode's seed is derived "
                                               "from it and the episode id); unseeded when omitted")
    guess_unknown_words: bool = Field(False, description="answer a request with words the policy cannot read (a "
                                                         "guess) instead of refusing it")

    @property
    def zoom_limits(self) -> ZoomLimits:
        return ZoomLimits(min_side=self.zoom_min_side, max_zoom=self.max_zoom)

    def episode_seed(self, episode_id: str) -> int | None:
        """The seed of one episode: the same (seed, episode id) gives the same choices in any batch."""
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + zlib.crc32(episode_id.encode())) % 2**31


@dataclass
class TurnEvent:
    """One streamed turn. ``turn`` counts from 0; ``image`` is what the policy is shown next."""

    turn: int
    raw_text: str
    thought: str | None
    action: Action | None
    call_text: str | None
    error: str | None
    observation: str
    image: np.ndarray | None
    view: View


class EpisodeState(TypedDict):
    """The graph state: serialisable values only."""

    episode_id: str
    thread_id: str
    query: str
    image_size: list[int]
    views: list[list[int]]
    candidate: dict[str, Any] | None
    messages: list[dict[str, Any]]
    image_views: dict[str, list[int]]
    turn: int
    max_turns: int
    pending: dict[str, Any] | None
    records: list[dict[str, Any]]
    done: bool
    submitted: bool
    no_target: bool
    budget_spent: bool
    failure: dict[str, Any] | None
    tool_counts: dict[str, int]
    invalid_actions: int
    greedy: bool | None
    refused: bool


class _SegmenterCrashed(Exception):
    """The segmenter's backend raised (CUDA, out of memory, a bug): the episode fails; it is not the call's fault."""


@dataclass
class _Workspace:
    """The pixels of one thread: the image, every picture shown (by id), the decoded candidate; and the
    request's last parsed turn and the turns not yet streamed."""

    image: np.ndarray
    image_key: str
    images: dict[str, np.ndarray] = field(default_factory=dict)
    # Views rendered so far, by box and size: the overlays of later turns in the same view start from these.
    renders: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict)
    candidate_counts: str | None = None
    candidate: np.ndarray | None = None
    # The candidate as seen from each view so far (its overlay and statistics), until the candidate changes.
    candidate_views: dict[tuple[int, ...], MaskInView] = field(default_factory=dict)
    ground_truth: np.ndarray | None = None
    ignore: np.ndarray | None = None
    # The request's previous turn as parsed by the tools node (each turn's text is parsed once), for the policy.
    last_turn: ParsedTurn | None = None
    events: deque[TurnEvent] = field(default_factory=deque)

    def set_candidate(self, counts: str, mask: np.ndarray) -> None:
        """A new candidate (``counts``: its RLE's): what was seen of the previous one is dropped."""
        self.candidate_counts, self.candidate = counts, mask
        self.candidate_views.clear()


class _ToolEnv:
    """One turn's episode as its tool sees it (``agent.actions.ToolEnv``): the view stack, the candidate (a new
    one is encoded for the state) and the segmenter."""

    def __init__(self, ws: _Workspace, views: ViewStack, candidate: np.ndarray | None, segmenter: Segmenter,
                 image_size: tuple[int, int]) -> None:
        self.ws, self.views, self.segmenter, self.image_size = ws, views, segmenter, image_size
        self.image = ws.image
        self._candidate = candidate
        self.new_candidate: dict[str, Any] | None = None  # the RLE of a candidate the tool set
        self.submitted = self.no_target = False

    @property
    def candidate(self) -> np.ndarray | None:
        return self._candidate

    @candidate.setter
    def candidate(self, mask: np.ndarray) -> None:
        self.new_candidate = rle_encode(mask)
        self.ws.set_candidate(self.new_candidate["counts"], mask)
        self._candidate = mask

    async def render(self, view: View) -> np.ndarray:
        return await _render(self.ws, view)

    async def overlay(self, view: View) -> np.ndarray:
        return (await self._seen(view)).picture

    async def describe(self, view: View) -> str:
        return (await self._seen(view)).stats.describe()

    async def _seen(self, view: View) -> MaskInView:
        """The candidate as seen from ``view``: its overlay and statistics are computed once per candidate and
        view (an inspection right after a segment, or a submit, reuses them)."""
        key = _view_key(view)
        seen = self.ws.candidate_views.get(key)
        if seen is None:
            base = await self.render(view)
            seen = MaskInView(self._candidate, view, self.image_size, base)  # type: ignore[arg-type]
            self.ws.candidate_views[key] = seen
        return seen

    async def segment(self, view: View, prompt: Prompt) -> np.ndarray:
        try:
            return await asyncio.to_thread(self.segmenter.segment, self.image, self.ws.image_key, view.box, prompt)
        except SegmenterError:
            raise  # a prompt the segmenter cannot take: the call is answered with why
        except Exception as exc:  # the backend itself failed (CUDA, memory, a bug): the episode cannot go on
            raise _SegmenterCrashed(f"the segmenter failed ({type(exc).__name__}: {exc})"[:300]) from exc


class Agent:
    """A policy, a segmenter and one compiled graph; runs any number of concurrent episodes."""

    def __init__(self, policy: Policy, segmenter: Segmenter, config: EpisodeConfig | None = None,
                 checkpointer: Any = None, kept_workspaces: int = 64) -> None:
        self.policy = policy
        self.segmenter = segmenter
        self.config = config or EpisodeConfig()
        self.checkpointer = checkpointer
        # Pixels kept for idle threads a checkpointer may continue (older ones are rebuilt on demand from the
        # state and the next request's image); a running episode's workspace is never evicted.
        self.kept_workspaces = kept_workspaces
        self._limits = self.config.zoom_limits
        # A policy may ask never to be shown a region larger than its own pixels (``Policy.upscale``).
        self._upscale = bool(getattr(policy, "upscale", True))
        self._workspaces: OrderedDict[str, _Workspace] = OrderedDict()
        self._running: set[str] = set()
        self.graph = self._build()

    # -- graph ----------------------------------------------------------------------------------------
    def _build(self) -> Any:
        graph = StateGraph(EpisodeState)
        graph.add_node("policy", self._policy_node)
        graph.add_node("tools", self._tools_node)
        # A request the policy cannot read never reaches it (unless ``EpisodeConfig.guess_unknown_words``).
        graph.add_conditional_edges(START, _start, {"continue": "policy", "end": END})
        graph.add_conditional_edges("policy", _next, {"continue": "tools", "end": END})
        graph.add_conditional_edges("tools", _next, {"continue": "policy", "end": END})
        return graph.compile(checkpointer=self.checkpointer)

    async def _policy_node(self, state: EpisodeState) -> dict[str, Any]:
        ws = self._workspace(state)
        stack = self._stack(state)
        tic = time.perf_counter()
        try:
            context = PolicyContext(
                episode_id=state["episode_id"], query=state["query"],
                messages=[ChatMessage(**m) for m in state["messages"]], images=ws.images,
                view=stack.current, view_depth=len(stack.views) - 1, image_size=_size(state),
                turn=state["turn"], max_turns=state["max_turns"], zoom_limits=self._limits,
                seed=self.config.episode_seed(state["episode_id"]), greedy=state["greedy"], last_turn=ws.last_turn,
                candidate=self._candidate(state, ws), ground_truth=ws.ground_truth,
            )
            answer = await self.policy.act(context)
            text = answer.text if isinstance(answer.text, str) else str(answer.text)
        except Exception as exc:  # a policy failure (server down, bad model) ends the episode, not the caller
            reason = f"{type(exc).__name__}: {exc}"[:500]
            info = exc.info if isinstance(exc, PolicyUnavailable) else {}
            return {"done": True, "failure": {"kind": "policy", "reason": reason, "policy_info": info}}
        policy_s = time.perf_counter() - tic
        # The turn is parsed whole (tools node); what is echoed back and recorded is cut (``parser.echo``).
        messages = [*state["messages"], {"role": "assistant", "content": echo(text), "image_id": None}]
        pending = {"text": text, "policy_s": policy_s, "info": answer.info}
        return {"pending": pending, "messages": messages}

    async def _tools_node(self, state: EpisodeState) -> dict[str, Any]:
        ws = self._workspace(state)
        stack = self._stack(state)
        pending = state["pending"] or {"text": "", "policy_s": 0.0}
        acting_view = stack.current
        parsed = ws.last_turn = parse_turn(pending["text"])
        update: dict[str, Any] = {"pending": None}
        counts = dict(state["tool_counts"])
        tic = time.perf_counter()
        picture: np.ndarray | None = None
        error: str | None = None
        env = _ToolEnv(ws, stack, self._candidate(state, ws), self.segmenter, _size(state))
        if parsed.action is None:
            # A policy may say why it has no call for the model to read (a server that refused the turn).
            error = (pending.get("info") or {}).get("observation_error") or (
                parsed.error.message if parsed.error else "No tool call found.")
        else:
            counts[parsed.action.name] = counts.get(parsed.action.name, 0) + 1
            try:
                result, picture = await parsed.action.run(env)
            except (ViewError, SegmenterError, ValueError) as exc:
                error = str(exc)
            except _SegmenterCrashed as exc:
                error = str(exc)
                update.update(done=True, failure={"kind": "segmenter", "reason": error})
        if env.new_candidate is not None:
            update["candidate"] = env.new_candidate
        if env.submitted:
            update.update(submitted=True, no_target=env.no_target)
        if error is not None:
            result = prompts.error_text(error)
        turn = state["turn"] + 1
        done = env.submitted or bool(update.get("failure"))
        if not done and turn >= state["max_turns"]:
            update.update(done=True, submitted=False, budget_spent=True)
            done = True
        if picture is None and not done:
            picture = await _render(ws, stack.current)  # an error, or a tool without a picture, still shows the view
        observation = prompts.observation_text(result, stack.current, state["max_turns"] - turn)
        image_id = None
        image_views = dict(state["image_views"])
        if picture is not None:
            image_id = f"{state['episode_id']}/turn_{turn:02d}"
            ws.images[image_id] = picture
            image_views[image_id] = list(stack.current.box.as_tuple())
        messages = [*state["messages"], {"role": "tool", "content": observation, "image_id": image_id}]
        action = parsed.action
        raw_text = echo(pending["text"])
        record = TurnRecord(
            turn=state["turn"], raw_text=raw_text, thought=parsed.thought,
            action=action.model_dump(exclude_none=True) if action is not None else None,
            error=error, observation=observation,
            observation_image=f"turn_{turn:02d}.png" if image_id else None,
            view_box=acting_view.box.as_tuple(), policy_s=pending["policy_s"], tool_s=time.perf_counter() - tic,
            policy_info=pending.get("info") or {},
        )
        ws.events.append(TurnEvent(turn=state["turn"], raw_text=raw_text, thought=parsed.thought,
                                   action=action, call_text=parsed.call_text, error=error, observation=observation,
                                   image=picture, view=stack.current))
        update.update(
            messages=messages, image_views=image_views, turn=turn, done=done or bool(update.get("done")),
            records=[*state["records"], record.model_dump()], tool_counts=counts,
            invalid_actions=state["invalid_actions"] + (error is not None),
            views=[list(v.box.as_tuple()) for v in stack.views],
        )
        return update

    # -- workspace and views --------------------------------------------------------------------------
    def _workspace(self, state: EpisodeState) -> _Workspace:
        ws = self._workspaces.get(state["thread_id"])
        if ws is None:
            raise RuntimeError(f"no workspace for thread {state['thread_id']!r}; start it with Agent.run")
        return ws

    def _stack(self, state: EpisodeState) -> ViewStack:
        width, height = _size(state)
        stack = ViewStack(width, height, self.policy.max_side, self.policy.frame, self._limits, self._upscale)
        stack.views = [self._view(box) for box in state["views"]]
        return stack

    def _view(self, box: list[int]) -> View:
        x1, y1, x2, y2 = box
        width, height = model_size(x2 - x1, y2 - y1, self.policy.max_side, self._upscale)
        return View(PixelBox(x1, y1, x2, y2), width, height, self.policy.frame)

    @staticmethod
    def _candidate(state: EpisodeState, ws: _Workspace) -> np.ndarray | None:
        rle = state["candidate"]
        if rle is None:
            return None
        if ws.candidate_counts != rle["counts"]:
            ws.set_candidate(rle["counts"], rle_decode(rle))
        return ws.candidate

    # -- running --------------------------------------------------------------------------------------
    async def run(self, image: np.ndarray, query: str, *, episode_id: str | None = None,
                  ground_truth: np.ndarray | None = None, ignore: np.ndarray | None = None,
                  thread_id: str | None = None, greedy: bool | None = None) -> EpisodeResult:
        """One episode (or, with a checkpointer and a known ``thread_id``, the next request of that
        conversation); returns its mask and record. ``greedy`` is what the policy is asked for on every turn
        (``PolicyContext.greedy``): its most likely action (True), a sample (False), or its own setting."""
        result = None
        async for item in self.stream(image, query, episode_id=episode_id, ground_truth=ground_truth,
                                      ignore=ignore, thread_id=thread_id, greedy=greedy):
            if isinstance(item, EpisodeResult):
                result = item
        assert result is not None
        return result

    async def stream(self, image: np.ndarray, query: str, *, episode_id: str | None = None,
                     ground_truth: np.ndarray | None = None, ignore: np.ndarray | None = None,
                     thread_id: str | None = None, greedy: bool | None = None,
                     on_stop: Callable[[EpisodeResult], None] | None = None,
                     ) -> AsyncIterator[TurnEvent | EpisodeResult]:
        """The episode as it runs: a ``TurnEvent`` per turn, then the ``EpisodeResult``. If the stream is
        cancelled or closed before it ends, ``on_stop`` gets the episode so far (``trajectory.stopped``),
        so a stopped episode can still be saved."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty; say what to segment")
        image = as_rgb(np.asarray(image))
        height, width = image.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            raise ImageError(f"the image is {width}x{height} pixels, too small to look at and zoom into; an "
                             f"episode needs at least {MIN_IMAGE_SIDE} pixels on each side")
        for name, mask in (("ground_truth", ground_truth), ("ignore", ignore)):
            if mask is not None and np.shape(mask) != (height, width):
                raise ValueError(f"{name} is {np.shape(mask)}, image is {(height, width)}")
        episode_id = episode_id or uuid.uuid4().hex[:12]
        thread_id = thread_id or episode_id
        if thread_id in self._running:
            raise ValueError(f"an episode of thread {thread_id!r} is already running; use another episode/thread id")
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 2 * self.config.max_turns + 10}
        self._running.add(thread_id)
        try:
            refused = not self.config.guess_unknown_words and bool(unknown_words(self.policy, query))
            state = await self._start_state(image, query.strip(), episode_id, thread_id, config, greedy, refused)
        except BaseException:
            self._running.discard(thread_id)
            raise
        ws = self._workspaces[thread_id]
        ws.ground_truth = None if ground_truth is None else np.asarray(ground_truth, dtype=bool)
        ws.ignore = None if ignore is None else np.asarray(ignore, dtype=bool)
        started = time.perf_counter()
        final = dict(state)
        ended = False
        try:
            async for update in self.graph.astream(state, config=config, stream_mode="values"):
                final = update
                while ws.events:  # the turns the tools node just recorded
                    yield ws.events.popleft()
            ended = True
        finally:
            self._running.discard(thread_id)
            ledger = self.policy.end_episode(episode_id)
            if self.checkpointer is None:
                self._workspaces.pop(thread_id, None)
            self._trim_workspaces()
            if not ended and on_stop is not None:
                stopped = self._result(final, ws, ledger, time.perf_counter() - started)
                stopped.trajectory.stopped = True
                on_stop(stopped)
        yield self._result(final, ws, ledger, time.perf_counter() - started)

    async def _start_state(self, image: np.ndarray, query: str, episode_id: str, thread_id: str,
                           config: dict[str, Any], greedy: bool | None, refused: bool) -> EpisodeState:
        height, width = image.shape[:2]
        previous = None
        if self.checkpointer is not None:
            snapshot = await self.graph.aget_state(config)
            previous = snapshot.values or None
        if previous:
            if list(previous["image_size"]) != [width, height]:
                raise ValueError(f"thread {thread_id!r} is about a {previous['image_size'][0]}x"
                                 f"{previous['image_size'][1]} image, not {width}x{height}; start a new thread")
            await self._keep_workspace(thread_id, image, previous)
            # A follow-up is a new request on the same image: the agent looks again from the whole image,
            # with no candidate. The conversation so far stays in the transcript (it may inform a model),
            # but the new request decides the target.
            view = self._view(previous["views"][0])
            picture_id = f"{episode_id}/request"
            self._workspaces[thread_id].images[picture_id] = await _render(self._workspaces[thread_id], view)
            message = {"role": "user", "content": prompts.follow_up_text(query, view), "image_id": picture_id}
            return EpisodeState(
                **{**previous, "episode_id": episode_id, "query": query, "turn": 0, "max_turns": self.config.max_turns,
                   "views": [list(view.box.as_tuple())], "candidate": None,
                   "pending": None, "records": [], "done": False, "submitted": False, "no_target": False,
                   "budget_spent": False, "failure": None, "tool_counts": {}, "invalid_actions": 0,
                   "greedy": greedy, "refused": refused, "messages": [*previous["messages"], message],
                   "image_views": {**previous["image_views"], picture_id: list(view.box.as_tuple())}},
            )
        stack = ViewStack(width, height, self.policy.max_side, self.policy.frame, self._limits, self._upscale)
        view = stack.current
        picture_id = f"{episode_id}/request"
        await self._keep_workspace(thread_id, image, None)
        self._workspaces[thread_id].images[picture_id] = await _render(self._workspaces[thread_id], view)
        return EpisodeState(
            episode_id=episode_id, thread_id=thread_id, query=query, image_size=[width, height],
            views=[list(view.box.as_tuple())], candidate=None,
            messages=[
                {"role": "system", "content": prompts.system_prompt(self.policy.frame, self.config.max_turns),
                 "image_id": None},
                {"role": "user", "content": prompts.first_user_text(query, view), "image_id": picture_id},
            ],
            image_views={picture_id: list(view.box.as_tuple())}, turn=0, max_turns=self.config.max_turns,
            pending=None, records=[], done=False, submitted=False, no_target=False, budget_spent=False,
            failure=None, tool_counts={}, invalid_actions=0, greedy=greedy, refused=refused,
        )

    async def _keep_workspace(self, thread_id: str, image: np.ndarray, previous: dict[str, Any] | None) -> None:
        """The thread's workspace; one lost (another process, evicted) is rebuilt: pictures shown earlier
        are re-rendered from their view boxes (without overlays)."""
        ws = self._workspaces.get(thread_id)
        if ws is None or ws.image.shape != image.shape or not np.array_equal(ws.image, image):
            ws = _Workspace(image=image, image_key=f"{thread_id}:{next(_IMAGE_KEYS)}")
            if previous:
                for image_id, box in previous["image_views"].items():
                    ws.images[image_id] = await _render(ws, self._view(box))
        ws.last_turn = None  # a new request: its first turn has no previous one
        ws.events.clear()
        self._workspaces[thread_id] = ws
        self._workspaces.move_to_end(thread_id)
        self._trim_workspaces()

    @property
    def held_threads(self) -> list[str]:
        """The threads whose pixels this agent holds (running ones and the most recent idle ones)."""
        return list(self._workspaces)

    def _trim_workspaces(self) -> None:
        idle = [key for key in self._workspaces if key not in self._running]  # oldest first
        for key in idle[: max(0, len(self._workspaces) - self.kept_workspaces)]:
            del self._workspaces[key]

    def _result(self, state: dict[str, Any], ws: _Workspace, ledger: Any, seconds: float) -> EpisodeResult:
        width, height = _size(state)
        if not state.get("no_target") and state.get("candidate") is not None:
            mask = self._candidate(state, ws).copy()  # type: ignore[arg-type, union-attr]
            rle = dict(state["candidate"])  # the state's RLE is this very mask's: no need to encode it again
        else:
            mask = np.zeros((height, width), dtype=bool)
            rle = rle_encode(mask)
        failure = state.get("failure")
        no_target = bool(state.get("no_target"))
        refused = bool(state.get("refused"))
        trajectory = Trajectory(
            episode_id=state["episode_id"], thread_id=state["thread_id"], query=state["query"],
            image_size=(width, height), policy=self.policy.name, frame=self.policy.frame,
            max_side=self.policy.max_side, max_turns=state["max_turns"],
            turns=[TurnRecord(**r) for r in state["records"]], submitted=bool(state.get("submitted")),
            no_target=no_target, budget_spent=bool(state.get("budget_spent")),
            failure=Failure(**failure) if failure else None,
            refused=refused, empty=not failure and not no_target and not refused and not mask.any(),
            unknown_words=unknown_words(self.policy, state["query"]), tool_counts=dict(state["tool_counts"]),
            invalid_actions=state["invalid_actions"], final_mask_rle=rle,
            final_area_share=np.count_nonzero(mask) / mask.size if mask.size else 0.0, seconds=seconds, ledger=ledger,
        )
        prefix = f"{state['episode_id']}/"
        images = {k[len(prefix):]: v for k, v in ws.images.items() if k.startswith(prefix)}
        return EpisodeResult(mask=mask, trajectory=trajectory, images=images)


def _view_key(view: View) -> tuple[int, ...]:
    return (*view.box.as_tuple(), view.width, view.height)


async def _render(ws: _Workspace, view: View) -> np.ndarray:
    """The view of the workspace's image at model size, rendered once per view (shared, never drawn on), off the
    event loop: a resize of up to the whole image (OpenCV releases the GIL while the other episodes go on)."""
    key = _view_key(view)
    picture = ws.renders.get(key)
    if picture is None:
        picture = ws.renders[key] = await asyncio.to_thread(render_view, ws.image, view)
    return picture


def _start(state: EpisodeState) -> str:
    return "end" if state["refused"] else "continue"


def _next(state: EpisodeState) -> str:
    return "end" if state["done"] else "continue"


def _size(state: Any) -> tuple[int, int]:
    width, height = state["image_size"]
    return int(width), int(height)
