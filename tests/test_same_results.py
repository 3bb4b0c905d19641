"""The agent's fast paths (cached renders, overlays and statistics, RLE, pictures written off the event loop)
change no result: a seeded batch gives the trajectories, metrics and pictures that the straightforward code
gave before them, recorded in ``tests/support/batch_reference.json``.

Two batches over the same synthetic scenes (1100 pixels: views shrink by a non-integer factor, zooms enlarge):
the seeded oracle (jittered boxes, corrections with points, inspections skipped at random) at 1024-pixel
views, and a wandering script at 448-pixel views (zoom in, segment, zoom out and inspect the mask from the
whole image, zoom in again, correct, submit), with overlays written. Pictures are compared by their pixels
(what the policy was shown and what a person is shown), records without their timings.

The reference is rewritten by running this file with the code that should produce it on ``PYTHONPATH``:
``PYTHONPATH=OLD/src .venv/bin/python tests/test_same_results.py`` (only after a change meant to alter results).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut
from segloop.agent.episode import Agent, EpisodeConfig
from segloop.agent.parser import format_call
from segloop.agent.policy import PolicyContext, PolicyTurn
from segloop.data.specs import load_samples
from segloop.evaluation.batch import TRAJECTORIES, read_finished, run_batch
from segloop.policies.scripted import OraclePolicy
from segloop.tools.images import load_image
from segloop.tools.segmenters import build_segmenter

REFERENCE = Path(__file__).resolve().parent / "support" / "batch_reference.json"
DATA = "synth:medium:1100:5:6:0.2"
# Frame coordinates of 448-pixel views: the middle of the image, a box inside the zoomed view, a point on it.
WANDER = [format_call(ZoomIn(bbox_2d=[112, 112, 336, 336])), format_call(Segment(bbox_2d=[100, 90, 300, 260])),
          format_call(ZoomOut()), format_call(InspectMask()), format_call(ZoomIn(bbox_2d=[112, 112, 336, 336])),
          format_call(InspectMask()), format_call(Segment(bbox_2d=[100, 90, 300, 260], points_2d=[[150, 150]])),
          format_call(Submit())]


class Wanderer:
    """Writes ``WANDER``'s texts in turn, whatever it is shown."""

    name = "wanderer"
    frame = "pixels"
    max_side = 448

    async def act(self, context: PolicyContext) -> PolicyTurn:
        return PolicyTurn(text=WANDER[min(context.turn, len(WANDER) - 1)])

    def end_episode(self, episode_id: str) -> None:
        return None


def _pixels(path: Path) -> str:
    return hashlib.sha256(np.ascontiguousarray(load_image(path)).tobytes()).hexdigest()[:16]


def fingerprint(out: Path) -> dict[str, Any]:
    """What a batch folder says, without what varies from run to run (timings, provenance)."""
    records = sorted(read_finished(out / TRAJECTORIES), key=lambda r: r["sample_id"])
    for record in records:
        trajectory = record["trajectory"]
        del trajectory["seconds"]
        for turn in trajectory["turns"]:
            del turn["policy_s"], turn["tool_s"]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("provenance", "episodes_per_s"):
        del metrics[key]
    pictures = {str(path.relative_to(out)): _pixels(path) for path in sorted((out / "episodes").rglob("*.png"))}
    return {"records": records, "metrics": metrics, "pictures": pictures}


def run_reference_batches(folder: Path) -> dict[str, Any]:
    samples = load_samples(DATA)
    agents = {"oracle": Agent(OraclePolicy(box_jitter=0.3, skip_inspect=0.3), build_segmenter("box"),
                              EpisodeConfig(seed=11)),
              "wander": Agent(Wanderer(), build_segmenter("box"), EpisodeConfig(max_turns=len(WANDER)))}
    result = {}
    for name, agent in agents.items():
        asyncio.run(run_batch(agent, samples, folder / name, concurrency=3, progress=False))
        result[name] = fingerprint(folder / name)
    return result


def test_a_seeded_batch_gives_the_reference_trajectories_metrics_and_pictures(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    result = json.loads(json.dumps(run_reference_batches(tmp_path)))  # as the reference file holds it
    for name, expected in reference.items():
        got = result[name]
        assert got["metrics"] == expected["metrics"], name
        assert got["records"] == expected["records"], name
        assert got["pictures"] == expected["pictures"], name
    # The batches do what they are for: pictures of every kind of turn, results that are not all alike.
    tools = set().union(*(r["metrics"]["tool_calls"] for r in result.values()))
    assert {"zoom_in", "zoom_out", "segment", "inspect_mask", "submit"} <= tools
    assert len(result["oracle"]["pictures"]) > 6 * 5 and 0 < result["oracle"]["metrics"]["giou"] < 1


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        REFERENCE.write_text(json.dumps(run_reference_batches(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}", file=sys.stderr)
