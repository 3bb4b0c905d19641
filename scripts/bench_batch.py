"""The real ``segloop batch`` against a slow OpenAI-compatible server: episodes/s at concurrency 1 and 32.

Unlike ``bench_concurrency.py`` (the batch runner called in-process, no pictures), this runs the command a
user runs, in its own process: synthetic 1536-pixel scenes from a manifest, ``--policy openai`` against a
local stand-in server (``tests/support/openai_server.py``) that answers every request after ``--latency``
seconds with a scripted four-turn episode (zoom in, segment a box, inspect the mask, submit), overlays and the
report written. The segmenter fills the prompted box (``box``, which the command does not offer a person: this
script adds it to the choices in the child process), so what remains is the client's own work (images read,
views rendered and encoded, overlays, files written) against the server's latency, which concurrency should
hide.

Each repeat runs concurrency 1 and then 32 back to back, so both see the same machine load. Reported per run:
the command's throughput over its episodes (``metrics.json``'s episodes/s: from the first episode to the last,
excluding interpreter start-up and the final report), its wall time and its CPU time per episode.

To compare two versions, run this script from each checkout in turn (``PYTHONPATH=OTHER/src`` makes the child
processes run another tree's code), e.g. the start of a branch in a ``git worktree``.

    .venv/bin/python scripts/bench_batch.py [--latency 0.2] [--episodes 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segloop.agent.actions import InspectMask, Segment, Submit, ZoomIn
from segloop.agent.parser import format_call

ROOT = Path(__file__).resolve().parents[1]
SIZE = 1536
# The four turns, in the frames of 1008-pixel views: the middle of the image, then a box inside it.
SCRIPT = [format_call(ZoomIn(bbox_2d=[252, 252, 756, 756])), format_call(Segment(bbox_2d=[300, 260, 620, 700])),
          format_call(InspectMask()), format_call(Submit())]
# ``segloop batch`` with the box segmenter among the choices (the CLI offers only answer-quality segmenters).
CHILD = ("import sys; from segloop.cli import agent_options, main; "
         "agent_options.SEGMENTER_CHOICES = (*agent_options.SEGMENTER_CHOICES, 'box'); sys.exit(main(sys.argv[1:]))")


def _batch(base_url: str, manifest: Path, out: Path, concurrency: int, episodes: int) -> dict[str, float]:
    command = [sys.executable, "-c", CHILD, "batch", "--data", str(manifest), "--out", str(out), "--quiet",
               "--policy", "openai", "--model", "scripted", "--base-url", base_url, "--segmenter", "box",
               "--concurrency", str(concurrency), "--limit", str(episodes)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "none"})
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"segloop batch exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    metrics = json.loads((out / "metrics.json").read_text())
    if not (out / "report.html").exists() or metrics["answered"] != episodes:
        raise SystemExit(f"segloop batch in {out} did not answer all {episodes} episodes with a report")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"concurrency": concurrency, "episodes": episodes, "episodes_per_s": metrics["episodes_per_s"],
            "wall_s": wall, "cpu_ms_per_episode": 1000 * cpu / episodes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per answer")
    parser.add_argument("--episodes", type=int, default=64, help="episodes per run")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs; the median ratio is reported")
    args = parser.parse_args()
    if min(args.episodes, args.repeats) < 1 or args.latency < 0:
        parser.error("episodes and repeats must be at least 1, the latency at least 0")
    import segloop

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "openai_server.py"), "--script",
                               json.dumps(SCRIPT), "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    rows = []
    load_before = os.getloadavg()
    try:
        base_url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            subprocess.run([sys.executable, "-m", "segloop", "synth", "--out", str(folder / "data"), "--n",
                            str(args.episodes), "--size", str(SIZE), "--difficulty", "medium", "--no-target-rate",
                            "0", "--quiet"], check=True, capture_output=True)
            manifest = folder / "data" / "manifest.jsonl"
            _batch(base_url, manifest, folder / "warm-up", 4, 4)  # the OS's file cache, the server's threads
            for repeat in range(args.repeats):
                for concurrency in (1, 32):
                    row = _batch(base_url, manifest, folder / f"out{repeat}-{concurrency}", concurrency, args.episodes)
                    rows.append({"repeat": repeat, **row})
    finally:
        server.terminate()
        server.wait(timeout=10)
    load_after = os.getloadavg()
    print(f"segloop {segloop.__file__}: segloop batch, {args.episodes} episodes of {SIZE}x{SIZE} scenes, "
          f"server latency {args.latency * 1000:.0f} ms, {len(SCRIPT)} turns per episode, box segmenter, overlays "
          f"and report; {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'repeat':>6} {'concurrency':>11} {'episodes/s':>10} {'wall s':>7} {'CPU/episode':>11}")
    for r in rows:
        print(f"{r['repeat']:>6} {r['concurrency']:>11} {r['episodes_per_s']:>10.2f} {r['wall_s']:>7.1f} "
              f"{r['cpu_ms_per_episode']:>8.0f} ms")
    ratios = [b["episodes_per_s"] / a["episodes_per_s"] for a, b in zip(rows[::2], rows[1::2], strict=True)]
    print("speed-up per repeat: " + ", ".join(f"{r:.1f}x" for r in ratios))
    print(f"speed-up at concurrency 32: {statistics.median(ratios):.1f}x (median of {len(ratios)}; ideal 32x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
