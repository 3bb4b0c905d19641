"""Score policies on a set of scenes with the search metrics, one thread, CPU and wall time per policy.

    .venv/bin/python scripts/dev_eval.py --data synth:easy:768:1000:200:0.1 \\
        --policy compact=runs/x/final --policy oracle --policy compact-expert [--json OUT]

A policy is ``oracle``, ``compact-expert`` (the compact policy's expert), ``single-shot`` or
``NAME=DIR`` (a compact checkpoint). Per-sample IoUs go to ``--json`` for paired comparisons
(``--compare A.json B.json`` prints B - A with a paired bootstrap interval).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

KEYS = ("giou", "first_zoom_hit", "some_zoom_hit", "zoom_rate", "zoom_out_rate", "zooms", "turns",
        "no_target_accuracy", "false_no_target")


def build(spec: str, max_side: int) -> tuple[str, Any]:
    from segloop.policies.compact import CompactPolicy
    from segloop.policies.registry import build_policy

    if "=" in spec:
        name, directory = spec.split("=", 1)
        return name, CompactPolicy.from_pretrained(directory)
    return spec, build_policy(spec, max_side=max_side)


def line(name: str, result: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    sizes = " ".join(f"{k}:{v['giou']:.3f}({v['n']})" for k, v in result["by_size"].items())
    kinds = " ".join(f"{k}:{v['giou']:.3f}" for k, v in result["by_kind"].items())
    return (f"{name}: " + " ".join(f"{k} {fmt(result.get(k))}" for k in KEYS)
            + f"\n  by size {sizes}\n  by kind {kinds}\n  cpu {result['cpu_s']:.0f}s wall {result['wall_s']:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synth:easy:768:1000:200:0.1")
    parser.add_argument("--policy", action="append", default=[])
    parser.add_argument("--max-side", type=int, default=224)
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results_table import bootstrap

        a, b = (json.loads(p.read_text()) for p in args.compare)
        for name in b:
            if name in a:
                mean, low, high = bootstrap(a[name]["per_sample"], b[name]["per_sample"])
                print(f"{name}: {mean:+.3f} ({low:+.3f} .. {high:+.3f})")
        return 0

    import cv2
    import torch

    from segloop.agent.episode import EpisodeConfig
    from segloop.data.specs import first_items
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.rl.rollout import evaluate
    from segloop.tools.segmenters import build_segmenter

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    chosen = first_items(args.data, 10**9)
    segmenter = build_segmenter("grabcut")
    spec = AgentSpec(episode=EpisodeConfig(max_turns=args.max_turns))
    results = {}
    for policy_spec in args.policy:
        name, policy = build(policy_spec, args.max_side)
        cpu, wall = time.process_time(), time.perf_counter()
        result = evaluate(build_agent(spec, policy=policy, segmenter=segmenter), chosen, prefix=name)
        result.update(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall)
        results[name] = result
        print(line(name, result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
