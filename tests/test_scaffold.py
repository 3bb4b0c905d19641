"""The trainers' shared scaffold (``rl.scaffold``): the config file, progress a person can follow, a CSV with
readable numbers and the time spent, one figure as a grid, and ``final/`` saying which checkpoint it is."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from segloop.rl.scaffold import TrainingRun
from segloop.tools.images import load_image


class Config(BaseModel):
    lr: float = 0.002
    seed: int = 3


class Saved:
    def save_pretrained(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "weights").write_text("w")


def test_a_run_writes_its_config_progress_log_figure_and_summary(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = TrainingRun("demo", Config(), tmp_path, steps=6, seed=3)
    assert json.loads((tmp_path / "demo_config.json").read_text()) == {"lr": 0.002, "seed": 3}
    for step in range(1, 7):
        run.progress(step, {"loss": 1 / step, "lr": 0.1 + 0.2, "held-out gIoU": None})
        run.write({"step": step, "loss": 1 / step, "lr": 0.1 + 0.2, "a": step, "b": -step, "c": step**2, "d": 0.5})
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("demo: step 1/6 (17%) · loss 1 · lr 0.3") and "ETA" not in lines[0]
    assert re.match(r"demo: step 6/6 \(100%\) · [\d.]+ steps/s · ETA 0s · loss 0\.1667 · lr 0\.3$", lines[-1])
    assert len(lines) == 2  # the steps between come faster than a line every few seconds
    rows = run.log.rows()
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[2]["loss"] == "0.333333" and rows[0]["lr"] == "0.3"  # not 0.30000000000000004
    assert {"cpu_min", "wall_min", "peak_mem_mb"} <= set(rows[0]) and float(rows[0]["peak_mem_mb"]) > 0
    summary = run.finish({"x": 1}, ["loss", "a", "b", "c", "d", "missing"], "demo", "done")
    assert summary["result"] == "done" and summary["x"] == 1 and summary["wall_min"] >= 0
    assert json.loads((tmp_path / "demo_summary.json").read_text())["result"] == "done"
    height, width = load_image(tmp_path / "demo_curves.png").shape[:2]
    assert width < 1400 and height > 500  # five panels in a grid (3 a row), not a strip


def test_final_says_which_checkpoint_it_is_and_a_run_made_worse_says_so(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    good = TrainingRun("good", Config(), tmp_path / "good", steps=4, seed=0)
    for step, giou in ((0, 0.30), (2, 0.35), (4, 0.36)):
        good.held_out(step, giou)
    record = good.save_final(Saved(), 4)
    assert record == {"step": 4, "which": "last", "held_out_giou": 0.36, "best_held_out": {"step": 4, "giou": 0.36}}
    assert json.loads((tmp_path / "good" / "final" / "checkpoint.json").read_text()) == record
    assert (tmp_path / "good" / "final" / "weights").is_file() and "WARNING" not in capsys.readouterr().err

    worse = TrainingRun("worse", Config(), tmp_path / "worse", steps=2, seed=0)
    worse.held_out(0, 0.354)
    worse.held_out(2, 0.31)
    record = worse.save_final(Saved(), 2)
    assert record["best_held_out"] == {"step": 0, "giou": 0.354} and record["held_out_giou"] == 0.31
    err = capsys.readouterr().err
    assert "worse: WARNING: held-out gIoU fell to 0.3100 at the last step from 0.3540 at step 0" in err
    assert "final/ is the last step's policy" in record["warning"]


def test_a_resumed_run_keeps_its_log_and_its_earlier_evaluations(tmp_path: Path) -> None:
    first = TrainingRun("r", Config(), tmp_path, steps=2, seed=0)
    first.write({"step": 0, "eval_giou": 0.5})
    first.write({"step": 1, "eval_giou": None})
    again = TrainingRun("r", Config(), tmp_path, steps=4, seed=0, first_step=1, resume=True)
    assert again.evaluations == [(0, 0.5)]
    again.write({"step": 2, "eval_giou": 0.4})
    assert [r["step"] for r in again.log.rows()] == ["0", "1", "2"]
    assert TrainingRun("r", Config(), tmp_path, steps=4, seed=0).log.rows() == []  # a new run starts a new log


def test_a_run_resumed_from_an_earlier_checkpoint_does_not_log_its_steps_twice(tmp_path: Path) -> None:
    first = TrainingRun("r", Config(), tmp_path, steps=4, seed=0)
    for step in range(4):  # checkpoint at step 1, then steps 2 and 3 logged before the crash
        first.write({"step": step, "eval_giou": 0.5 if step in (0, 3) else None})
    again = TrainingRun("r", Config(), tmp_path, steps=4, seed=0, first_step=1, resume=True)
    assert again.evaluations == [(0, 0.5)]  # step 3's evaluation is of a policy the resumed run replaces
    again.write({"step": 2, "eval_giou": None})
    assert [r["step"] for r in again.log.rows()] == ["0", "1", "2"]


def test_timing_counts_the_cpu_of_finished_workers(tmp_path: Path) -> None:
    run = TrainingRun("t", Config(), tmp_path, steps=1, seed=0)
    burn = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 1.2: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert run.timing()["cpu_min"] >= 0.02  # 1.2 CPU seconds of a child, in minutes


def test_the_seed_seeds_torch(tmp_path: Path) -> None:
    import torch

    TrainingRun("s", Config(), tmp_path, steps=1, seed=7)
    a = torch.rand(3)
    TrainingRun("s", Config(), tmp_path, steps=1, seed=7)
    assert np.array_equal(a.numpy(), torch.rand(3).numpy())
