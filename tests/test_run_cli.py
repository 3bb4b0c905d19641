"""``segloop run``: one episode on one image, printed and saved; user errors are one line."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from segloop.agent.episode import Trajectory
from segloop.cli import main as cli


@pytest.fixture
def image_path(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 50, (120, 160, 3)).astype(np.uint8)
    cv2.circle(image, (110, 40), 12, (40, 40, 230), -1)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image)
    return path


def test_run_prints_each_turn_and_saves_the_episode(image_path, tmp_path, capsys):
    out = tmp_path / "ep"
    code = cli(["run", str(image_path), "the red disc", "--out", str(out), "--policy", "random",
                "--max-turns", "5", "--verbose"])
    assert code == 0
    printed = capsys.readouterr().out
    trajectory = Trajectory.model_validate_json((out / "trajectory.json").read_text())
    assert 1 <= len(trajectory.turns) <= 5
    assert len(re.findall(r"^turn \d+: ", printed, re.MULTILINE)) == len(trajectory.turns)
    assert "saved to" in printed
    for turn in trajectory.turns:
        if turn.observation_image:
            assert (out / turn.observation_image).is_file()
    assert (out / "mask.png").is_file()
    assert json.loads((out / "trajectory.json").read_text())["query"] == "the red disc"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "IMG", "  ", "--out", "OUT", "--policy", "random"], "query is empty"),
    (["run", "IMG", "x", "--out", "IMG", "--policy", "random"], "is a file"),
    (["run", "MISSING", "x", "--out", "OUT", "--policy", "random"], "no such file"),
    (["run", "IMG", "x", "--out", "OUT", "--policy", "compact", "--model", "NOWHERE"],
     "not a compact policy directory"),
    (["run", "IMG", "x", "--out", "OUT", "--policy", "random", "--max-turns", "0"], "max-turns"),
])
def test_user_errors_are_one_clear_line(image_path, tmp_path, capsys, args, message):
    swap = {"IMG": str(image_path), "OUT": str(tmp_path / "o"), "MISSING": str(tmp_path / "missing.png"),
            "NOWHERE": str(tmp_path / "nowhere")}
    assert cli([swap.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segloop run:") and "\n" not in err and message in err


@pytest.mark.parametrize("policy", ["nope", "oracle"])
def test_policies_run_cannot_use_are_refused_by_the_parser(image_path, tmp_path, capsys, policy):
    """The scripted experts read a ground truth a single image does not have: `run` does not offer them."""
    with pytest.raises(SystemExit) as exited:
        cli(["run", str(image_path), "x", "--out", str(tmp_path / "o"), "--policy", policy])
    assert exited.value.code == 2
    assert f"invalid choice: '{policy}' (choose from 'compact', 'transformers', 'openai', 'random')" in (
        capsys.readouterr().err)
