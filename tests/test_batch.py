"""``segloop batch``: scored episodes, the report, resume after a torn line, a SIGKILL or a Ctrl-C; failed
episodes (not results, run again on resume), EMPTY answers, what made the results, one writer per folder."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.openai_server import OpenAIServer, scripted_turns
from support.policies import SwitchedOracle

from segloop.agent.episode import Agent
from segloop.agent.records import episode_folder
from segloop.cli import main as cli
from segloop.data.specs import load_samples
from segloop.evaluation.batch import BatchError, FolderLock, read_finished, run_batch
from segloop.tools.segmenters import build_segmenter

ROOT = Path(__file__).resolve().parents[1]


def write_dataset(folder: Path, n: int, broken: bool = True, query: str = "the red disc") -> Path:
    """``n`` drawn scenes (one in five "no such object"), plus one undecodable image when ``broken``."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        image = rng.integers(0, 50, (150, 200, 3)).astype(np.uint8)
        mask = np.zeros((150, 200), np.uint8)
        if i % 5 != 4:
            x, y, r = int(rng.integers(30, 170)), int(rng.integers(30, 120)), int(rng.integers(6, 25))
            cv2.circle(image, (x, y), r, (230, 50, 40), -1)
            cv2.circle(mask, (x, y), r, 255, -1)
        cv2.imwrite(str(folder / "images" / f"{i}.png"), image[..., ::-1])
        line = {"id": f"s/{i}", "image": f"images/{i}.png", "query": query,
                "kind": "target" if mask.any() else "no_target", "mask": None}
        if mask.any():
            cv2.imwrite(str(folder / "masks" / f"{i}.png"), mask)
            line["mask"] = f"masks/{i}.png"
        lines.append(line)
    if broken:
        (folder / "images" / "bad.png").write_bytes(b"not a png")
        lines.append({"id": "bad", "image": "images/bad.png", "query": "x", "mask": None})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def batch(manifest: Path, out: Path, *extra: str) -> int:
    return cli(["batch", "--data", str(manifest), "--policy", "oracle", "--out", str(out), "--quiet",
                "--max-side", "224", *extra])


