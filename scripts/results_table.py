"""The README's results table, reproduced by one command.

Held-out synthetic scenes (default ``synth:easy:768:2000:200``: seed 2000, while training used seeds 1
and 2 and its held-out curves seed 1000, so no choice was made looking at these scenes) are run through
the agent graph with GrabCut by: the compact policy untrained (fresh weights, seed 0, the shipped
checkpoint's architecture), after SFT, after SFT + GRPO (the shipped checkpoint), the oracle and the
single-shot baseline. Prints gIoU / cIoU overall and by size class as a Markdown table, tool
use of the compact policies, and GRPO - SFT in gIoU with a paired bootstrap 95% interval over scenes.

    .venv/bin/python scripts/results_table.py [--sft runs/default_agent/sft/final] [--data SPEC] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("L", "M", "S", "XS", "XXS")


def evaluate_all(data: str, n: int, sft: Path, grpo: Path, max_turns: int) -> dict[str, dict[str, Any]]:
    import torch

    from segloop.agent.episode import EpisodeConfig
    from segloop.agent.synth import VOCABULARY
    from segloop.policies import AgentSpec, build_agent, build_policy
    from segloop.policies.compact import CompactPolicy
    from segloop.rl.rollout import evaluate, items
    from segloop.tools.segmenters import build_segmenter

    torch.set_num_threads(1)
    held_out = items(data)
    chosen = [held_out[i] for i in range(min(n, len(held_out)))]
    trained = CompactPolicy.from_pretrained(grpo)
    options = trained.config.model_dump(exclude={"segloop_policy", "vocabulary"})
    policies = {
        "compact, untrained": CompactPolicy.create(list(VOCABULARY), seed=0, **options),
        "compact, SFT": CompactPolicy.from_pretrained(sft),
        "compact, SFT + GRPO": trained,
        "oracle": build_policy("oracle", max_side=trained.max_side),
        "single-shot": build_policy("single-shot", max_side=trained.max_side),
    }
    segmenter = build_segmenter("grabcut")
    spec = AgentSpec(episode=EpisodeConfig(max_turns=max_turns))
    results = {}
    for name, policy in policies.items():
        agent = build_agent(spec, policy=policy, segmenter=segmenter)
        results[name] = evaluate(agent, chosen, prefix=name.replace(" ", ""))
        print(f"{name}: gIoU {results[name]['giou']:.3f}", file=sys.stderr)
    return results


def bootstrap(a: dict[str, float], b: dict[str, float], rounds: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a over the shared samples and its paired bootstrap 95% interval."""
    ids = sorted(set(a) & set(b))
    diff = np.array([b[i] - a[i] for i in ids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def table(results: dict[str, dict[str, Any]]) -> str:
    sizes = [s for s in SIZES if any(s in r["by_size"] for r in results.values())]
    first = next(iter(results.values()))
    counts = " / ".join(f"{s} {first['by_size'][s]['n']}" for s in sizes if s in first["by_size"])
    head = ("| policy | gIoU | cIoU | " + " | ".join(f"gIoU {s}" for s in sizes)
            + " | zoom | first zoom holds target | inspect | turns |")
    lines = [f"n = {first['n']} scenes ({counts})", "", head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        by_size = [f"{r['by_size'][s]['giou']:.3f}" if s in r["by_size"] else "-" for s in sizes]
        hit = "-" if r["first_zoom_hit"] is None else f"{r['first_zoom_hit']:.2f}"
        lines.append(f"| {name} | {r['giou']:.3f} | {r['ciou']:.3f} | " + " | ".join(by_size)
                     + f" | {r['zoom_rate']:.2f} | {hit} | {r['inspect_rate']:.2f} | {r['turns']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synth:easy:768:2000:200", help="held-out scenes (a --data spec)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--sft", type=Path, default=ROOT / "runs/default_agent/sft/final")
    parser.add_argument("--grpo", type=Path, default=ROOT / "src/segloop/policies/compact/checkpoint")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the full results here")
    args = parser.parse_args()
    for path in (args.sft, args.grpo):
        if not (path / "config.json").is_file():
            print(f"results_table: no compact checkpoint at {path} (run scripts/train_default_agent.sh)",
                  file=sys.stderr)
            return 2
    results = evaluate_all(args.data, args.n, args.sft, args.grpo, args.max_turns)
    mean, low, high = bootstrap(results["compact, SFT"]["per_sample"], results["compact, SFT + GRPO"]["per_sample"])
    print(table(results))
    print(f"\nGRPO - SFT, gIoU: {mean:+.3f} (paired bootstrap 95% interval {low:+.3f} .. {high:+.3f})")
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "results": results,
                                         "grpo_minus_sft": {"mean": mean, "low": low, "high": high}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
