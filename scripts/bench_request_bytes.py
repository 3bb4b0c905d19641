"""Request bytes per episode of ``--policy openai``, and accuracy with an oracle-driven stand-in server.

Both measurements go through the real client and the graph, against the local stand-in server
(``tests/support/openai_server.py``) whose answers a driver policy decides in this process:

1. ``bytes``: every sample of a manifest (default ``../shared/realdata/manifest.jsonl``, real photos) run for
   exactly 8 turns by a fixed script whose coordinates follow the current view (zoom in, segment, inspect,
   zoom out, zoom in, segment, inspect, submit); prints each episode's request bytes (the sum over its 8
   requests), their median and maximum, and the largest single request.
2. ``accuracy``: the oracle (it knows the ground truth) decides each turn and the stand-in sends it over the
   wire; gIoU/cIoU on a synthetic world (``segloop synth``) with the box segmenter. The oracle's coordinates are
   quantised to the view it is shown, so this checks that smaller views cost no accuracy.

To measure another version of the code (say, the commit before a change), put its package first on the path:
``PYTHONPATH=/path/to/checkout/src python scripts/bench_request_bytes.py``; ``--option key=value`` passes
policy options the code under test knows (``--option keep_images=2``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.openai_server import OpenAIServer  # noqa: E402

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn, ZoomOut  # noqa: E402
from segloop.agent.parser import format_call  # noqa: E402
from segloop.agent.policy import PolicyContext, PolicyTurn  # noqa: E402
from segloop.policies.openai_compat import OpenAIPolicy  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "realdata" / "manifest.jsonl"


class _Slot:
    """The stand-in server's script: answers with what the driver put here (one request in flight)."""

    text = ""

    def __call__(self, body: dict[str, Any]) -> str:
        return self.text


class Relay(OpenAIPolicy):
    """``OpenAIPolicy`` whose server answers with the turn ``driver`` chooses for the same context."""

    def __init__(self, slot: _Slot, driver: Any, **options: Any) -> None:
        super().__init__("stand-in", **options)
        self.slot = slot
        self.driver = driver

    async def act(self, context: PolicyContext) -> PolicyTurn:
        self.slot.text = (await self.driver.act(context)).text
        return await super().act(context)

    def end_episode(self, episode_id: str) -> None:
        super().end_episode(episode_id)
        self.driver.end_episode(episode_id)


class EightTurns:
    """Exactly 8 valid turns in any image, coordinates taken from the current view."""

    async def act(self, context: PolicyContext) -> PolicyTurn:
        w, h = context.view.width, context.view.height
        script = [ZoomIn(bbox_2d=[0, 0, w // 2, h // 2]), Segment(bbox_2d=[w // 4, h // 4, 3 * w // 4, 3 * h // 4]),
                  InspectMask(), ZoomOut(), ZoomIn(bbox_2d=[w // 2, h // 2, w, h]),
                  Segment(bbox_2d=[w // 8, h // 8, w // 2, h // 2]), InspectMask(), Submit()]
        return PolicyTurn(text=format_call(script[min(context.turn, len(script) - 1)]))

    def end_episode(self, episode_id: str) -> None:
        pass


def _options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _code() -> str:
    import segloop

    source = Path(segloop.__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    return f"{source} @ {commit}"


def request_bytes(data: str, options: dict[str, Any], limit: int | None) -> dict[str, Any]:
    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.data.specs import load_samples
    from segloop.tools.segmenters import build_segmenter

    samples = load_samples(data)[:limit]
    slot = _Slot()
    per_episode, largest, views = [], 0, set()
    with OpenAIServer(script=slot) as server:
        policy = Relay(slot, EightTurns(), base_url=server.base_url, **options)
        agent = Agent(policy, build_segmenter("box"), EpisodeConfig(max_turns=8))
        for sample in samples:
            first = len(server.request_sizes)
            result = asyncio.run(agent.run(sample.load().image, sample.query, episode_id=sample.id))
            sizes = server.request_sizes[first:]
            assert len(sizes) == len(result.trajectory.turns) == 8, (sample.id, len(sizes))
            per_episode.append(sum(sizes))
            largest = max(largest, *sizes)
            first_user = server.requests[first]["messages"][1]["content"][1]["text"]
            views.add(first_user.split("shown as view ")[1].split(" pixels")[0])
    return {"episodes": len(per_episode), "median": statistics.median(per_episode), "max": max(per_episode),
            "largest_request": largest, "first_views": sorted(views)}


def accuracy(n: int, size: int, options: dict[str, Any]) -> dict[str, Any]:
    from segloop.agent.episode import Agent, EpisodeConfig
    from segloop.data.specs import load_samples, write_world
    from segloop.evaluation.batch import run_batch
    from segloop.policies.scripted import OraclePolicy
    from segloop.tools.segmenters import build_segmenter

    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_world(Path(tmp) / "world", n, 0, size, "medium", 0.1, progress=False)
        slot = _Slot()
        with OpenAIServer(script=slot) as server:
            policy = Relay(slot, OraclePolicy(), base_url=server.base_url, **options)
            agent = Agent(policy, build_segmenter("box"), EpisodeConfig(max_turns=8))
            metrics = asyncio.run(run_batch(agent, load_samples(str(manifest)), Path(tmp) / "out", concurrency=1,
                                            progress=False, save_overlays=False))
    return {"n": n, "gIoU": metrics["giou"], "cIoU": metrics["ciou"], "turns": metrics["turns"],
            "valid_rate": metrics["valid_rate"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="manifest of photos for the byte count")
    parser.add_argument("--limit", type=int, default=None, help="only the first K samples")
    parser.add_argument("--synth", type=int, default=40, help="synthetic scenes for the accuracy check (0: skip)")
    parser.add_argument("--synth-size", type=int, default=1024, help="side of the synthetic scenes")
    parser.add_argument("--option", action="append", default=[], help="policy option key=value (JSON value)")
    args = parser.parse_args()
    options = _options(args.option)
    print(f"code: {_code()}; policy options: {options or 'defaults'}")
    result = request_bytes(args.data, options, args.limit)
    print(f"request bytes per 8-turn episode over {result['episodes']} photos ({args.data}): median "
          f"{result['median'] / 1e6:.2f} MB, max {result['max'] / 1e6:.2f} MB; largest single request "
          f"{result['largest_request'] / 1e6:.2f} MB; first views shown: {', '.join(result['first_views'])}")
    if args.synth:
        acc = accuracy(args.synth, args.synth_size, options)
        print(f"oracle through the wire on {acc['n']} synthetic scenes ({args.synth_size} px): gIoU {acc['gIoU']:.4f}, "
              f"cIoU {acc['cIoU']:.4f}, mean turns {acc['turns']:.2f}, valid actions {acc['valid_rate']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