def test_batch_scores_saves_and_reports(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", 5)
    out = tmp_path / "run"
    assert batch(manifest, out, "--concurrency", "3") == 1  # the unreadable image is a failed episode
    records = read_finished(out / "trajectories.jsonl")
    assert sorted(r["sample_id"] for r in records) == ["bad", "s/0", "s/1", "s/2", "s/3", "s/4"]
    bad = next(r for r in records if r["sample_id"] == "bad")
    assert bad["failure"]["kind"] == "image" and "ImageError" in bad["failure"]["reason"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["answered"] == 5 and metrics["failed"] == 1
    assert set(metrics["failures"]) == {"bad"} and metrics["per_sample"]["bad"] == 0.0  # counted as IoU 0
    assert metrics["giou"] == pytest.approx(sum(metrics["per_sample"].values()) / 6)
    assert metrics["by_kind"]["no_target"]["giou"] == 1.0
    assert metrics["masks"] == 4 and metrics["no_target_answers"] == 1 and metrics["empty"] == 0
    assert metrics["turns"] >= 1 and metrics["tool_calls"]["submit"] == 5
    assert metrics["valid_rate"] == 1 and metrics["episodes_per_s"] > 0
    report = (out / "report.html").read_text()
    links = [part.split("'")[0] for part in report.split("src='")[1:]]
    assert links and all((out / link).is_file() for link in links)
    assert "s/0" in report and "could not run" in report
    # Results first; what made them folded below; a count is an alarm only when it is not zero (item 9).
    assert report.index("<h2>Results</h2>") < report.index("What made these results") < report.index("Episodes (")
    assert "<details class='prov'><summary><b>What made these results</b> · oracle, grabcut, " in report
    assert "<span class='bad'>1 FAILED</span>" in report and "0 EMPTY masks" in report
    assert "<span class='bad'>0 EMPTY masks</span>" not in report
    printed = capsys.readouterr().out
    assert "gIoU" in printed and "FAILED: 1 of 6 episodes (image 1)" in printed
    assert "  bad: image: ImageError" in printed


def test_an_empty_answer_is_flagged_and_counted_apart_from_no_such_object(tmp_path, capsys):
    """Item 1: EMPTY masks (submitted without "no_target") are counted, flagged in the record and the report."""
    manifest = write_dataset(tmp_path / "data", 5, broken=False, query="nothing here")
    samples = load_samples(str(manifest))
    policy = SwitchedOracle()
    out = tmp_path / "run"
    metrics = asyncio.run(run_batch(Agent(policy, build_segmenter("box")), samples, out, progress=False))
    records = read_finished(out / "trajectories.jsonl")
    assert all(r["empty"] and not r["no_target"] and r["trajectory"]["empty"] for r in records)
    assert metrics["empty"] == 5 and metrics["masks"] == 0 and metrics["no_target_answers"] == 0
    assert metrics["failed"] == 0
    report = (out / "report.html").read_text()
    assert report.count("<span class='flag'>EMPTY</span>") == 5 and "submitted an EMPTY mask" in report
    from segloop.cli.batch import summary_text

    assert "0 masks, 5 EMPTY masks (submitted without 'no such object'), 0 'no such object'" in (
        summary_text(metrics, out))


def test_failed_episodes_are_not_results_and_resuming_runs_them_again(tmp_path):
    """Item 2: a policy outage makes failed records (IoU 0, counted apart); resuming runs exactly those,
    and the metrics then equal those of a run that never failed."""
    manifest = write_dataset(tmp_path / "data", 6, broken=False)
    samples = load_samples(str(manifest))
    segmenter = build_segmenter("box")
    policy = SwitchedOracle()
    out = tmp_path / "run"
    asyncio.run(run_batch(Agent(policy, segmenter), samples[:2], out, progress=False))  # two answered first
    policy.down = True
    outage = asyncio.run(run_batch(Agent(policy, segmenter), samples, out, progress=False))
    assert outage["failed"] == 4 and outage["answered"] == 2 and outage["failed_by_kind"] == {"policy": 4}
    assert all("HTTP 503" in reason for reason in outage["failures"].values())
    assert all(outage["per_sample"][s.id] == 0.0 for s in samples[2:])  # failed counts as IoU 0, not as empty
    failed = [r for r in read_finished(out / "trajectories.jsonl") if r.get("failure")]
    assert sorted(r["sample_id"] for r in failed) == sorted(s.id for s in samples[2:])
    assert all(r["failure"]["kind"] == "policy" and "iou" in r for r in failed)

    policy.down = False
    calls = policy.calls
    log: list[str] = []
    resumed = asyncio.run(run_batch(Agent(policy, segmenter), samples, out, progress=False, log=log.append))
    assert log == [f"resuming {out}: 2 episodes already answered, 4 failed earlier and run again, 0 new"]
    assert resumed["episodes_run"] == 4 and resumed["failed"] == 0 and policy.calls > calls
    clean = asyncio.run(run_batch(Agent(SwitchedOracle(), segmenter), samples, tmp_path / "clean", progress=False))
    keys = ("n", "giou", "ciou", "by_kind", "by_size", "per_sample", "answered", "masks", "empty", "failed")
    assert {k: resumed[k] for k in keys} == {k: clean[k] for k in keys}
    assert len(read_finished(out / "trajectories.jsonl")) == 6
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 2 + 4 + 4  # history kept, latest counts


def test_a_folder_an_older_segloop_wrote_with_policy_error_resumes(tmp_path):
    """Trajectories written before ``failure`` replaced ``Trajectory.policy_error`` carry both: they still resume."""
    samples = load_samples(str(write_dataset(tmp_path / "data", 3, broken=False)))
    segmenter = build_segmenter("box")
    policy = SwitchedOracle()
    out = tmp_path / "run"
    asyncio.run(run_batch(Agent(policy, segmenter), samples[:1], out, progress=False))
    policy.down = True
    asyncio.run(run_batch(Agent(policy, segmenter), samples, out, progress=False))
    path = out / "trajectories.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        line["trajectory"]["policy_error"] = (line.get("failure") or {}).get("reason")
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    policy.down = False
    resumed = asyncio.run(run_batch(Agent(policy, segmenter), samples, out, progress=False))
    assert resumed["episodes_run"] == 2 and resumed["failed"] == 0 and resumed["answered"] == 3
    assert resumed["giou"] > 0.5


def test_a_batch_where_every_episode_failed_prints_no_table_and_exits_non_zero(tmp_path, capsys):
    """Item 2: no normal-looking table when there are no results."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    lines = [{"id": f"x{i}", "image": "a.png", "query": "the red disc", "mask": None} for i in range(3)]
    (folder / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert batch(folder / "m.jsonl", tmp_path / "run") == 1
    printed = capsys.readouterr().out
    assert "ALL 3 EPISODES FAILED" in printed and "gIoU" not in printed
    assert "x0: image: ImageError" in printed
    assert "Every episode failed" in (tmp_path / "run" / "report.html").read_text()


def test_results_record_what_made_them_and_another_configuration_is_refused(tmp_path, capsys, monkeypatch):
    """Item 3 (provenance) and item 6 (the report's header, pictures and flags)."""
    manifest = write_dataset(tmp_path / "data", 3, broken=False)
    out = tmp_path / "run"
    assert batch(manifest, out, "--max-turns", "6", "--seed", "3") == 0
    printed = capsys.readouterr().out
    assert ("made by: policy=oracle, model=(default), policy_options.max_side=224, segmenter=grabcut, "
            "segmenter_model=(default), episode.max_turns=6, episode.zoom_min_side=28") in printed
    assert "policy settings: name=oracle, frame=pixels, max_side=224" in printed
    assert re.search(r"segloop \S+ \((\w+|no git checkout)", printed)
    provenance = json.loads((out / "metrics.json").read_text())["provenance"]
    agent = provenance["configuration"]["agent"]
    assert agent["policy"] == "oracle" and agent["segmenter"] == "grabcut" and agent["model"] is None
    assert agent["episode"] == {"max_turns": 6, "zoom_min_side": 28, "max_zoom": 16.0, "seed": 3,
                                "guess_unknown_words": False}
    assert provenance["configuration"]["data"] == str(manifest.resolve())
    assert provenance["policy_settings"]["name"] == "oracle" and provenance["policy_settings"]["max_side"] == 224
    assert provenance["segloop"] and provenance["host"] and "git_commit" in provenance
    assert provenance["started"] <= provenance["ended"] and len(provenance["runs"]) == 1
    report = (out / "report.html").read_text()
    assert "What made these results" in report and "configuration.agent.episode.max_turns" in report
    for record in read_finished(out / "trajectories.jsonl"):
        folder = out / "episodes" / episode_folder(record["sample_id"])
        assert (folder / "input.png").is_file() and (folder / "final.png").is_file()
    assert report.count("input.png") == 3 and report.count("final.png") == 3

    # Another configuration (turn budget) into the same folder is refused, naming what differs.
    assert batch(manifest, out, "--max-turns", "5", "--seed", "3") == 2
    err = capsys.readouterr().err.strip()
    assert "holds results of a different configuration (agent.episode.max_turns: 6 -> 5)" in err and "\n" not in err
    assert cli(["batch", "--data", str(manifest), "--policy", "single-shot", "--out", str(out), "--quiet",
                "--max-side", "224", "--max-turns", "6", "--seed", "3"]) == 2
    assert "agent.policy: 'oracle' -> 'single-shot'" in capsys.readouterr().err
    # The same configuration, its data named from another folder, resumes (nothing left to do).
    monkeypatch.chdir(tmp_path)
    assert batch(manifest.relative_to(tmp_path), out, "--max-turns", "6", "--seed", "3") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["episodes_run"] == 0 and len(metrics["provenance"]["runs"]) == 2


def test_a_folder_without_a_record_of_what_made_it_is_refused(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", 1, broken=False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "trajectories.jsonl").write_text(json.dumps({"sample_id": "s/0", "iou": 1.0}) + "\n")
    assert batch(manifest, out) == 2
    assert "no record of what made them" in capsys.readouterr().err


def test_one_writer_per_folder_and_reading_keeps_one_record_per_sample(tmp_path, capsys):
    """Item 4: a second writer is refused with the holder's pid; duplicate lines count once."""
    manifest = write_dataset(tmp_path / "data", 3, broken=False)
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out):
        assert batch(manifest, out) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"segloop batch: another segloop batch (pid {os.getpid()}) is writing to {out}; wait for it to "
                   "end or choose another --out")
    assert not (out / "trajectories.jsonl").exists()
    assert batch(manifest, out) == 0  # the lock is gone with its holder
    path = out / "trajectories.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines + lines[:1]) + "\n")  # two writers' interleaved copies
    records = read_finished(path)
    assert sorted(r["sample_id"] for r in records) == ["s/0", "s/1", "s/2"]
    assert batch(manifest, out) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


def test_resume_skips_finished_and_drops_a_torn_line(tmp_path):
    manifest = write_dataset(tmp_path / "data", 4, broken=False)
    out = tmp_path / "run"
    assert batch(manifest, out, "--limit", "2") == 0
    assert len(read_finished(out / "trajectories.jsonl")) == 2
    path = out / "trajectories.jsonl"
    first_runs = path.read_text().splitlines()
    # A kill mid-write leaves half a line: it is cut off and that sample runs again.
    path.write_text(first_runs[0] + "\n" + first_runs[1][: len(first_runs[1]) // 2])
    assert batch(manifest, out) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[0] == first_runs[0]
    assert sorted(json.loads(x)["sample_id"] for x in lines) == ["s/0", "s/1", "s/2", "s/3"]
    assert json.loads((out / "metrics.json").read_text())["episodes_run"] == 3
    assert batch(manifest, out) == 0  # nothing left to do
    assert path.read_text().splitlines() == lines
    assert json.loads((out / "metrics.json").read_text())["episodes_run"] == 0


def test_a_broken_line_before_the_end_is_refused(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", 2, broken=False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "trajectories.jsonl").write_text('garbage\n{"sample_id": "s/0"}\n')
    with pytest.raises(BatchError, match="line 1"):
        read_finished(out / "trajectories.jsonl")
    assert batch(manifest, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segloop batch:") and "\n" not in err


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", 1, broken=False)
    for extra in (["--concurrency", "0"], ["--limit", "0"], ["--max-turns", "0"]):
        assert batch(manifest, tmp_path / "o", *extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("segloop batch:") and "\n" not in err
    # An unknown policy is refused by the parser, which lists the policies this command accepts.
    with pytest.raises(SystemExit) as exited:
        batch(manifest, tmp_path / "o", "--policy", "nope")
    assert exited.value.code == 2 and "invalid choice: 'nope' (choose from 'compact', " in capsys.readouterr().err
    assert cli(["batch", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_to_completion(tmp_path):
    manifest = write_dataset(tmp_path / "data", 40, broken=False)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segloop", "batch", "--data", str(manifest), "--policy", "oracle",
               "--out", str(out), "--quiet", "--max-side", "224", "--concurrency", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = out / "trajectories.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(read_finished(path))
    assert 5 <= finished_before < 40, "the run was not killed mid-way"
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    records = read_finished(path)
    assert sorted(r["sample_id"] for r in records) == sorted(f"s/{i}" for i in range(40))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["episodes_run"] == 40 - finished_before


@pytest.mark.slow
def test_ctrl_c_says_what_is_saved_and_how_to_resume_and_a_second_writer_is_refused(tmp_path):
    """Items 5 and 4, with real processes: a second batch on the folder exits naming the first's pid; Ctrl-C
    prints how many episodes are saved and the exact command that resumes; that command finishes the run."""
    n = 150
    manifest = write_dataset(tmp_path / "data", n, broken=False)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segloop", "batch", "--data", str(manifest), "--policy", "oracle",
               "--out", str(out), "--quiet", "--max-side", "224", "--concurrency", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A job started in the background of a non-interactive shell (as CI may run the suite) inherits SIGINT
    # ignored; the batch is started as a terminal would start it, Ctrl-C live.
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path = out / "trajectories.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < 5):
        time.sleep(0.05)
    # Paused, the first writer holds the folder while the second starts (however fast its episodes are), and
    # the Ctrl-C sent meanwhile is delivered the moment it goes on: mid-way, never after its last episode.
    first.send_signal(signal.SIGSTOP)
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGINT)
    first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"another segloop batch (pid {first.pid}) is writing to {out}" in second.stderr
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    saved = len(read_finished(path))
    assert 5 <= saved < n, "the run was not interrupted mid-way"
    match = re.search(r"interrupted; (\d+) episodes saved in (\S+)\. Resume with: (.+)$", err.strip())
    assert match and int(match.group(1)) == saved and match.group(2) == str(out), err
    assert "Traceback" not in err
    resumed = subprocess.run(shlex.split(match.group(3)), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out}: {saved} episodes already answered, {n - saved} new" in resumed.stderr
    assert sorted(r["sample_id"] for r in read_finished(path)) == sorted(f"s/{i}" for i in range(n))


# A box over part of the view: some targets inside it, some not (IoUs vary across samples).
SEGMENT_REPLY = '<tool_call>{"name": "segment", "arguments": {"bbox_2d": [0, 0, 150, 168]}}</tool_call>'
SUBMIT_REPLY = '<tool_call>{"name": "submit", "arguments": {}}</tool_call>'


@pytest.mark.slow
def test_outage_then_recovery_reruns_exactly_the_failed_episodes(tmp_path, capsys):
    """The issue's outage scenario: against a server answering 503 to everything, the batch exits non-zero and
    prints the failures (no table); once the server recovers, the same command runs exactly those episodes and
    gives the metrics of a run that never saw the outage."""
    manifest = write_dataset(tmp_path / "data", 8, broken=False)

    def run(url: str, out: Path) -> int:
        # The outage is under way when the batch starts: past the preflight (which would refuse to start).
        return cli(["batch", "--data", str(manifest), "--policy", "openai", "--model", "served", "--base-url", url,
                    "--out", str(out), "--quiet", "--concurrency", "8", "--max-side", "224", "--no-preflight"])

    script = scripted_turns([SEGMENT_REPLY, SUBMIT_REPLY])
    out = tmp_path / "run"
    with OpenAIServer(script=script, fail_first=10**9, fail_status=503) as server:
        assert run(server.base_url, out) == 1
        down = capsys.readouterr()
        assert "ALL 8 EPISODES FAILED" in down.out and "gIoU" not in down.out
        assert down.out.count("HTTP 503") == 3  # the first reasons
        failed = json.loads((out / "metrics.json").read_text())
        assert failed["failed"] == 8 and failed["giou"] == 0.0 and failed["failed_by_kind"] == {"policy": 8}
        requests_down = len(server.requests)
        server.fail_first = 0  # the server recovers
        assert run(server.base_url, out) == 0
        up = capsys.readouterr()
        assert f"resuming {out}: 0 episodes already answered, 8 failed earlier and run again, 0 new" in up.err
        assert len(server.requests) - requests_down == 8 * 2  # every episode again, two turns each
    with OpenAIServer(script=script) as healthy:
        assert run(healthy.base_url, tmp_path / "clean") == 0
    recovered = json.loads((out / "metrics.json").read_text())
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    keys = ("n", "giou", "ciou", "by_kind", "by_size", "per_sample", "answered", "masks", "empty", "failed")
    assert {k: recovered[k] for k in keys} == {k: clean[k] for k in keys}
    assert recovered["episodes_run"] == 8 and len(recovered["provenance"]["runs"]) == 2
    # Issue 18 item 10: the totals count the outage's attempts too, not only the requests of the second run.
    assert recovered["server"]["requests"] == requests_down + 16 == failed["server"]["requests"] + 16
    assert recovered["server"]["failed_attempts"] == {"503": requests_down}
    print(f"\noutage: failed {failed['failed']}/{failed['n']}, gIoU {failed['giou']:.4f}; after recovery: "
          f"failed {recovered['failed']}, gIoU {recovered['giou']:.4f} cIoU {recovered['ciou']:.4f}, "
          f"{recovered['episodes_run']} episodes re-run; uninterrupted: gIoU {clean['giou']:.4f} "
          f"cIoU {clean['ciou']:.4f}")


def test_an_outage_stops_the_batch_early_with_the_resume_command(tmp_path, capsys):
    """Issue 18 item 10: once 5 episodes in a row failed reaching the server, no more are started (each would spend
    its retries on the same outage); the command says so with the command that resumes, and that command, once the
    server is back, runs the failed and the unstarted episodes."""
    manifest = write_dataset(tmp_path / "data", 12, broken=False)
    out = tmp_path / "run"
    command = ["batch", "--data", str(manifest), "--policy", "openai", "--model", "served", "--out", str(out),
               "--quiet", "--concurrency", "1", "--max-side", "224", "--retries", "1", "--backoff", "0.01",
               "--no-preflight"]
    with OpenAIServer(script=scripted_turns([SEGMENT_REPLY, SUBMIT_REPLY]), fail_first=10**9,
                      fail_status=503) as server:
        assert cli([*command, "--base-url", server.base_url]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("segloop batch: STOPPED EARLY: 5 episodes in a row failed reaching the server (")
        assert err.endswith(f"7 samples were not run. 5 episodes saved in {out} (5 failed); resume with: "
                            f"{shlex.join([sys.executable, '-m', 'segloop', *command, '--base-url', server.base_url])}")
        assert len(server.requests) == 5 * 2  # each one request and its one retry; nothing after the fifth
        server.fail_first = 0
        assert cli([*command, "--base-url", server.base_url]) == 0
    assert len(read_finished(out / "trajectories.jsonl")) == 12
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failed"] == 0 and "stopped_early" not in metrics
    assert metrics["server"]["failed_attempts"] == {"503": 10}


def test_episode_folders_are_safe_and_distinct():
    from segloop.agent.records import episode_folder

    assert episode_folder("plain_id-1.x") == "plain_id-1.x"
    names = {episode_folder(x) for x in ("a/b", "a_b", "a b", "../a/b")}
    assert len(names) == 4 and all("/" not in n and not n.startswith(".") for n in names)


def test_the_console_counts_a_policys_lists_instead_of_printing_them(tmp_path):
    """Item 10: a policy setting that is a list (a vocabulary) is counted on the console line, not printed."""
    from segloop.cli.batch import summary_text

    vocabulary = [f"word{i}" for i in range(40)]
    settings = {"name": "compact", "frame": "pixels", "vocabulary": vocabulary}
    metrics = {"n": 1, "failed": 1, "failed_by_kind": {"image": 1}, "failures": {"a": "image: unreadable"},
               "provenance": {"configuration": {}, "policy_settings": settings}}
    line = next(x for x in summary_text(metrics, tmp_path).splitlines() if x.startswith("policy settings:"))
    assert f"vocabulary=<{len(vocabulary)} entries>" in line and "name=compact" in line
    assert not any(f"'{word}'" in line for word in vocabulary) and len(line) < 600


def _file_size_limit(limit: int):
    """For a child process: writing past ``limit`` bytes of any file fails (EFBIG) as a full disk does (ENOSPC)."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.parametrize(("overlays", "failing"), [(False, "trajectories.jsonl"), (True, ".png")])
def test_a_full_disk_names_the_file_prints_the_resume_command_and_leaves_no_tmp(tmp_path, overlays, failing):
    """Issue 18 item 9, with a real process whose writes fail past a size (the records' file, or an episode's
    picture written through a temporary file): one line naming the file, the episodes saved, the command that
    resumes; no ``.tmp`` left behind; that command finishes the batch."""
    manifest = write_dataset(tmp_path / "data", 6, broken=False)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "segloop", "batch", "--data", str(manifest), "--policy", "oracle",
               "--out", str(out), "--quiet", "--max-side", "224", "--concurrency", "1",
               *([] if overlays else ["--no-overlays"])]
    # No file of anyone else written under the limit: git (the provenance asks it for the commit) takes no lock.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "GIT_OPTIONAL_LOCKS": "0"}
    full = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(9000 if not overlays else 20_000))
    assert full.returncode == 2, full.stderr
    line = full.stderr.strip()
    match = re.fullmatch(r"segloop batch: \[Errno \d+\] cannot write (\S+): File too large; (\d+) episodes saved in "
                         r"(\S+)\. Free some space, then resume with: (.+)", line)
    assert match, line
    assert match.group(1).endswith(failing) and Path(match.group(3)) == out
    assert int(match.group(2)) == len(read_finished(out / "trajectories.jsonl")) < 6
    assert not list(out.rglob("*.tmp"))
    resumed = subprocess.run(shlex.split(match.group(4)), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(r["sample_id"] for r in read_finished(out / "trajectories.jsonl")) == [f"s/{i}" for i in range(6)]
    assert json.loads((out / "metrics.json").read_text())["n"] == 6 and not list(out.rglob("*.tmp"))
