"""The demo's bundled sample images: scenes of the synthetic world (``segloop.data.synth``), small enough
to ship in the package, with the referring query each one was generated with.

    python -m segloop.demos.bundled            # rewrites src/segloop/demos/samples/ from CHOSEN
    python -m segloop.demos.bundled --check    # runs the shipped agent on them: exit 1 if one is not solved
    python -m segloop.demos.bundled --pick 60  # the first seed of each query kind the shipped agent solves

The samples are generated, never copied from a dataset, so they carry no licence beyond the project's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from segloop.data.synth import generate_scene
from segloop.tools.images import save_image

SAMPLES_DIR = Path(__file__).parent / "samples"
INDEX = SAMPLES_DIR / "samples.json"
# The world the shipped agent was trained on (scripts/train_default_agent.sh).
SIDE, DIFFICULTY = 768, "easy"
# Seeds picked by ``--pick 60`` after training: per query kind, the first scene the shipped agent solves.
# So they illustrate what it does when it succeeds; they are not an evaluation (the README table is). The
# first is the README's example and the screenshot's request.
CHOSEN: tuple[int, ...] = (1, 2, 3, 21)
SOLVED_IOU = 0.5


def bundled_samples() -> list[tuple[Path, str]]:
    """The bundled samples as (image path, query); empty when the folder was not shipped."""
    if not INDEX.exists():
        return []
    return [(SAMPLES_DIR / entry["image"], entry["query"]) for entry in json.loads(INDEX.read_text())]


def shipped_agent_ious(seeds: list[int]) -> list[float]:
    """IoU of the shipped compact agent (greedy, GrabCut, 8 turns) on the scenes of these seeds."""
    from segloop.policies.assembly import AgentSpec, build_agent
    from segloop.tools.masks import iou

    agent = build_agent(AgentSpec())
    scenes = [generate_scene(seed, size=SIDE, difficulty=DIFFICULTY) for seed in seeds]

    async def run_all() -> list:
        return await asyncio.gather(*[agent.run(s.image, s.query, episode_id=f"sample-{seed}")
                                      for seed, s in zip(seeds, scenes, strict=True)])

    results = asyncio.run(run_all())
    return [iou(r.mask, s.mask if s.mask is not None else np.zeros_like(r.mask))
            for r, s in zip(results, scenes, strict=True)]


def pick(limit: int) -> list[int]:
    """Per query kind, the first seed below ``limit`` whose scene the shipped agent solves."""
    kinds: dict[str, int] = {}
    for seed, score in zip(range(limit), shipped_agent_ious(list(range(limit))), strict=True):
        kind = generate_scene(seed, size=SIDE, difficulty=DIFFICULTY).meta["kind"]
        if score > SOLVED_IOU and kind not in kinds:
            kinds[kind] = seed
    return list(kinds.values())


def write() -> None:
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for old in SAMPLES_DIR.glob("scene_*.png"):
        old.unlink()
    entries = []
    for seed in CHOSEN:
        scene = generate_scene(seed, size=SIDE, difficulty=DIFFICULTY)
        name = f"scene_{DIFFICULTY}_{seed}.png"
        save_image(scene.image, SAMPLES_DIR / name)
        entries.append({"image": name, "query": scene.query, "kind": scene.meta["kind"], "seed": seed,
                        "size": SIDE, "difficulty": DIFFICULTY})
    INDEX.write_text(json.dumps(entries, indent=1) + "\n")
    for entry in entries:
        print(entry["image"], "-", entry["query"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segloop.demos.bundled", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--check", action="store_true", help="run the shipped agent on the samples")
    parser.add_argument("--pick", type=int, default=None, metavar="N", help="scan seeds 0..N-1 for CHOSEN")
    args = parser.parse_args(argv)
    if args.pick is not None:
        print("CHOSEN =", tuple(pick(args.pick)))
        return 0
    if not args.check:
        write()
        return 0
    scores = shipped_agent_ious(list(CHOSEN))
    for seed, score in zip(CHOSEN, scores, strict=True):
        print(f"seed {seed}: IoU {score:.3f}{'' if score > SOLVED_IOU else '  NOT SOLVED'}")
    return 0 if all(score > SOLVED_IOU for score in scores) else 1


if __name__ == "__main__":
    raise SystemExit(main())
