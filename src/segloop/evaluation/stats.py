"""What a set of episodes did, in one vocabulary for batch metrics, training logs and reports.

Rates are shares of episodes unless named per turn: ``valid_rate`` is the share of turns whose action was
valid (the grammar a language-model policy must learn). ``first_zoom_hit`` and ``some_zoom_hit`` need the
ground-truth masks: among episodes with a target that zoomed in, the share whose first zoomed view (any
zoomed view) holds the whole target; how well a policy localises from the full view, and whether its
search finds the target at all.

A policy that talks to a server records, per turn (``TurnRecord.policy_info``), the status of each attempt,
its retries, token usage and request bytes; ``server_totals`` adds them up (empty for other policies).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from segloop.tools.masks import box_of

if TYPE_CHECKING:
    import numpy as np

    from segloop.agent.records import Trajectory


def _holds(view: Sequence[int], target: tuple[int, int, int, int]) -> bool:
    return view[0] <= target[0] and view[1] <= target[1] and view[2] >= target[2] and view[3] >= target[3]


def search_stats(trajectories: Sequence[Trajectory], masks: Sequence[np.ndarray]) -> dict[str, float | None]:
    """How episodes searched, judged against the ground truth: ``first_zoom_hit`` and ``some_zoom_hit``
    (see the module docstring), ``zooms`` (mean zoom_in calls per episode), and for "no such object"
    answers their accuracy on queries with no target (``no_target_accuracy``) and their rate on queries
    with one (``false_no_target``). A figure with nothing to count is None."""
    first_hits = some_hits = zoomed = 0
    absent = absent_right = present = present_wrong = 0
    for trajectory, mask in zip(trajectories, masks, strict=True):
        target = box_of(mask)
        if target is None:
            absent += 1
            absent_right += trajectory.no_target
            continue
        present += 1
        present_wrong += trajectory.no_target
        root = trajectory.turns[0].view_box if trajectory.turns else None
        views = [t.view_box for t in trajectory.turns if t.view_box != root]
        if views:
            zoomed += 1
            first_hits += _holds(views[0], target)
            some_hits += any(_holds(v, target) for v in views)
    n = max(len(trajectories), 1)
    return {"first_zoom_hit": first_hits / zoomed if zoomed else None,
            "some_zoom_hit": some_hits / zoomed if zoomed else None,
            "zooms": sum(t.tool_counts.get("zoom_in", 0) for t in trajectories) / n,
            "no_target_accuracy": absent_right / absent if absent else None,
            "false_no_target": present_wrong / present if present else None}


def episode_stats(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Mean turns, valid-action rate per turn, share of episodes using each tool and submitting, and
    the total calls per tool."""
    n = max(len(trajectories), 1)
    turns = sum(len(t.turns) for t in trajectories)
    tools: Counter[str] = Counter()
    for t in trajectories:
        tools.update(t.tool_counts)

    def share(tool: str) -> float:
        return sum(t.tool_counts.get(tool, 0) > 0 for t in trajectories) / n

    return {
        **server_totals(trajectories),
        "turns": turns / n,
        "valid_rate": 1 - sum(t.invalid_actions for t in trajectories) / turns if turns else 0.0,
        "zoom_rate": share("zoom_in"),
        "zoom_out_rate": share("zoom_out"),
        "segment_rate": share("segment"),
        "inspect_rate": share("inspect_mask"),
        "submit_rate": sum(t.submitted for t in trajectories) / n,
        "no_target_rate": sum(t.no_target for t in trajectories) / n,
        "tool_calls": dict(sorted(tools.items())),
    }


def server_totals(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Requests, retries, statuses other than 200, token usage and request bytes over every request the
    episodes sent: their turns' and, for an episode that failed, its failed turn's (``Failure.policy_info``),
    with the median and largest request bytes of an episode. Empty when no turn came from a server."""
    requests = retries = prompt_tokens = completion_tokens = 0
    failures: Counter[str] = Counter()
    per_episode: list[int] = []
    for trajectory in trajectories:
        sent = 0
        served = False
        infos = [turn.policy_info for turn in trajectory.turns]
        if trajectory.failure is not None:
            infos.append(trajectory.failure.policy_info)
        for info in infos:
            if "request_bytes" not in info:
                continue
            served = True
            sent += int(info["request_bytes"])
            statuses = info.get("statuses") or []
            requests += len(statuses)
            retries += int(info.get("retries", 0))
            failures.update(str(s) for s in statuses if s != 200)
            usage = info.get("usage") or {}
            prompt_tokens += int(usage.get("prompt_tokens", 0))
            completion_tokens += int(usage.get("completion_tokens", 0))
        if served:
            per_episode.append(sent)
    if not per_episode:
        return {}
    return {
        "server": {
            "requests": requests, "retries": retries, "failed_attempts": dict(sorted(failures.items())),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "request_bytes": sum(per_episode),
            "request_bytes_per_episode": {"median": statistics.median(per_episode), "max": max(per_episode)},
        },
    }
