"""The compact policy's expert: what it imitates (``segloop train sft --expert compact-expert``).

It knows the ground truth and only writes what the compact policy can write, from any state a student may
reach (DAgger labels the student's own states): it zooms onto the target when the target is small in the
view (naming the object each zoom is for, ``PolicyTurn.info["zoom_target"]``), leaves any view that does
not hold the whole target, answers "no such object" only from the full view, segments with the target's
box, and a background point inside it when the target has a hole (a hollow shape: a box alone makes the
segmenter fill it), corrects a poor mask with one point on the larger error, and submits. On the last
turn it segments rather than submitting nothing. It never inspects: the candidate mask is one of the
compact policy's inputs.
"""

from __future__ import annotations

import cv2
import numpy as np

from segloop.agent.actions import Segment, Submit, ZoomIn, ZoomOut
from segloop.agent.parser import format_call
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.policies.scripted import deepest_point, model_box, zoom_region
from segloop.tools.masks import box_of, iou
from segloop.tools.views import DEFAULT_MAX_SIDE, View


def holes(mask: np.ndarray) -> np.ndarray:
    """The pixels a mask encloses without covering (the inside of a hollow shape)."""
    # The parts of the complement that do not reach the (padded) border are enclosed.
    _, parts = cv2.connectedComponents(np.pad(~mask, 1, constant_values=True).astype(np.uint8), connectivity=4)
    return (parts != parts[0, 0])[1:-1, 1:-1] & ~mask


class CompactExpert:
    """See the module docstring."""

    name = "compact-expert"
    frame = "pixels"

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, *, zoom_below: float = 0.15, zoom_context: float = 4.0,
                 good_iou: float = 0.85, max_refinements: int = 1, max_depth: int = 1) -> None:
        self.max_side = max_side
        self.zoom_below = zoom_below
        self.zoom_context = zoom_context
        self.good_iou = good_iou
        self.max_refinements = max_refinements
        self.max_depth = max_depth
        self._refinements: dict[str, int] = {}

    async def act(self, context: PolicyContext) -> PolicyTurn:
        truth = context.ground_truth
        if truth is None:
            raise ValueError("the compact expert needs the ground-truth mask (expert data only)")
        view, candidate = context.view, context.candidate
        target = box_of(truth)
        last_turn = context.turn >= context.max_turns - 1
        if target is None:
            if context.view_depth > 0 and not last_turn:
                return _turn("No such object here; go back.", ZoomOut())
            return _turn("There is no such object in the image.", Submit(no_target=True))
        b = view.box
        if not (target[0] >= b.x1 and target[1] >= b.y1 and target[2] <= b.x2 and target[3] <= b.y2):
            if last_turn or context.view_depth == 0:
                return _turn("Last turn: submit what I have.", Submit())
            return _turn("The target is not all inside this view; go back.", ZoomOut())
        has_mask = candidate is not None and bool(candidate.any())
        if not last_turn and not has_mask:
            zoom = zoom_region(target, view, context.image_size, context.zoom_limits, self.zoom_context,
                               self.zoom_below)
            if zoom is not None and context.view_depth < self.max_depth:
                turn = _turn("The target is small here; zoom in on it.", ZoomIn(bbox_2d=model_box(view, zoom)))
                turn.info["zoom_target"] = model_box(view, target)
                return turn
        if not has_mask:
            return _turn("Box the target.", self._segment(view, truth, target, holes(truth), negative=True))
        quality = iou(candidate, truth)
        done = self._refinements.get(context.episode_id, 0)
        if last_turn or quality >= self.good_iou or done >= self.max_refinements:
            return _turn("The mask covers the target.", Submit())
        self._refinements[context.episode_id] = done + 1
        missed, extra = truth & ~candidate, candidate & ~truth
        larger_missed = np.count_nonzero(missed) >= np.count_nonzero(extra)
        return _turn("Correct the mask with a point on its larger error.",
                     self._segment(view, truth, target, missed if larger_missed else extra,
                                   negative=not larger_missed))

    @staticmethod
    def _segment(view: View, truth: np.ndarray, target: tuple[int, int, int, int], region: np.ndarray,
                 negative: bool) -> Segment:
        """The target's box, with a point at the deepest pixel of ``region`` inside the view if it has one."""
        b = view.box
        spot = deepest_point(region[b.y1:b.y2, b.x1:b.x2])
        box = model_box(view, tuple(float(v) for v in target))
        if spot is None:
            return Segment(bbox_2d=box)
        point = list(view.quantise(b.x1 + spot[0] + 0.5, b.y1 + spot[1] + 0.5))
        return Segment(bbox_2d=box, points_2d=[point], point_labels=[0 if negative else 1])

    def end_episode(self, episode_id: str) -> None:
        self._refinements.pop(episode_id, None)


def _turn(thought: str, action: object) -> PolicyTurn:
    return PolicyTurn(text=f"<think>{thought}</think>\n{format_call(action)}")
