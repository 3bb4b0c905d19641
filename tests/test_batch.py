"""``segloop batch``: scored episodes, the report, and resume after a torn line or a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from segloop.agent.batch import BatchError, read_finished
from segloop.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def write_dataset(folder: Path, n: int, broken: bool = True) -> Path:
    """``n`` drawn scenes (one of them "no such object"), plus one undecodable image when ``broken``."""
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
        line = {"id": f"s/{i}", "image": f"images/{i}.png", "query": "the red disc",
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
    assert batch(manifest, out, "--concurrency", "3") == 0
    records = read_finished(out / "trajectories.jsonl")
    assert sorted(r["sample_id"] for r in records) == ["bad", "s/0", "s/1", "s/2", "s/3", "s/4"]
    bad = next(r for r in records if r["sample_id"] == "bad")
    assert "ImageError" in bad["error"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["giou"] > 0.8 and set(metrics["failed_samples"]) == {"bad"}
    assert metrics["by_kind"]["no_target"]["giou"] == 1.0
    assert set(metrics["per_sample"]) == {"s/0", "s/1", "s/2", "s/3", "s/4"}
    assert metrics["turns"] >= 1 and metrics["tool_calls"]["submit"] == 5
    assert metrics["valid_rate"] == 1 and metrics["episodes_per_s"] > 0
    report = (out / "report.html").read_text()
    links = [part.split("'")[0] for part in report.split("src='")[1:]]
    assert links and all((out / link).is_file() for link in links)
    assert "s/0" in report and "could not run" in report
    assert "gIoU" in capsys.readouterr().out


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


def test_episode_folders_are_safe_and_distinct():
    from segloop.agent.episode import episode_folder

    assert episode_folder("plain_id-1.x") == "plain_id-1.x"
    names = {episode_folder(x) for x in ("a/b", "a_b", "a b", "../a/b")}
    assert len(names) == 4 and all("/" not in n and not n.startswith(".") for n in names)
