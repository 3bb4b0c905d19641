"""``segloop batch``: agent episodes over a dataset, at most N in flight, scored and resumable.

Each episode is one line of ``DIR/trajectories.jsonl``, appended, flushed and fsynced at once, so a run
killed at any moment loses at most the episodes in flight. A line torn by the kill (no newline, or not JSON)
is cut off first. Reading keeps the last line of each sample id.

An episode that could not be run to its end (the policy failed: a server down, retries exhausted; the
segmenter crashed; the image could not be used) is a *failed* record, never an answer: it carries a
``failure`` (kind and reason), counts as IoU 0 in the metrics and separately as ``failed``, and re-running
into the same folder runs it again (with every sample not yet there); answered samples are skipped.

``DIR/run.json`` records what made the results (the configuration: policy, model, the options that change
results, segmenter, episode settings, data) and every run into the folder (segloop version, git commit, host,
start and end, and the policy's effective settings, how the server was reached included). A batch with another
configuration refuses the folder; how a server is reached (its URL, timeouts, retries) may change between runs.
One process at a time writes to the folder (``DIR/.segloop.lock``). ``DIR/metrics.json`` and ``DIR/report.html``
are rewritten from the whole file at the end, with that record; the server totals count every request sent
into the folder, the earlier attempts of episodes run again included.

During an outage (``OUTAGE_EPISODES`` episodes in a row failed on requests that met no server able to answer)
the batch starts no more episodes: the ones not run are run by the same command, as failed ones are.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segloop.agent.records import EpisodeResult, Trajectory, episode_folder, save_episode
from segloop.evaluation.provenance import differences, environment, now
from segloop.evaluation.stats import episode_stats, server_totals
from segloop.tools.files import WriteError, write_record
from segloop.tools.images import save_image
from segloop.tools.masks import Metrics, SampleScore, score_sample
from segloop.tools.overlay import result_picture
from segloop.tools.redaction import redact, redact_value

if TYPE_CHECKING:
    from segloop.agent.episode import Agent
    from segloop.data.sample import Sample

TRAJECTORIES = "trajectories.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = ".segloop.lock"
# Episodes in a row that failed on an outage (no connection, timeouts, 429/502/503/504 to every retry) after
# which no more are started: each one would spend its retries against the same outage.
OUTAGE_EPISODES = 5


class BatchError(ValueError):
    """A batch that cannot run or resume (bad folder contents, another configuration's results, a folder
    another process writes to, bad options)."""


def read_finished(path: Path) -> list[dict[str, Any]]:
    """The episode records in ``path``, one per sample id (the last line of each: a failed episode run
    again, or a line written twice, counts once); a torn last line is cut from the file. A broken line
    before the last one is not a kill's trace: that is an error."""
    return latest(read_records(path))


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each sample id, in the order the lines were written."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        last.pop(record["sample_id"], None)
        last[record["sample_id"]] = record
    return list(last.values())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every episode record in ``path``, in the order written (a sample run again has several); a torn last
    line is cut from the file, a broken line before it is an error (see ``read_finished``)."""
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


def failed(record: dict[str, Any]) -> bool:
    """Whether a record is a failed episode (not an answer)."""
    return record.get("failure") is not None


class FolderLock:
    """One writer per batch folder: an exclusive ``flock`` on ``DIR/.segloop.lock`` (which holds the
    writer's pid), released when the process ends however it ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handle: Any = None

    def __enter__(self) -> FolderLock:
        handle = (self.folder / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise BatchError(f"another segloop batch (pid {holder}) is writing to {self.folder}; wait for it to "
                             "end or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.truncate(0)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def _read_run(out: Path, configuration: dict[str, Any], has_records: bool) -> dict[str, Any]:
    """``run.json`` of the folder, or a new one; refuses a folder whose results another configuration made."""
    path = out / RUN_FILE
    if not path.exists():
        if has_records:
            raise BatchError(f"{out} holds results with no record of what made them ({RUN_FILE} is missing: an "
                             "older segloop, or another tool); choose another --out")
        return {"configuration": configuration, "runs": []}
    try:
        run = json.loads(path.read_text())
        recorded = run["configuration"]
    except (ValueError, KeyError, TypeError):
        raise BatchError(f"{path} is not a segloop batch record; choose another --out") from None
    configuration = redact_value(configuration)  # as it was recorded
    if recorded != configuration:
        changed = "; ".join(differences(recorded, configuration))
        raise BatchError(f"{out} holds results of a different configuration ({changed}); choose another --out, "
                         "or run the same configuration to resume")
    return run


def _write_json(path: Path, value: Any) -> None:
    """Write whole or not at all, redacted (``tools.files.write_record``)."""
    write_record(path, json.dumps(value, indent=1))


class _Writer:
    """Appends one JSON line per episode. Each line is handed to the OS (write and flush) before the next
    is recorded, so killing the process never loses a finished episode. The fsync that guards against a
    crash of the machine runs in a worker thread, one at a time, each covering every line written before it
    began: with many episodes in flight one fsync covers several lines and the event loop never waits on
    the disk (a synchronous fsync per line cost more than a whole episode's graph)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("a", encoding="utf-8")
        self._written = 0
        self._synced = 0
        self._syncing: asyncio.Task[None] | None = None

    def write(self, record: dict[str, Any]) -> None:
        try:  # a line cut short by a full disk is cut off when the file is read again
            self._handle.write(redact(json.dumps(record)) + "\n")
            self._handle.flush()
        except OSError as exc:
            raise WriteError.naming(self.path, exc) from None
        self._written += 1
        if self._syncing is None or self._syncing.done():
            if self._syncing is not None:
                self._syncing.result()  # a failed fsync (disk full, I/O error) stops the batch here
            self._syncing = asyncio.ensure_future(self._sync())

    async def _sync(self) -> None:
        while self._synced < self._written:
            target = self._written
            try:
                await asyncio.to_thread(os.fsync, self._handle.fileno())
            except OSError as exc:
                raise WriteError.naming(self.path, exc) from None
            self._synced = target

    async def close(self) -> None:
        """Wait for the last fsync, then close the file."""
        try:
            if self._syncing is not None:
                await self._syncing
        finally:
            try:  # what a failed write left in the buffer fails again here
                self._handle.close()
            except OSError as exc:
                raise WriteError.naming(self.path, exc) from None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_batch(agent: Agent, samples: list[Sample], out: Path, concurrency: int = 4,
                    progress: bool = True, save_overlays: bool = True, *,
                    configuration: dict[str, Any] | None = None, policy_settings: dict[str, Any] | None = None,
                    log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run every sample of ``samples`` not yet answered in ``out`` (new ones and failed ones); write lines,
    per-episode folders, ``run.json``, metrics and the report. Returns the metrics (``metrics["provenance"]``
    says what made them).

    ``configuration`` is what decides the episodes (the CLI gives the ``AgentSpec`` and the data spec);
    resuming a folder made by another configuration raises ``BatchError``. ``policy_settings`` are the
    built policy's effective settings (sampling, server), recorded with each run but not compared.
    ``metrics["stopped_early"]`` says why the batch stopped before running every sample (an outage), if it did."""
    if concurrency < 1:
        raise BatchError("--concurrency must be at least 1")
    if configuration is None:
        configuration = {"agent": {"policy": agent.policy.name, "episode": agent.config.model_dump(mode="json")}}
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out):
        return await _run_locked(agent, samples, out, concurrency, progress, save_overlays, configuration,
                                 policy_settings or {}, log)


async def _run_locked(agent: Agent, samples: list[Sample], out: Path, concurrency: int, progress: bool,
                      save_overlays: bool, configuration: dict[str, Any], policy_settings: dict[str, Any],
                      log: Callable[[str], None]) -> dict[str, Any]:
    from tqdm import tqdm

    # Every record written into the folder: the server totals count the attempts of episodes since run again.
    history = read_records(out / TRAJECTORIES)
    finished = {r["sample_id"]: r for r in latest(history)}
    run = _read_run(out, configuration, bool(finished))
    answered = {i for i, r in finished.items() if not failed(r)}
    retry = [s for s in samples if s.id in finished and s.id not in answered]
    todo = [s for s in samples if s.id not in answered]
    if finished:
        parts = [f"resuming {out}: {len(answered)} episodes already answered"]
        if retry:
            parts.append(f"{len(retry)} failed earlier and run again")
        parts.append(f"{len(todo) - len(retry)} new")
        log(", ".join(parts))
    this_run = {"started": now(), **environment(), "pid": os.getpid(), "episodes_run": 0, "ended": None,
                "policy_settings": policy_settings}
    run["runs"].append(this_run)
    _write_json(out / RUN_FILE, run)

    writer = _Writer(out / TRAJECTORIES)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), disable=not progress, unit="ep",
               desc="episodes", file=sys.stderr)
    queue = iter(todo)
    started = time.perf_counter()
    ran = outage = 0
    stopped_early: str | None = None

    async def one(sample: Sample) -> dict[str, Any]:
        base = {"sample_id": sample.id, "kind": sample.kind, "query": sample.query}
        try:
            item = await asyncio.to_thread(sample.load)
            image, truth, ignore = item.image, item.mask, item.ignore
            result = await agent.run(image, sample.query, episode_id=sample.id, ground_truth=truth, ignore=ignore)
        except (OSError, ValueError) as exc:  # ImageError is a ValueError; so is a mask of the wrong size
            reason = f"{type(exc).__name__}: {exc}"[:300]
            return {**base, "iou": 0.0, "intersection": 0, "union": 0, "size_class": "unknown",
                    "failure": {"kind": "image", "reason": reason}}
        t = result.trajectory
        score = score_sample(sample.id, result.mask, truth, ignore, kind=sample.kind)
        if save_overlays:
            folder = out / "episodes" / episode_folder(sample.id)
            await asyncio.to_thread(_save_pictures, result, image, truth, folder)
        record = {**base, "iou": score.iou, "intersection": score.intersection, "union": score.union,
                  "size_class": score.size_class, "empty": t.empty, "no_target": t.no_target, "refused": t.refused,
                  "trajectory": t.model_dump(mode="json")}
        if t.failure is not None:  # not an answer: IoU 0, and its target's pixels are all missed in cIoU
            missed = score_sample(sample.id, np.zeros_like(truth), truth, ignore, kind=sample.kind)
            record.update(iou=0.0, intersection=0, union=missed.union, empty=False,
                          failure=t.failure.model_dump(mode="json"))
        return record

    async def worker() -> None:
        nonlocal ran, outage, stopped_early
        for sample in queue:  # one shared iterator: each sample is taken by exactly one worker
            if stopped_early:
                break
            record = await one(sample)
            writer.write(record)
            history.append(record)
            finished[record["sample_id"]] = record
            ran += 1
            bar.update(1)
            outage = outage + 1 if (record.get("failure") or {}).get("policy_info", {}).get("unreachable") else 0
            if outage >= OUTAGE_EPISODES and not stopped_early:
                stopped_early = (f"{outage} episodes in a row failed reaching the server "
                                 f"({record['failure']['reason'][:200]})")

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(todo), 1)))))
    finally:
        await writer.close()
        bar.close()
        this_run.update(ended=now(), episodes_run=ran)
        _write_json(out / RUN_FILE, run)
    elapsed = time.perf_counter() - started
    ids = {s.id for s in samples}
    # The folder's records of this dataset, in its order; others (from a larger --limit earlier) stay in the file.
    order = {s.id: i for i, s in enumerate(samples)}
    records = sorted((r for i, r in finished.items() if i in ids), key=lambda r: order[r["sample_id"]])
    metrics = summarise(records, ran=ran, seconds=elapsed,
                        history=[r for r in history if r["sample_id"] in ids])
    if stopped_early:
        metrics["stopped_early"] = stopped_early
        metrics["not_run"] = len(samples) - len(records)
    metrics["provenance"] = provenance_of(run, policy_settings)
    _write_json(out / "metrics.json", metrics)
    from segloop.evaluation.report import write_report

    write_report(out, records, metrics)
    return metrics


