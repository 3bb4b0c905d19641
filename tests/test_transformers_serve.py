"""``--policy openai`` against a real server nobody here wrote: stock ``transformers serve`` (the ``serving`` extra of
transformers), started by the test in its own process, serving the tiny model taught to write calls
(``support.caller``). Nothing of segloop is loaded into the server: the checkpoint carries its processor (the
stock layout, and the image-only class as its code, which ``--trust-remote-code`` lets it use where torchvision
is missing); the pictures reach the model (the preflight of every batch checks it).

What this server does that the stand-in does not: it moves ``<tool_call>`` into ``message.tool_calls`` and
``<think>`` into ``reasoning_content`` even when no tools were sent, answers 500 to any request carrying ``stop``
with a vision model, and renders ``tools=``, ``tool_calls`` and ``role="tool"`` messages through the checkpoint's
own chat template.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.caller import CALLS, MAX_SIDE, teach_calls

from segloop.cli import main as cli
from segloop.data.specs import write_world
from segloop.policies.openai_compat import STOP_EVIDENCE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def caller(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return teach_calls(tiny_model, tmp_path_factory.mktemp("caller") / "caller")


@pytest.fixture(scope="module")
def served(caller: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transformers serve`` of the caller on a free port; its base URL while the module's tests run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
           "HF_MODULES_CACHE": str(tmp_path_factory.mktemp("modules"))}  # where it keeps the checkpoint's code
    server = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(caller),
                               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--trust-remote-code"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {server.returncode}: see {log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not come up in 180 s: see {log.name}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world(tmp_path_factory.mktemp("world"), n=3, seed=0, size=384, difficulty="easy",
                       no_target_rate=0.0, progress=False)


def test_pictures_reach_the_model_in_stock_transformers_serve(served: str, caller: Path) -> None:
    """Issue 18 item 4: the checkpoint names the stock processor class (a class only segloop defines made stock
    ``AutoProcessor`` fall back to the bare tokenizer, a text-only model), and its prompt grows with a picture."""
    import asyncio

    from segloop.policies.openai_compat import OpenAIPolicy

    config = json.loads((caller / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2_5_VLProcessor" and "video_processor" in config
    assert json.loads((caller / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    assert asyncio.run(OpenAIPolicy(str(caller), base_url=served).preflight()) is None


@pytest.mark.parametrize("mode", ["prompt", "native"])
def test_a_batch_through_transformers_serve_submits_every_episode(served: str, caller: Path, world: Path,
                                                                  tmp_path: Path, mode: str) -> None:
    out = tmp_path / mode
    assert cli(["batch", "--data", str(world), "--policy", "openai", "--model", str(caller), "--base-url", served,
                "--max-side", str(MAX_SIDE), "--tool-mode", mode, "--out", str(out), "--quiet", "--no-overlays",
                "--concurrency", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failed"] == 0 and metrics["submit_rate"] == 1.0 and metrics["valid_rate"] == 1.0
    assert metrics["server"]["requests"] >= 6 and metrics["server"]["completion_tokens"] > 0
    records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    for record in records:
        turns = record["trajectory"]["turns"]
        # The server split each answer into reasoning_content and tool_calls; the record holds the turn as written.
        assert [t["raw_text"] for t in turns] == CALLS
        assert [t["policy_info"]["source"] for t in turns] == ["tool_calls", "tool_calls"]
        assert all(t["policy_info"]["statuses"][-1] == 200 for t in turns)
    # The server's `stop` bug is found on the first requests and never met again.
    statuses = [t["policy_info"]["statuses"] for r in records for t in r["trajectory"]["turns"]]
    # Decided on STOP_EVIDENCE requests; the other request in flight (concurrency 2) may meet it once more.
    assert sum(s.count(500) for s in statuses) <= STOP_EVIDENCE - 1 + 2
    assert all(s == [200] for s in statuses[-2:])


def test_a_seeded_greedy_run_twice_gives_the_same_trajectory(served: str, caller: Path, world: Path,
                                                             tmp_path: Path) -> None:
    image = sorted((world.parent / "images").iterdir())[0]
    trajectories = []
    for run in ("first", "second"):
        assert cli(["run", str(image), "the small red circle", "--policy", "openai", "--base-url", served,
                    "--model", str(caller), "--temperature", "0", "--seed", "1", "--max-side", str(MAX_SIDE),
                    "--out", str(tmp_path / run / "episode")]) == 0  # the episode id (and seed) is the folder's name
        trajectories.append(json.loads((tmp_path / run / "episode" / "trajectory.json").read_text()))

    def decisions(trajectory: dict) -> list:
        return [(t["raw_text"], t["action"], t["observation"], t["policy_info"]["seed"]) for t in trajectory["turns"]]

    assert decisions(trajectories[0]) == decisions(trajectories[1])
    assert trajectories[0]["submitted"] and [t["raw_text"] for t in trajectories[0]["turns"]] == CALLS
