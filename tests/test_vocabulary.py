"""The compact agent knows only the synthetic world's words. A request with another word is refused by
default: no mask, no turn, the record says so, ``run`` exits 4, ``batch`` counts it, the demo says it, each
naming the words and how to run a vision-language model instead; ``--guess-unknown-words`` answers anyway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from segloop.agent.episode import EpisodeConfig
from segloop.agent.policy import unknown_words
from segloop.cli import main as cli
from segloop.demos.backends import BackendChoice, Backends
from segloop.demos.bundled import bundled_samples
from segloop.demos.chat import respond
from segloop.demos.session import DemoSession
from segloop.policies.assembly import AgentSpec
from segloop.policies.compact import CompactPolicy
from segloop.policies.registry import build_policy


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fresh compact policy: what is refused depends on the words, not on the weights."""
    directory = tmp_path_factory.mktemp("compact") / "model"
    CompactPolicy.create(seed=0, max_side=112, root_input=64, zoom_input=64, grid=16, channels=16,
                         dilations=[1, 2]).save_pretrained(directory)
    return directory


def test_the_compact_policy_names_the_words_it_cannot_read(model: Path) -> None:
    policy = build_policy("compact", model=str(model))
    assert unknown_words(policy, "the purple banana") == ["banana"]
    assert unknown_words(policy, "the red bus") == ["bus"]
    assert unknown_words(policy, "The red circle") == []
    assert unknown_words(build_policy("random"), "a banana") == []  # a policy without the hook reads any words


def test_run_refuses_unknown_words_and_answers_when_told_to_guess(tmp_path: Path, model: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = bundled_samples()[0]
    common = ["--model", str(model), "--max-turns", "3"]
    assert cli(["run", str(image), "the purple banana", "--out", str(tmp_path / "refused"), *common]) == 4
    err = capsys.readouterr().err
    assert "REFUSED" in err and "'banana'" in err and "--policy openai" in err
    record = json.loads((tmp_path / "refused" / "trajectory.json").read_text())
    assert record["refused"] and record["turns"] == [] and record["unknown_words"] == ["banana"]

    code = cli(["run", str(image), "the purple banana", "--out", str(tmp_path / "guess"), "--guess-unknown-words",
                *common])
    out = capsys.readouterr().out
    assert code in (0, 3) and "(a guess: the policy does not know 'banana')" in out
    assert json.loads((tmp_path / "guess" / "trajectory.json").read_text())["turns"]

    assert cli(["run", str(image), "the red circle", "--out", str(tmp_path / "known"), *common]) in (0, 3)
    assert not json.loads((tmp_path / "known" / "trajectory.json").read_text())["refused"]


def test_batch_counts_refusals_apart(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.jsonl"
    (image, query), (image2, _) = bundled_samples()[:2]
    lines = [{"id": "known", "image": str(image), "query": query, "mask": None},
             {"id": "bus", "image": str(image2), "query": "the red bus", "mask": None}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "run"
    assert cli(["batch", "--data", str(manifest), "--out", str(out), "--quiet", "--max-turns", "2",
                "--model", str(model)]) == 0
    captured = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refused"] == 1 and metrics["unknown_words"] == {"bus": 1}
    assert "1 REFUSED" in captured.out and "they were refused" in captured.out


def test_the_demo_says_it_refused(tmp_path: Path, model: Path) -> None:
    image, _ = bundled_samples()[0]
    session = DemoSession.new(tmp_path / "work")
    backends = Backends(AgentSpec(model=str(model), episode=EpisodeConfig(max_turns=3)))

    async def collect() -> list:
        return [s async for s in respond(session, str(image), "the yellow bus", BackendChoice(), backends,
                                         tmp_path / "out")]

    screens = asyncio.run(collect())
    said = [m["content"][0] for m in screens[-1].chat if m["role"] == "assistant"]
    assert any("does not know" in text and "'bus'" in text for text in said)
    assert "REFUSED" in said[-1]
    saved = json.loads(next((tmp_path / "out").glob("*/trajectory.json")).read_text())
    assert saved["refused"] and saved["unknown_words"] == ["bus"]
