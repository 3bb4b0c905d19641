"""What an episode leaves behind: its turn records, how it ended, its files. Apart from the engine
(``agent.episode``), so whatever reads episodes (statistics, reports, rewards, trainers) does not import
LangGraph."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from segloop.tools.files import write_record
from segloop.tools.images import save_image, save_mask
from segloop.tools.overlay import result_picture

# Longest side of an episode's final picture (the whole image, the mask, a zoomed inset when small).
FINAL_SIDE = 1024


class TurnRecord(BaseModel):
    """One turn as recorded: what the policy wrote, what it meant, and what it was answered."""

    turn: int
    raw_text: str
    thought: str | None = None
    action: dict[str, Any] | None = None
    error: str | None = None
    observation: str
    observation_image: str | None = None
    view_box: tuple[int, int, int, int]
    policy_s: float
    tool_s: float
    policy_info: dict[str, Any] = Field(default_factory=dict)


FailureKind = Literal["policy", "segmenter", "image"]


class Failure(BaseModel):
    """Why an episode could not be run to its end: the policy could not give a turn (a server down, retries
    exhausted, a model that crashed), the segmenter crashed, or the image could not be used. A failed
    episode is not an answer: it is counted apart from the answers and run again on resume."""

    kind: FailureKind
    reason: str
    # What the policy recorded of the turn that failed (a server policy: every attempt's status, ``unreachable``
    # when they met only an outage); the server totals count these attempts too.
    policy_info: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.kind}: {self.reason}"


class Trajectory(BaseModel):
    """The JSON record of an episode; ``ledger`` (the policy's ``end_episode`` value) stays in memory.

    How it ended, one of: ``failure`` (not an answer, see ``Failure``), ``stopped`` (cancelled from
    outside), ``refused`` (the policy cannot read some of the request's words, ``unknown_words``, and the
    episode was set to refuse rather than guess: no mask, no turn), ``no_target`` (the agent says there is no
    such object), ``empty`` (its answer is an empty mask although it did not say "no such object"), or a
    mask, ``submitted`` or left as the last candidate
    when the turn budget was spent. ``unknown_words`` are the query's words the policy cannot read (a
    closed-vocabulary policy; see ``segloop.agent.policy.unknown_words``). Records written before
    ``failure`` replaced ``policy_error`` carry both; the old key is ignored on reading."""

    episode_id: str
    thread_id: str
    query: str
    image_size: tuple[int, int]
    policy: str
    frame: str
    max_side: int
    max_turns: int
    turns: list[TurnRecord] = Field(default_factory=list)
    submitted: bool = False
    no_target: bool = False
    budget_spent: bool = False
    failure: Failure | None = None
    stopped: bool = False  # cancelled from outside (the demo's stop button) before it ended
    refused: bool = False
    empty: bool = False
    unknown_words: list[str] = Field(default_factory=list)
    tool_counts: dict[str, int] = Field(default_factory=dict)
    invalid_actions: int = 0
    final_mask_rle: dict[str, Any]
    final_area_share: float = 0.0
    seconds: float = 0.0
    ledger: Any = Field(default=None, exclude=True)

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def outcome(self) -> str:
        """How the episode ended, in a few words: what ``segloop run``, the batch report and the demo say."""
        turns = f"{len(self.turns)} turn{'s' if len(self.turns) != 1 else ''}"
        if self.failure is not None:
            return f"FAILED after {turns} ({self.failure.describe()})"
        if self.stopped:
            return f"stopped after {turns}"
        if self.refused:
            words = ", ".join(repr(w) for w in self.unknown_words)
            return (f"REFUSED: the {self.policy} policy cannot read {words}; no mask "
                    "(--guess-unknown-words answers anyway)")
        if self.no_target:
            return f"no such object (the agent says it is not in the image), {turns}"
        if self.submitted:
            if self.empty:
                return f"submitted an EMPTY mask (without saying 'no such object'), {turns}"
            return f"submitted a mask of {self.final_area_share:.2%} of the image, {turns}"
        if self.empty:
            return f"turn budget spent ({turns}); the last candidate is an EMPTY mask"
        return f"turn budget spent ({turns}); the last candidate, {self.final_area_share:.2%} of the image, is kept"


@dataclass
class EpisodeResult:
    """The submitted mask (image-sized bool), the record, and the pictures the policy was shown, by name
    (``request``, ``turn_01``, ...)."""

    mask: np.ndarray
    trajectory: Trajectory
    images: dict[str, np.ndarray] = field(default_factory=dict)


def episode_folder(episode_id: str) -> str:
    """A file-system-safe folder name for an episode or sample id (ids may hold slashes or spaces); a
    changed id gets a short hash so that "a/b" and "a_b" do not share a folder."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", episode_id).strip("._")[:100]
    if safe == episode_id:
        return safe
    return f"{safe or 'sample'}-{hashlib.sha1(episode_id.encode()).hexdigest()[:8]}"


def final_picture(image: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The answer for a person: the mask over the whole image (at most ``FINAL_SIDE`` pixels on its longer
    side) with a thick outline, the ground truth's outline when given, and a zoomed inset around a small target,
    so a target a few pixels wide is visible at a glance (``run``, ``batch``, the demo)."""
    return result_picture(image, mask, truth, max_side=FINAL_SIDE)


def save_episode(result: EpisodeResult, out_dir: str | Path, image: np.ndarray,
                 truth: np.ndarray | None = None) -> Path:
    """Write ``trajectory.json``, one ``turn_XX.png`` per pictured turn (the views the policy saw), ``mask.png``
    and ``final.png`` (``final_picture``); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in result.images.items():
        if name.startswith("turn_"):
            save_image(picture, out / f"{name}.png")
    save_mask(result.mask, out / "mask.png")
    save_image(final_picture(image, result.mask, truth), out / "final.png")
    write_record(out / "trajectory.json", result.trajectory.model_dump_json(indent=1))
    return out
