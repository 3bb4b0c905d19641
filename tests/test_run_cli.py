"""``segloop run``: one episode on one image, printed and saved; user errors are one line."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from support.policies import Scripted, SwitchedOracle

from segloop.agent.episode import Agent
from segloop.agent.records import Trajectory
from segloop.cli import main as cli
from segloop.tools.images import load_image


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
    printed = capsys.readouterr().out
    trajectory = Trajectory.model_validate_json((out / "trajectory.json").read_text())
    assert code == (3 if trajectory.empty else 0)  # an EMPTY answer is not a plain success
    assert f"{trajectory.outcome()}; saved to {out}" in printed
    assert load_image(out / "final.png").shape == (120, 160, 3)  # the mask over the whole image (item 7)
    assert 1 <= len(trajectory.turns) <= 5
    assert len(re.findall(r"^turn \d+: ", printed, re.MULTILINE)) == len(trajectory.turns)
    assert "saved to" in printed
    for turn in trajectory.turns:
        if turn.observation_image:
            assert (out / turn.observation_image).is_file()
    assert (out / "mask.png").is_file()
    assert json.loads((out / "trajectory.json").read_text())["query"] == "the red disc"
    made = json.loads((out / "run.json").read_text())  # what made the episode (item 3)
    assert made["configuration"]["agent"]["policy"] == "random" and made["configuration"]["agent"]["episode"][
        "max_turns"] == 5
    assert made["configuration"]["image"] == str(image_path.resolve()) and made["policy_settings"]["name"] == "random"
    assert made["segloop"] and made["host"] and made["started"] <= made["ended"] and "git_commit" in made


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


def test_an_unknown_policy_is_refused_by_the_parser(image_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli(["run", str(image_path), "x", "--out", str(tmp_path / "o"), "--policy", "nope"])
    assert exited.value.code == 2
    assert ("invalid choice: 'nope' (choose from 'compact', 'transformers', 'openai', 'oracle', 'compact-expert', "
            "'single-shot', 'random')") in capsys.readouterr().err


@pytest.mark.parametrize(("reply", "code", "line"), [
    ('<tool_call>{"name": "submit", "arguments": {}}</tool_call>', 3,
     "submitted an EMPTY mask (without saying 'no such object'), 1 turn"),
    ('<tool_call>{"name": "submit", "arguments": {"no_target": true}}</tool_call>', 0,
     "no such object (the agent says it is not in the image), 1 turn"),
    ('<tool_call>{"name": "segment", "arguments": {"bbox_2d": [95, 25, 125, 55]}}</tool_call>', 0,
     "turn budget spent (2 turns); the last candidate, "),
    ('<tool_call>{"name": "inspect_mask", "arguments": {}}</tool_call>', 3,
     "turn budget spent (2 turns); the last candidate is an EMPTY mask"),
])
def test_an_empty_answer_is_said_plainly_and_exits_non_zero(image_path, tmp_path, capsys, monkeypatch, box_segmenter,
                                                            reply, code, line):
    """Item 1: "submitted an EMPTY mask" is neither "submitted" nor "no such object", and does not exit 0."""
    monkeypatch.setattr("segloop.policies.assembly.build_agent",
                        lambda spec, **_: Agent(Scripted([reply]), box_segmenter, spec.episode))
    out = tmp_path / "o"
    assert cli(["run", str(image_path), "the red disc", "--out", str(out), "--max-turns", "2"]) == code
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(line) and f"saved to {out} (final.png" in printed[-1]
    saved = json.loads((out / "trajectory.json").read_text())
    assert saved["empty"] == (code == 3) and saved["no_target"] == ("no_target" in reply)


def test_a_failed_episode_is_not_an_answer(image_path, tmp_path, capsys, monkeypatch, box_segmenter):
    """Item 2: a policy that cannot give a turn fails the episode: exit 1, the reason on stderr."""
    policy = SwitchedOracle(down=True)
    monkeypatch.setattr("segloop.policies.assembly.build_agent",
                        lambda spec, **_: Agent(policy, box_segmenter, spec.episode))
    assert cli(["run", str(image_path), "the red disc", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("segloop run: the episode FAILED (policy: PolicyUnavailable: ") and "HTTP 503" in err
    assert "\n" not in err


@pytest.mark.parametrize("size", [(1, 1), (10, 300)])
def test_a_tiny_image_is_one_clear_refusal(tmp_path, capsys, size):
    """Item 12: no run of refused zooms on a 1x1 image."""
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.zeros((*size, 3), np.uint8))
    assert cli(["run", str(path), "the red disc", "--out", str(tmp_path / "o"), "--policy", "random"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"segloop run: the image is {size[1]}x{size[0]} pixels, too small to look at and zoom into; "
                   "an episode needs at least 28 pixels on each side")
    assert not (tmp_path / "o" / "trajectory.json").exists()


def test_a_folder_holding_another_episode_is_refused(image_path, tmp_path, capsys):
    """Issue 18 item 5: a second run into a used folder would leave the first episode's turn pictures beside the
    new trajectory; it is refused, naming what is there, and the first episode is left whole."""
    out = tmp_path / "ep"
    cli(["run", str(image_path), "the red disc", "--out", str(out), "--policy", "random", "--max-turns", "4"])
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "trajectory.json" in before
    capsys.readouterr()
    assert cli(["run", str(image_path), "the blue square", "--out", str(out), "--policy", "random"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"segloop run: --out {out} already holds an episode (") and "final.png" in err
    assert "\n" not in err and {path.name: path.read_bytes() for path in out.iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a folder of other things is fine")
    assert cli(["run", str(image_path), "the red disc", "--out", str(tmp_path / "mine"), "--policy", "random",
                "--max-turns", "2"]) in (0, 3)
