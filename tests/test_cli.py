"""Item 12, across every command: each help text renders and shows every default (or says it in words), an
``--out`` that cannot be a folder is refused in one line before any work, and a choice a command cannot take
is refused listing only what that command accepts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from segloop.cli import COMMANDS
from segloop.cli import main as cli


def _help(words: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli([*words, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> dict[str, str]:
    """Each option of a help text with its help, from the "options:" section."""
    section = text.split("\noptions:\n", 1)[1]
    options: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            current = match.group(1)
            options[current] = line[len(match.group(0)):]
        elif current:
            options[current] += " " + line.strip()
    return options


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_help_renders_and_shows_every_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(command.split(), capsys)
    usage = text.split("\n\n", 1)[0]
    required = {flag for flag in re.findall(r"(?<![\[\w-])(--[\w-]+)", usage)
                if not re.search(r"\[" + re.escape(flag) + r"[\s\]]", usage)}
    for flag, help_text in _options(text).items():
        if flag in ("-h", "--help"):
            continue
        words = re.sub(r"^[A-Z_{}\[\], .'-]*\s{2,}", "", help_text.strip())  # drop the metavar
        assert len(words) > len(flag), f"{command} {flag} has no help line"
        assert flag in required or "default" in help_text, f"{command} {flag}: no default shown: {help_text!r}"
    assert "(default: None)" not in " ".join(v for k, v in _options(text).items() if k in required)


def test_batch_and_run_name_their_default_policy_segmenter_and_turns(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["batch"], ["run"]):
        options = _options(_help(command, capsys))
        assert "(default: compact)" in options["--policy"]
        assert "(default: grabcut)" in options["--segmenter"]
        assert "(default: 8)" in options["--max-turns"]


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("argv", [
    ["run", "IMAGE", "the red disc", "--policy", "random", "--out", "OUT"],
    ["batch", "--data", "MANIFEST", "--policy", "random", "--out", "OUT"],
    ["synth", "--n", "1", "--size", "128", "--out", "OUT"],
    ["make-tiny", "--out", "OUT"],
    ["demo", "--out", "OUT"],
    ["train", "sft", "--data", "synth:easy:128:0:1", "--init", "compact", "--steps", "1", "--out", "OUT"],
])
@pytest.mark.parametrize("inside", [False, True])
def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(argv: list[str], inside: bool, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from segloop.tools.images import save_image

    blocker = _file(tmp_path)
    out = blocker / "sub" if inside else blocker
    image = save_image(np.zeros((64, 64, 3), np.uint8), tmp_path / "img.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "image": "img.png", "query": "x", "mask": null}\n')
    swap = {"OUT": str(out), "IMAGE": str(image), "MANIFEST": str(manifest)}
    assert cli([swap.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    which = f"is inside {blocker}, which is a file" if inside else "is a file"
    assert err.endswith(f"--out {out} {which}; give a folder") and "\n" not in err
    assert blocker.read_text() == "not a folder"


def test_a_choice_the_command_cannot_take_lists_only_what_it_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(["train", "sft", "--data", "x", "--out", "y", "--expert", "compact"])
    err = capsys.readouterr().err
    assert "invalid choice: 'compact' (choose from 'oracle', 'compact-expert', 'single-shot', 'random')" in err
    # run and demo take batch's policies, but have no ground truth for those that read it: one line, exit 2.
    for command in (["demo"], ["run", "IMAGE", "the red disc", "--out", "OUT"]):
        assert cli([*command, "--policy", "oracle"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("--policy oracle reads the ground truth, which this command does not have; use it with "
                            "segloop batch") and "\n" not in err


def _agent_flags(command: list[str]) -> dict[str, tuple[str, ...]]:
    """The flags of a command's agent and server groups, with the choices each offers."""
    from segloop.cli import build_parser
    from segloop.cli.agent_options import AGENT_GROUP, SERVER_GROUP

    parser = build_parser(command)
    for word in command:
        parser = next(a for a in parser._actions if a.dest in ("command", "subcommand")).choices[word]
    groups = [g for g in parser._action_groups if g.title in (AGENT_GROUP, SERVER_GROUP)]
    assert len(groups) == 2
    return {flag: tuple(action.choices or ()) for group in groups for action in group._group_actions
            for flag in action.option_strings}


def test_run_batch_and_demo_take_the_same_agent_flags_with_the_same_choices() -> None:
    run, batch, demo = (_agent_flags(c) for c in (["run"], ["batch"], ["demo"]))
    assert run == batch == demo
    for flag in ("--policy", "--model", "--segmenter", "--segmenter-model", "--max-side", "--max-turns", "--seed",
                 "--base-url", "--temperature", "--tool-mode"):
        assert flag in run, flag
    assert set(run["--policy"]) == {"compact", "transformers", "openai", "oracle", "compact-expert", "single-shot",
                                    "random"}


def test_their_help_texts_list_the_same_agent_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from segloop.cli.agent_options import AGENT_GROUP, SERVER_GROUP

    def listed(words: list[str]) -> set[str]:
        text = _help(words, capsys)
        sections = [text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0] for title in (AGENT_GROUP, SERVER_GROUP)]
        return {flag for section in sections for flag in re.findall(r"^  (--[\w-]+)", section, re.MULTILINE)}

    run, batch, demo = listed(["run"]), listed(["batch"]), listed(["demo"])
    assert run == batch == demo and {"--policy", "--base-url", "--max-turns", "--segmenter-model"} <= run


def test_the_agent_flags_reach_the_spec(tmp_path: Path) -> None:
    from segloop.cli import build_parser
    from segloop.cli.agent_options import agent_spec

    argv = ["demo", "--policy", "openai", "--model", "m", "--base-url", "http://h:1/v1", "--max-side", "448",
            "--max-turns", "5", "--segmenter-model", "x"]
    spec = agent_spec(build_parser(argv).parse_args(argv), ground_truth=False)
    assert spec.policy == "openai" and spec.model == "m" and spec.segmenter_model == "x"
    assert spec.episode.max_turns == 5
    assert spec.policy_options["base_url"] == "http://h:1/v1" and spec.policy_options["max_side"] == 448
    assert spec.policy_options["retries"] == 1  # the demo's own default: a person is waiting
