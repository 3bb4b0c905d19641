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
    assert "invalid choice: 'compact' (choose from 'oracle', 'single-shot', 'random')" in err
    with pytest.raises(SystemExit):
        cli(["demo", "--policy", "oracle"])
    assert "(choose from 'compact', 'transformers', 'openai', 'random')" in capsys.readouterr().err
