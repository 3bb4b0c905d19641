"""Scripted policies: the oracle expert, the single-shot baseline and a random-text stress test.

They write the same ``<tool_call>`` text a model writes, with coordinates quantised to the integer frame
of the current view (``View.quantise``), so their episodes go through the parser, the views and the
segmenter exactly as a model's do. The oracle and single-shot read ``context.ground_truth``: they exist
for expert trajectories, upper bounds and baselines, never for inference on new images.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut
from segloop.agent.parser import format_call
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.tools.masks import box_of, iou
from segloop.tools.views import DEFAULT_MAX_SIDE, CoordFrame, View, ZoomLimits


def _rng(context: PolicyContext) -> random.Random:
    """The episode's generator, from its seed (``EpisodeConfig.episode_seed``; an unseeded episode draws
    from the episode id alone, so scripted episodes are reproducible either way)."""
    seed = context.seed if context.seed is not None else zlib.crc32(context.episode_id.encode())
    return random.Random(seed)


def _need_truth(context: PolicyContext) -> np.ndarray:
    if context.ground_truth is None:
        raise ValueError("this scripted policy needs the ground-truth mask (evaluation or expert data only)")
    return context.ground_truth


def model_box(view: View, box: tuple[float, float, float, float]) -> list[int]:
    """An original-pixel box as the integer view-frame box a model would write (at least 1 wide)."""
    x1, y1 = view.quantise(box[0], box[1])
    x2, y2 = view.quantise(box[2], box[3])
    if x2 <= x1:
        x1, x2 = (x1 - 1, x2) if x2 >= view.frame_width else (x1, x1 + 1)
    if y2 <= y1:
        y1, y2 = (y1 - 1, y2) if y2 >= view.frame_height else (y1, y1 + 1)
    return [x1, y1, x2, y2]


def _turn(thought: str, action: object) -> PolicyTurn:
    return PolicyTurn(text=f"<think>{thought}</think>\n{format_call(action)}")


def _last_action(context: PolicyContext) -> str | None:
    """The tool of the request's previous turn ("error" for an invalid one; None on its first turn)."""
    if context.last_turn is None:
        return None
    return context.last_turn.action.name if context.last_turn.action is not None else "error"


def _inside(box: tuple[int, int, int, int], view: View) -> bool:
    b = view.box
    return box[0] >= b.x1 and box[1] >= b.y1 and box[2] <= b.x2 and box[3] <= b.y2


def deepest_point(region: np.ndarray) -> tuple[int, int] | None:
    """The pixel of ``region`` farthest from its edge (a safe place for a point), crop coordinates."""
    if not region.any():
        return None
    distance = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def zoom_region(target: tuple[int, int, int, int], view: View, image_size: tuple[int, int], limits: ZoomLimits,
                zoom_context: float, zoom_below: float) -> tuple[float, float, float, float] | None:
    """A square ``zoom_context`` times the target's side around it, when the target is small in ``view``
    (its side under ``zoom_below`` of the view's) and the zoom would magnify; else None."""
    side = max(target[2] - target[0], target[3] - target[1])
    view_side = max(view.box.width, view.box.height)
    if side >= zoom_below * view_side:
        return None
    # The graph grows a zoom to its minimum side (the episode's ZoomLimits); one that would barely magnify is
    # not worth a turn.
    region = max(side * zoom_context, float(max(limits.min_side, math.ceil(max(image_size) / limits.max_zoom))))
    if region >= view_side * 0.75:
        return None
    cx, cy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
    b = view.box
    x1 = min(max(cx - region / 2, b.x1), b.x2 - region)
    y1 = min(max(cy - region / 2, b.y1), b.y2 - region)
    return (x1, y1, x1 + region, y1 + region)


@dataclass
class _OracleEpisode:
    rng: random.Random
    refinements: int = 0


