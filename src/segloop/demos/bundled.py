"""The demo's bundled sample images: scenes of the synthetic world (``segloop.agent.synth``), small enough
to ship in the package, with the referring query each one was generated with.

    python -m segloop.demos.bundled        # rewrites src/segloop/demos/samples/

The samples are generated, never copied from a dataset, so they carry no licence beyond the project's.
"""

from __future__ import annotations

import json
from pathlib import Path

from segloop.agent.synth import generate_scene
from segloop.tools.images import save_image

SAMPLES_DIR = Path(__file__).parent / "samples"
INDEX = SAMPLES_DIR / "samples.json"
# (seed, side, difficulty): chosen by hand for a spread of query kinds and target sizes; the first is the
# README's example and the screenshot's request.
CHOSEN: tuple[tuple[int, int, str], ...] = ((5, 384, "easy"), (1, 384, "easy"), (0, 384, "easy"), (11, 448, "medium"))


def bundled_samples() -> list[tuple[Path, str]]:
    """The bundled samples as (image path, query); empty when the folder was not shipped."""
    if not INDEX.exists():
        return []
    return [(SAMPLES_DIR / entry["image"], entry["query"]) for entry in json.loads(INDEX.read_text())]


def main() -> None:
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed, side, difficulty in CHOSEN:
        scene = generate_scene(seed, size=side, difficulty=difficulty)
        name = f"scene_{difficulty}_{seed}.png"
        save_image(scene.image, SAMPLES_DIR / name)
        entries.append({"image": name, "query": scene.query, "kind": scene.meta["kind"], "seed": seed,
                        "difficulty": difficulty})
    INDEX.write_text(json.dumps(entries, indent=1) + "\n")
    for entry in entries:
        print(entry["image"], "-", entry["query"])


if __name__ == "__main__":
    main()
