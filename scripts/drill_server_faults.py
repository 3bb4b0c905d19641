"""Fault drills for ``--policy openai``: a hung server, a server that trickles its answer, and a 503 storm.

Each drill starts the stand-in server (``tests/support/openai_server.py``) in its own process, as a real server
would run, and drives the real command line against it:

- ``hang``: the server accepts every request and never answers. ``segloop run --request-timeout T`` must end the
  episode (FAILED, exit 1) within the stated bound, 2 x T + backoff (a timed-out request is retried once).
- ``trickle``: the server answers, one byte per 0.2 s: the same deadline cuts it off (a per-read timeout would not).
- ``storm``: the server answers 503 with ``Retry-After: 1`` for the first S seconds. ``segloop batch`` must end
  (episodes whose retries ran out are FAILED records; after 5 in a row it starts no more; exit 1), and re-running
  the same command runs those and the unstarted ones, to completion.

The drills run past the preflight (``--no-preflight``): it would refuse each of these servers before any episode
(they are down when the command starts); what is drilled is a server that fails once episodes are running.

Prints the figures; the numbers depend on the machine only through start-up times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "support" / "openai_server.py"
SCRIPT = json.dumps(['<tool_call>{"name": "segment", "arguments": {"bbox_2d": [0, 0, 28, 28]}}</tool_call>',
                     '<tool_call>{"name": "submit", "arguments": {}}</tool_call>'])


def _server(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(SERVER), "--script", SCRIPT, *args], stdout=subprocess.PIPE,
                               text=True)
    return process, process.stdout.readline().strip()


def _segloop(*args: str) -> tuple[int, float, str]:
    tic = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "segloop", *args], capture_output=True, text=True)
    return done.returncode, time.monotonic() - tic, done.stdout + done.stderr


def deadline_drill(kind: str, timeout: float, folder: Path) -> None:
    import numpy as np

    from segloop.tools.images import save_image

    image = folder / "photo.png"
    save_image(np.full((375, 500, 3), 120, np.uint8), image)
    server, url = _server("--hang") if kind == "hang" else _server("--trickle", "0.2")
    try:
        code, seconds, _ = _segloop("run", str(image), "the cat", "--policy", "openai", "--model", "m",
                                         "--base-url", url, "--request-timeout", str(timeout), "--backoff", "0.5",
                                         "--no-preflight", "--out", str(folder / kind))
    finally:
        server.terminate()
        server.wait()
    trajectory = json.loads((folder / kind / "trajectory.json").read_text())
    episode_s = trajectory.get("seconds", float("nan"))
    reason = (trajectory.get("failure") or {}).get("reason") or "(none)"
    bound = 2 * timeout + 0.5
    print(f"{kind}: --request-timeout {timeout:g}: exit {code}; the episode ended after {episode_s:.1f} s "
          f"(stated bound 2 x {timeout:g} + 0.5 = {bound:.1f} s plus the episode's own work; "
          f"command {seconds:.1f} s with start-up)")
    print(f"  reason: {reason[:240]}")


def storm_drill(storm_s: float, folder: Path) -> None:
    from segloop.data.specs import write_world

    manifest = write_world(folder / "world", 12, 0, 384, "easy", 0.0, progress=False)
    server, url = _server("--storm", str(storm_s))
    started = time.monotonic()
    try:
        common = ["batch", "--data", str(manifest), "--policy", "openai", "--model", "m", "--base-url", url,
                  "--out", str(folder / "storm"), "--quiet", "--no-overlays", "--concurrency", "2", "--retries", "2",
                  "--segmenter", "grabcut", "--no-preflight"]
        code, seconds, output = _segloop(*common)
        if not (folder / "storm" / "metrics.json").exists():
            raise SystemExit(f"the batch wrote no metrics (exit {code}):\n{output[-2000:]}")
        metrics = json.loads((folder / "storm" / "metrics.json").read_text())
        not_run = metrics.get("not_run", 0)
        print(f"storm: 503 + Retry-After: 1 for {storm_s:g} s; batch of {metrics['n'] + not_run} samples ended in "
              f"{seconds:.1f} s, exit {code}: {metrics['failed']} FAILED, {metrics['n'] - metrics['failed']} answered, "
              f"{not_run} not started (stopped early: {bool(metrics.get('stopped_early'))}); server totals "
              f"{json.dumps(metrics.get('server', {}).get('failed_attempts'))}")
        wait = storm_s - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        code, seconds, _ = _segloop(*common)
        metrics = json.loads((folder / "storm" / "metrics.json").read_text())
        print(f"  resume after the storm: exit {code} in {seconds:.1f} s, {metrics.get('episodes_run')} episodes run "
              f"again; now {metrics['failed']} FAILED of {metrics['n']}")
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="--request-timeout of the hang/trickle drills")
    parser.add_argument("--storm", type=float, default=8.0, help="seconds the 503 storm lasts")
    parser.add_argument("drills", nargs="*", default=["hang", "trickle", "storm"], help="hang, trickle, storm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for drill in args.drills:
            if drill in ("hang", "trickle"):
                deadline_drill(drill, args.timeout, Path(tmp))
            elif drill == "storm":
                storm_drill(args.storm, Path(tmp))
            else:
                parser.error(f"unknown drill {drill!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