class OraclePolicy:
    """The expert: zooms when the target is small in the view, segments from the ground-truth box,
    inspects, corrects with points from the error regions while the IoU is poor, submits.

    Noise knobs make diverse expert trajectories: ``box_jitter`` (standard deviation of each box edge
    as a share of the box side), ``skip_inspect`` (probability of submitting without inspecting).
    """

    name = "oracle"

    def __init__(self, frame: CoordFrame = "pixels", max_side: int = DEFAULT_MAX_SIDE, *, box_jitter: float = 0.0,
                 skip_inspect: float = 0.0, zoom_below: float = 0.15, zoom_context: float = 4.0,
                 good_iou: float = 0.85, max_refinements: int = 2, max_depth: int = 2) -> None:
        if not 0 <= skip_inspect <= 1:
            raise ValueError("skip_inspect is a probability in [0, 1]")
        self.frame = frame
        self.max_side = max_side
        self.box_jitter = box_jitter
        self.skip_inspect = skip_inspect
        self.zoom_below = zoom_below
        self.zoom_context = zoom_context
        self.good_iou = good_iou
        self.max_refinements = max_refinements
        self.max_depth = max_depth
        self._episodes: dict[str, _OracleEpisode] = {}

    async def act(self, context: PolicyContext) -> PolicyTurn:
        truth = _need_truth(context)
        episode = self._episodes.setdefault(context.episode_id, _OracleEpisode(_rng(context)))
        view = context.view
        target = box_of(truth)
        if target is None:
            return _turn("There is no such object in the image.", Submit(no_target=True))
        if context.turn >= context.max_turns - 1:
            return _turn("Last turn: submit what I have.", Submit())
        previous = _last_action(context)
        candidate = context.candidate
        if candidate is None or previous in ("zoom_in", "zoom_out"):
            if not _inside(target, view):
                return _turn("The target is not all inside this view; go back.", ZoomOut())
            zoom = zoom_region(target, view, context.image_size, context.zoom_limits, self.zoom_context,
                               self.zoom_below)
            if zoom is not None and candidate is None and self._may_zoom(context):
                return _turn("The target is small here; zoom in on it.", ZoomIn(bbox_2d=model_box(view, zoom)))
            return _turn("Box the target.", Segment(bbox_2d=self._jittered(view, target, episode.rng)))
        if previous == "segment" and episode.rng.random() >= self.skip_inspect:
            return _turn("Check the mask.", InspectMask())
        quality = iou(candidate, truth)
        if quality >= self.good_iou or episode.refinements >= self.max_refinements:
            return _turn("The mask covers the target.", Submit())
        refine = self._refinement(candidate, truth, target, view, episode.rng)
        if refine is None:
            return _turn("Nothing more to correct in this view.", Submit())
        episode.refinements += 1
        return _turn("Correct the mask with points on the missed and the extra parts.", refine)

    def _may_zoom(self, context: PolicyContext) -> bool:
        """Zoom at most ``max_depth`` levels, and not again after a refused zoom (maximum zoom reached)."""
        if context.view_depth >= self.max_depth:
            return False
        last = next((m for m in reversed(context.messages) if m.role == "tool"), None)
        return last is None or not last.content.startswith("Error")

    def _jittered(self, view: View, target: tuple[int, int, int, int], rng: random.Random) -> list[int]:
        x1, y1, x2, y2 = (float(v) for v in target)
        if self.box_jitter > 0:
            w, h = x2 - x1, y2 - y1
            x1, x2 = x1 + rng.gauss(0, self.box_jitter * w), x2 + rng.gauss(0, self.box_jitter * w)
            y1, y2 = y1 + rng.gauss(0, self.box_jitter * h), y2 + rng.gauss(0, self.box_jitter * h)
            x1, x2 = min(x1, x2 - 1), max(x2, x1 + 1)
            y1, y2 = min(y1, y2 - 1), max(y2, y1 + 1)
        return model_box(view, (x1, y1, x2, y2))

    def _refinement(self, candidate: np.ndarray, truth: np.ndarray, target: tuple[int, int, int, int],
                    view: View, rng: random.Random) -> Segment | None:
        b = view.box
        missed = (truth & ~candidate)[b.y1:b.y2, b.x1:b.x2]
        extra = (candidate & ~truth)[b.y1:b.y2, b.x1:b.x2]
        points, labels = [], []
        for region, label in ((missed, 1), (extra, 0)):
            spot = deepest_point(region)
            if spot is not None:
                points.append(list(view.quantise(b.x1 + spot[0] + 0.5, b.y1 + spot[1] + 0.5)))
                labels.append(label)
        if not points:
            return None
        return Segment(bbox_2d=self._jittered(view, target, rng), points_2d=points, point_labels=labels)

    def end_episode(self, episode_id: str) -> None:
        self._episodes.pop(episode_id, None)


