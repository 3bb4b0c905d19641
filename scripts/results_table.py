"""The README's results table, reproduced by one command.

Held-out synthetic scenes (default ``synth:easy:768:2000:200``: seed 2000, while training used seeds 1, 2
and 3 and its held-out curves seed 1000, so no choice was made looking at these scenes) are run through the
agent graph with GrabCut by: the compact policy untrained (fresh weights, seed 0, the shipped checkpoint's
architecture), densely pre-trained, after SFT (DAgger), after SFT + GRPO (the shipped checkpoint), the
oracle and the single-shot baseline. Printed as Markdown:

- gIoU / cIoU overall and by size class, and how each policy searched (zoom rate, first zoom and some zoom
  holding the target, zoom-out rate, turns);
- GRPO - SFT in gIoU with a paired bootstrap 95% interval over scenes;
- query sensitivity (``--swap-n`` scenes): the query is swapped for one naming another object of the same
  scene; the share of episodes whose mask moves onto the new object (IoU with it > 0.5), against the
  share whose mask is on the original target with the original query;
- "no such object" (``--no-target-data``, scenes with 30% such queries, seed 2001): accuracy on those
  queries and the false "no such object" rate on the others;
- with ``--probe-cache``, the shipped policy's decisions one by one on the probe scenes (``rl.compact.probe``):
  the first view's zoom and top-3, the zoomed judge by kind of request on target and look-alike views;
- loops: episodes (these scenes, and ``--realdata`` photos with the unknown words guessed at) in which a call
  repeats the one just before it after that one failed or gave an empty mask;
- with ``--medium``, the same table for the medium world (``synth:medium:768:2002:200``, never trained on).

    .venv/bin/python scripts/results_table.py --pretrained DIR --sft DIR [--grpo DIR] [--probe-cache DIR]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = ("L", "M", "S", "XS", "XXS")


def _policies(pretrained: Path, sft: Path, grpo: Path) -> dict[str, Any]:
    from segloop.policies.compact import CompactPolicy
    from segloop.policies.registry import build_policy

    trained = CompactPolicy.from_pretrained(grpo)
    options = trained.config.model_dump(exclude={"segloop_policy"})
    return {
        "compact, untrained": CompactPolicy.create(seed=0, **options),
        "compact, pre-trained": CompactPolicy.from_pretrained(pretrained),
        "compact, SFT (DAgger)": CompactPolicy.from_pretrained(sft),
        "compact, SFT + GRPO": trained,
        "oracle": build_policy("oracle", max_side=trained.max_side),
        "single-shot": build_policy("single-shot", max_side=trained.max_side),
    }


def evaluate_all(policies: dict[str, Any], data: str, n: int, max_turns: int) -> dict[str, dict[str, Any]]:
    from segloop.agent.episode import EpisodeConfig
    from segloop.data.specs import first_items
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.rl.rollout import evaluate
    from segloop.tools.segmenters import build_segmenter

    chosen = first_items(data, n)
    segmenter = build_segmenter("grabcut")
    spec = AgentSpec(episode=EpisodeConfig(max_turns=max_turns))
    results = {}
    for name, policy in policies.items():
        agent = build_agent(spec, policy=policy, segmenter=segmenter)
        results[name] = evaluate(agent, chosen, prefix=name.replace(" ", ""))
        print(f"{name}: gIoU {results[name]['giou']:.3f}", file=sys.stderr)
    return results


def query_swap(policy: Any, data: str, n: int, max_turns: int) -> dict[str, float]:
    """The original and a swapped query on each of the first ``n`` scenes that have another describable
    object; the share of masks on their own query's object (IoU > 0.5) for each."""
    from segloop.agent.episode import EpisodeConfig
    from segloop.data.specs import SynthSamples, load_samples
    from segloop.data.synth import another_referent, generate_scene, scene_seed
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.tools.masks import iou

    scenes = load_samples(data)
    if not isinstance(scenes, SynthSamples):
        raise ValueError(f"the query swap needs synthetic scenes (synth:...), not {data}")
    cases = []
    for index in range(min(n, len(scenes))):
        scene = generate_scene(scene_seed(scenes.seed, index), scenes.size, scenes.difficulty, 0.0)
        other = another_referent(scene, np.random.default_rng([scenes.seed, index, 7]))
        if other is not None:
            cases.append((scene, *other))
    agent = build_agent(AgentSpec(episode=EpisodeConfig(max_turns=max_turns)), policy=policy)

    async def run_all() -> list[Any]:
        return await asyncio.gather(*[agent.run(scene.image, query, episode_id=f"swap-{i}-{which}")
                                      for i, (scene, other_query, _) in enumerate(cases)
                                      for which, query in (("original", scene.query), ("swapped", other_query))])

    results = asyncio.run(run_all())
    original = [iou(results[2 * i].mask, scene.mask) > 0.5 for i, (scene, _, _) in enumerate(cases)]
    swapped = [iou(results[2 * i + 1].mask, mask) > 0.5 for i, (_, _, mask) in enumerate(cases)]
    moved = [iou(results[2 * i + 1].mask, results[2 * i].mask) < 0.5 for i in range(len(cases))]
    return {"n": len(cases), "original_on_target": float(np.mean(original)),
            "swapped_on_new_target": float(np.mean(swapped)), "mask_moved": float(np.mean(moved))}


