"""``segloop batch``: agent episodes over a dataset, at most N in flight, scored and resumable.

Each finished episode is one line of ``DIR/trajectories.jsonl``, appended, flushed and fsynced at once,
so a run killed at any moment loses at most the episodes in flight; re-running into the same folder
skips every sample already there. A line torn by the kill (no newline, or not JSON) is cut off first.
``DIR/metrics.json`` and ``DIR/report.html`` are rewritten from the whole file at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segloop.agent.stats import episode_stats
from segloop.tools.masks import Metrics, SampleScore, score_sample

if TYPE_CHECKING:
    from segloop.agent.episode import Agent
    from segloop.agent.sample import Sample

TRAJECTORIES = "trajectories.jsonl"


class BatchError(ValueError):
    """A batch that cannot run or resume (bad folder contents, bad options)."""


def read_finished(path: Path) -> list[dict[str, Any]]:
    """The finished episodes in ``path``; a torn last line is cut from the file. A broken line before
    the last one is not a kill's trace: that is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[dict[str, Any]] = []
    good_bytes = 0
    for index, line in enumerate(lines):
        last = index == len(lines) - 1
        if not line.strip():
            if not last:
                good_bytes += len(line) + 1
            continue
        try:
            record = json.loads(line)
            if last or not isinstance(record, dict) or "sample_id" not in record:
                raise ValueError("torn")  # a complete line always ends with a newline
        except ValueError:
            if not last:
                raise BatchError(f"{path}: line {index + 1} is not a finished episode record; "
                                 "this folder holds something else, choose another --out") from None
            break
        records.append(record)
        good_bytes += len(line) + 1
    if good_bytes < len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return records


class _Writer:
    """Appends one JSON line per episode. Each line is handed to the OS (write and flush) before the next
    is recorded, so killing the process never loses a finished episode. The fsync that guards against a
    crash of the machine runs in a worker thread, one at a time, each covering every line written before it
    began: with many episodes in flight one fsync covers several lines and the event loop never waits on
    the disk (a synchronous fsync per line cost more than a whole episode's graph)."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("a", encoding="utf-8")
        self._written = 0
        self._synced = 0
        self._syncing: asyncio.Task[None] | None = None

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        self._written += 1
        if self._syncing is None or self._syncing.done():
            if self._syncing is not None:
                self._syncing.result()  # a failed fsync (disk full, I/O error) stops the batch here
            self._syncing = asyncio.ensure_future(self._sync())

    async def _sync(self) -> None:
        while self._synced < self._written:
            target = self._written
            await asyncio.to_thread(os.fsync, self._handle.fileno())
            self._synced = target

    async def close(self) -> None:
        """Wait for the last fsync, then close the file."""
        try:
            if self._syncing is not None:
                await self._syncing
        finally:
            self._handle.close()


async def run_batch(agent: Agent, samples: list[Sample], out: Path, concurrency: int = 4,
                    progress: bool = True, save_overlays: bool = True) -> dict[str, Any]:
    """Run every sample not yet in ``out``; write lines, per-episode folders, metrics and the report.
    Returns the metrics."""
    from tqdm import tqdm

    from segloop.agent.episode import episode_folder, save_episode

    if concurrency < 1:
        raise BatchError("--concurrency must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    finished = read_finished(out / TRAJECTORIES)
    done = {r["sample_id"] for r in finished}
    todo = [s for s in samples if s.id not in done]
    writer = _Writer(out / TRAJECTORIES)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), disable=not progress, unit="ep",
               desc="episodes", file=sys.stderr)
    queue = iter(todo)
    started = time.perf_counter()

    async def one(sample: Any) -> dict[str, Any]:
        try:
            image, truth, ignore = await asyncio.to_thread(_load, sample)
        except (OSError, ValueError) as exc:
            return {"sample_id": sample.id, "kind": sample.kind, "error": f"{type(exc).__name__}: {exc}"[:300]}
        result = await agent.run(image, sample.query, episode_id=sample.id,
                                 ground_truth=truth, ignore=ignore)
        score = score_sample(sample.id, result.mask, truth, ignore, kind=sample.kind)
        if save_overlays:
            await asyncio.to_thread(save_episode, result, out / "episodes" / episode_folder(sample.id))
        return {"sample_id": sample.id, "kind": sample.kind, "iou": score.iou, "intersection": score.intersection,
                "union": score.union, "size_class": score.size_class,
                "trajectory": result.trajectory.model_dump(mode="json")}

    async def worker() -> None:
        for sample in queue:  # one shared iterator: each sample is taken by exactly one worker
            record = await one(sample)
            writer.write(record)
            finished.append(record)
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(todo), 1)))))
    finally:
        await writer.close()
        bar.close()
    elapsed = time.perf_counter() - started
    metrics = summarise(finished, ran=len(todo), seconds=elapsed)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    from segloop.agent.report import write_report

    write_report(out, finished, metrics)
    return metrics


def _load(sample: Any) -> tuple[Any, Any, Any]:
    """The sample's image, mask and ignore region, in one worker-thread hop rather than three."""
    image = sample.load_image()
    shape = image.shape[:2]
    return image, sample.load_mask(shape), sample.load_ignore(shape)


def summarise(records: list[dict[str, Any]], ran: int = 0, seconds: float = 0.0) -> dict[str, Any]:
    """Metrics over finished episode records: gIoU/cIoU overall, by kind and size class, per sample; what
    the episodes did (``agent.stats``); throughput of this run."""
    from segloop.agent.episode import Trajectory

    metrics = Metrics()
    scored = [r for r in records if "error" not in r]
    for r in scored:
        metrics.add(SampleScore(id=r["sample_id"], iou=r["iou"], intersection=r["intersection"], union=r["union"],
                                kind=r["kind"], size_class=r["size_class"]))
    trajectories = [Trajectory.model_validate(r["trajectory"]) for r in scored]
    return {
        **metrics.summary(),
        **episode_stats(trajectories),
        "policy_errors": sum(t.policy_error is not None for t in trajectories),
        "failed_samples": {r["sample_id"]: r["error"] for r in records if "error" in r},
        "episodes_run": ran,
        "episodes_per_s": ran / seconds if seconds > 0 else 0.0,
    }
