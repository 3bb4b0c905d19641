"""Item 7: the bundled compact agent knows only the words it was trained on. A request with other words still
runs (the words it knows may be enough, and a batch stays comparable across policies), but ``run``, ``batch``
and the demo say so in one line, naming the words and how to run a vision-language model instead, and the
episode's record keeps them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from segloop.agent.policy import unknown_words
from segloop.cli import main as cli
from segloop.demos.backends import BackendChoice, Backends
from segloop.demos.bundled import bundled_samples
from segloop.demos.chat import respond
from segloop.demos.session import DemoSession
from segloop.policies.assembly import AgentSpec
from segloop.policies.compact import DEFAULT_CHECKPOINT
from segloop.policies.registry import build_policy

pytestmark = pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "config.json").exists(),
                                reason="needs the shipped compact checkpoint")


def test_the_compact_policy_names_the_words_it_cannot_read() -> None:
    policy = build_policy("compact")
    assert unknown_words(policy, "a banana, a BANANA!") == ["a", "banana"]
    assert unknown_words(policy, "the medium striped circle") == []
    assert unknown_words(build_policy("random"), "a banana") == []  # a policy without the hook reads any words


def test_run_says_so_in_one_line_and_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = bundled_samples()[0]
    out = tmp_path / "ep"
    code = cli(["run", str(image), "the yellow bus", "--out", str(out), "--max-turns", "3"])
    printed = capsys.readouterr().out.splitlines()
    notes = [line for line in printed if line.startswith("note:")]
    assert len(notes) == 1 and "does not know the word 'bus'" in notes[0]
    assert "vision-language model" in notes[0] and "--policy openai" in notes[0]
    assert code in (0, 3)  # it ran: an answer (a mask, or an EMPTY one), not a failure
    assert "(a guess: the policy does not know 'bus'); saved to" in printed[-1]
    assert json.loads((out / "trajectory.json").read_text())["unknown_words"] == ["bus"]


def test_batch_says_so_once_and_counts_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.jsonl"
    (image, query), (image2, _) = bundled_samples()[:2]
    lines = [{"id": "known", "image": str(image), "query": query, "mask": None},
             {"id": "bus", "image": str(image2), "query": "a banana", "mask": None}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "run"
    assert cli(["batch", "--data", str(manifest), "--out", str(out), "--quiet", "--max-turns", "2"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "does not know" in line]
    assert len(notes) == 1 and "1 of 2 queries" in notes[0] and "'a', 'banana'" in notes[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unknown_word_queries"] == 1 and metrics["unknown_words"] == {"a": 1, "banana": 1}
    assert "1 query has words the policy does not know ('a', 'banana')" in captured.out
    assert "unknown words: a, banana" in (out / "report.html").read_text()


def test_the_demo_says_so_before_the_turns(tmp_path: Path) -> None:
    image, _ = bundled_samples()[0]
    session = DemoSession.new(tmp_path / "work")
    backends = Backends(AgentSpec())

    async def collect() -> list:
        return [s async for s in respond(session, str(image), "the yellow bus", BackendChoice(), backends,
                                         tmp_path / "out")]

    screens = asyncio.run(collect())
    notes = [m for m in screens[-1].chat if m["role"] == "assistant" and "does not know" in m["content"][0]]
    assert len(notes) == 1 and "'bus'" in notes[0]["content"][0]
    assert "OpenAI-compatible server" in notes[0]["content"][0]
    assert screens[-1].chat.index(notes[0]) == 1  # right after the request, before the turns
    saved = json.loads(next((tmp_path / "out").glob("*/trajectory.json")).read_text())
    assert saved["unknown_words"] == ["bus"]