def bootstrap(a: dict[str, float], b: dict[str, float], rounds: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a over the shared samples and its paired bootstrap 95% interval."""
    ids = sorted(set(a) & set(b))
    diff = np.array([b[i] - a[i] for i in ids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def loops(policy: Any, jobs: list[tuple[np.ndarray, str]], max_turns: int) -> dict[str, float]:
    """Episodes in which a call repeats the one just before it after that one failed or gave an empty mask."""
    from segloop.agent.episode import EpisodeConfig
    from segloop.policies.assembly import AgentSpec, build_agent

    agent = build_agent(AgentSpec(episode=EpisodeConfig(max_turns=max_turns, guess_unknown_words=True)),
                        policy=policy)

    async def run_all() -> list[Any]:
        return await asyncio.gather(*[agent.run(image, query, episode_id=f"loop-{i}")
                                      for i, (image, query) in enumerate(jobs)])

    looped = 0
    for result in asyncio.run(run_all()):
        turns = result.trajectory.turns
        looped += any(a.raw_text == b.raw_text and (a.error is not None or "mask is empty" in a.observation)
                      for a, b in itertools.pairwise(turns))
    return {"episodes": len(jobs), "looped": looped}


def table(results: dict[str, dict[str, Any]]) -> str:
    sizes = [s for s in SIZES if any(s in r["by_size"] for r in results.values())]
    first = next(iter(results.values()))
    counts = " / ".join(f"{s} {first['by_size'][s]['n']}" for s in sizes if s in first["by_size"])
    head = ("| policy | gIoU | cIoU | " + " | ".join(f"gIoU {s}" for s in sizes)
            + " | zoom | first zoom holds target | some zoom holds target | zoom-out | turns |")
    lines = [f"n = {first['n']} scenes ({counts})", "", head, "|" + "---|" * (head.count("|") - 1)]

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for name, r in results.items():
        by_size = [f"{r['by_size'][s]['giou']:.3f}" if s in r["by_size"] else "-" for s in sizes]
        lines.append(f"| {name} | {r['giou']:.3f} | {r['ciou']:.3f} | " + " | ".join(by_size)
                     + f" | {r['zoom_rate']:.2f} | {share(r['first_zoom_hit'])} | {share(r['some_zoom_hit'])}"
                     f" | {r['zoom_out_rate']:.2f} | {r['turns']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="synth:easy:768:2000:200", help="held-out scenes (a --data spec)")
    parser.add_argument("--n", type=int, default=200, help="scenes of --data")
    parser.add_argument("--pretrained", type=Path, required=True, help="the densely pre-trained policy")
    parser.add_argument("--sft", type=Path, required=True, help="the policy after SFT (DAgger)")
    parser.add_argument("--grpo", type=Path, default=ROOT / "src/segloop/policies/compact/checkpoint",
                        help="the policy after SFT + GRPO")
    parser.add_argument("--swap-n", type=int, default=100, help="scenes of the query-swap test")
    parser.add_argument("--no-target-data", default="synth:easy:768:2001:200:0.3",
                        help="held-out scenes with 'no such object' queries")
    parser.add_argument("--medium", action="store_true", help="also the medium world (synth:medium:768:2002:200)")
    parser.add_argument("--probe-cache", type=Path, help="a perception cache of held-out scenes for the probes")
    parser.add_argument("--probe-n", type=int, default=400, help="scenes of --probe-cache")
    parser.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata" / "manifest.jsonl",
                        help="real photos for the loop check (skipped when missing)")
    parser.add_argument("--max-turns", type=int, default=8, help="turn budget of every episode")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    args = parser.parse_args()
    for path in (args.pretrained, args.sft, args.grpo):
        if not (path / "config.json").is_file():
            print(f"results_table: no compact checkpoint at {path} (run scripts/train_default_agent.sh)",
                  file=sys.stderr)
            return 2
    import torch

    torch.set_num_threads(args.threads)
    policies = _policies(args.pretrained, args.sft, args.grpo)
    results = evaluate_all(policies, args.data, args.n, args.max_turns)
    mean, low, high = bootstrap(results["compact, SFT (DAgger)"]["per_sample"],
                                results["compact, SFT + GRPO"]["per_sample"])
    print(table(results))
    print(f"\nGRPO - SFT, gIoU: {mean:+.3f} (paired bootstrap 95% interval {low:+.3f} .. {high:+.3f})")
    shipped = policies["compact, SFT + GRPO"]
    swap = query_swap(shipped, args.data, args.swap_n, args.max_turns)
    print(f"\nquery swap on {swap['n']} scenes: mask on the original query's target {swap['original_on_target']:.2f}; "
          f"with the swapped query, on the new target {swap['swapped_on_new_target']:.2f}, "
          f"moved {swap['mask_moved']:.2f}")
    absent = evaluate_all({"compact, SFT + GRPO": shipped}, args.no_target_data, 200, args.max_turns)
    absent = absent["compact, SFT + GRPO"]
    print(f"'no such object' ({args.no_target_data}): accuracy {absent['no_target_accuracy']:.2f}, "
          f"false 'no such object' rate {absent['false_no_target']:.2f}")
    output: dict[str, Any] = {"data": args.data, "results": results, "grpo_minus_sft": {"mean": mean, "low": low,
                                                                                       "high": high},
                              "query_swap": swap, "no_target": {"data": args.no_target_data, "result": absent}}
    if args.probe_cache is not None:
        from segloop.rl.compact.cache import PerceptionCache
        from segloop.rl.compact.probe import probe

        probed = probe(shipped, PerceptionCache(args.probe_cache), args.probe_n)
        print(f"\nprobe ({args.probe_cache}, {args.probe_n} scenes), rate (states): " + ", ".join(
            f"{k} {v:.2f} ({probed[k + '_n']})" for k, v in probed.items() if not k.endswith("_n")))
        output["probe"] = probed
    from segloop.data.specs import first_items, load_items

    jobs = [(item.image, item.sample.query) for item in first_items(args.data, args.n)]
    if args.realdata.is_file():
        jobs += [(item.image, item.sample.query) for item in load_items(args.realdata)]
    looped = loops(shipped, jobs, args.max_turns)
    print(f"loops: {looped['looped']} of {looped['episodes']} episodes repeat a call right after it failed or "
          "gave an empty mask (held-out scenes and real photos, unknown words guessed at)")
    output["loops"] = looped
    if args.medium:
        medium = evaluate_all(policies, "synth:medium:768:2002:200", 200, args.max_turns)
        print("\nmedium world (synth:medium:768:2002:200):\n" + table(medium))
        output["medium"] = medium
    if args.json:
        args.json.write_text(json.dumps(output, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