def provenance_of(run: dict[str, Any], policy_settings: dict[str, Any]) -> dict[str, Any]:
    """What made a folder's results: its configuration, the policy's effective settings, and its runs (the
    latest one's segloop version, commit and host; the first start and the last end)."""
    runs = run["runs"]
    latest = runs[-1] if runs else {}
    return {"configuration": run["configuration"], "policy_settings": policy_settings,
            "segloop": latest.get("segloop"), "git_commit": latest.get("git_commit"), "host": latest.get("host"),
            "started": runs[0]["started"] if runs else None, "ended": latest.get("ended"), "runs": runs}


# Longest side of the report's picture of an episode's input (the image with its truth outlined).
REPORT_SIDE = 768


def _save_pictures(result: EpisodeResult, image: np.ndarray, truth: np.ndarray, folder: Path) -> None:
    """The episode's files (``save_episode``: its record, views, mask and ``final.png``, the mask over the image
    with the truth outlined) plus, for the report, ``input.png`` (the image with the truth outlined), both with
    a zoomed inset around a small target."""
    save_episode(result, folder, image, truth)
    save_image(result_picture(image, None, truth, max_side=REPORT_SIDE), folder / "input.png")


def summarise(records: list[dict[str, Any]], ran: int = 0, seconds: float = 0.0,
              history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metrics over episode records (one per sample): gIoU/cIoU overall, by kind and size class, per sample,
    with every failed episode counted as IoU 0; how many answers were masks, EMPTY masks (no "no_target"),
    "no such object" and refusals (unknown words: no mask, IoU 0 unless there is no target); how many episodes
    failed and why; what the answered episodes did (``evaluation.stats``); the server totals over ``history``
    (every record written, earlier attempts of episodes run again included; default ``records``); throughput of
    this run."""
    metrics = Metrics()
    for r in records:
        metrics.add(SampleScore(id=r["sample_id"], iou=r["iou"], intersection=r["intersection"], union=r["union"],
                                kind=r["kind"], size_class=r["size_class"]))
    answers = [r for r in records if not failed(r)]
    broken = [r for r in records if failed(r)]
    trajectories = [Trajectory.model_validate(r["trajectory"]) for r in answers]
    unknown = Counter(w for t in trajectories for w in t.unknown_words)
    sent = [Trajectory.model_validate(r["trajectory"]) for r in (records if history is None else history)
            if r.get("trajectory")]
    return {
        **metrics.summary(),
        "answered": len(answers),
        "masks": sum(not r.get("empty") and not r.get("no_target") and not r.get("refused") for r in answers),
        "refused": sum(bool(r.get("refused")) for r in answers),
        "empty": sum(bool(r.get("empty")) for r in answers),
        "no_target_answers": sum(bool(r.get("no_target")) for r in answers),
        "failed": len(broken),
        "failed_by_kind": dict(sorted(Counter(r["failure"]["kind"] for r in broken).items())),
        "failures": {r["sample_id"]: f"{r['failure']['kind']}: {r['failure']['reason']}" for r in broken},
        **episode_stats(trajectories),
        **server_totals(sent),
        "unknown_word_queries": sum(bool(t.unknown_words) for t in trajectories),
        "unknown_words": dict(unknown.most_common(20)),
        "episodes_run": ran,
        "episodes_per_s": ran / seconds if seconds > 0 else 0.0,
    }