class SingleShotPolicy:
    """The Seg-Zero-style baseline: one segment call from the ground-truth box in the full view, submit."""

    name = "single-shot"

    def __init__(self, frame: CoordFrame = "pixels", max_side: int = DEFAULT_MAX_SIDE) -> None:
        self.frame = frame
        self.max_side = max_side

    async def act(self, context: PolicyContext) -> PolicyTurn:
        target = box_of(_need_truth(context))
        if target is None:
            return _turn("There is no such object.", Submit(no_target=True))
        if context.candidate is None and context.turn < context.max_turns - 1:
            return _turn("Box the target.", Segment(bbox_2d=model_box(context.view, target)))
        return _turn("Done.", Submit())

    def end_episode(self, episode_id: str) -> None:
        return None


class RandomTextPolicy:
    """Writes garbage, broken JSON and random (often impossible) calls: the graph must survive them all."""

    name = "random"

    def __init__(self, frame: CoordFrame = "pixels", max_side: int = DEFAULT_MAX_SIDE) -> None:
        self.frame = frame
        self.max_side = max_side
        self._rngs: dict[str, random.Random] = {}

    async def act(self, context: PolicyContext) -> PolicyTurn:
        rng = self._rngs.setdefault(context.episode_id, _rng(context))
        kind = rng.choice(["garbage", "partial", "bad_args", "unknown", "valid", "valid", "valid"])
        if kind == "garbage":
            text = "".join(rng.choice("<>{}[]\",:abc xyz_0123456789\n") for _ in range(rng.randint(0, 80)))
        elif kind == "partial":
            call = json.dumps(self._call(rng, context.view))
            text = f"<tool_call>{call[: rng.randint(0, len(call))]}" + rng.choice(["", "</tool_call>"])
        elif kind == "bad_args":
            name = rng.choice(["zoom_in", "segment", "submit"])
            args = rng.choice([{"bbox_2d": "left"}, {"bbox_2d": [1, 2]}, {"points_2d": [[1]]}, {"no_target": []},
                               {"bbox_2d": [5, 5, 1, 1]}, {"extra": 1}, [], "x"])
            text = f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"
        elif kind == "unknown":
            text = f"<tool_call>{json.dumps({'name': rng.choice(['click', 'crop', '']), 'arguments': {}})}</tool_call>"
        else:
            text = f"<think>random</think><tool_call>{json.dumps(self._call(rng, context.view))}</tool_call>"
        return PolicyTurn(text=text)

    @staticmethod
    def _call(rng: random.Random, view: View) -> dict:
        """A well-formed call whose numbers may fall outside the view."""
        w, h = view.frame_width, view.frame_height

        def coord(limit: float) -> int:
            return rng.randint(int(-0.2 * limit), int(1.2 * limit))

        name = rng.choices(["zoom_in", "zoom_out", "segment", "inspect_mask", "submit"], [3, 1, 4, 2, 1])[0]
        if name == "zoom_in":
            return {"name": name, "arguments": {"bbox_2d": [coord(w), coord(h), coord(w), coord(h)]}}
        if name == "segment":
            args: dict = {}
            if rng.random() < 0.8:
                args["bbox_2d"] = [coord(w), coord(h), coord(w), coord(h)]
            if rng.random() < 0.5 or not args:
                n = rng.randint(1, 3)
                args["points_2d"] = [[coord(w), coord(h)] for _ in range(n)]
                args["point_labels"] = [rng.randint(0, 1) for _ in range(n)]
            return {"name": name, "arguments": args}
        if name == "submit":
            return {"name": name, "arguments": {"no_target": rng.random() < 0.3}}
        return {"name": name, "arguments": {}}

    def end_episode(self, episode_id: str) -> None:
        self._rngs.pop(episode_id, None)
