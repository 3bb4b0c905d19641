"""The perception cache (``segloop train cache``): the views the compact policy's perception learns from,
rendered once with the graph's own view code and labelled with every object of the world.

Why a cache: making a 768-px scene costs ~30 ms, more than a training step spends on it; scenes are made
once and their views stored as perception's inputs (``policy.perception_input``, so training and
deployment see the same pixels).

Per scene: the full view (the root network's input) and three zoomed views (the zoom network's), each
made by the expert's zoom rule around an object, jittered in size and place as a student's zooms are
(``zoom_views``): the target (when the request has one), a look-alike (an object sharing the target's
colour and other attributes: what a search visits) and a random object. Every object whose centre lies in
a view is a label (``LABEL_COLUMNS``): where its centre is, its box and its attributes. The scenes' requests
and objects are kept too (``scenes.jsonl``), for the probes.

Layout: ``config.json`` (what made it: data, seed, the policy config, counts, time), ``root.npy`` (N, 3, R, R)
and ``zoom.npy`` (M, 3, Z, Z) uint8, ``root_magnification.npy`` / ``zoom_magnification.npy`` (perception's
scale input per view), ``root_labels.npy`` / ``zoom_labels.npy`` float32 rows of ``LABEL_COLUMNS``,
``scenes.jsonl``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segloop.data.specs import SynthSamples, load_samples
from segloop.data.synth import COLOURS, FILLS, SHAPES, SIZES, SceneObject, generate_scene, object_box, scene_seed
from segloop.policies.compact import CompactConfig
from segloop.policies.compact.policy import magnification, perception_input
from segloop.policies.scripted import model_box, zoom_region
from segloop.tools.views import ViewError, ViewStack, ZoomLimits, render_view

# One row per object seen in a view: the view's row, the object's index in its scene, its centre and box
# sides as shares of the view's sides, and its attributes as indices.
LABEL_COLUMNS = ("view", "object", "cx", "cy", "width", "height", "shape", "colour", "fill", "size")
ZOOMS = ("target", "lookalike", "random")
_ATTRIBUTE_VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "fill": FILLS, "size": SIZES}


class CacheConfig(BaseModel):
    """What ``segloop train cache`` builds."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="the scenes: synth:DIFFICULTY:SIZE:SEED:N[:NO_TARGET_RATE]")
    out: Path = Field(description="the cache directory to write")
    compact_options: dict[str, Any] = Field(default_factory=dict, description="JSON CompactConfig fields of the "
                                                                              "policy the cache is for")
    seed: int = Field(0, description="seed of the zooms' jitter and the look-alike choice")
    workers: int = Field(1, ge=1, description="processes sharing the scenes (one thread each)")


def labels(objects: list[dict[str, Any]], box: tuple[int, int, int, int], view_row: int) -> list[list[float]]:
    """The label rows of the objects whose centre lies in the view of original-pixel ``box``."""
    x1, y1, x2, y2 = box
    rows = []
    for k, obj in enumerate(objects):
        if not (x1 <= obj["cx"] < x2 and y1 <= obj["cy"] < y2):
            continue
        ox1, oy1, ox2, oy2 = object_box(SceneObject(**obj))
        rows.append([view_row, k, (obj["cx"] - x1) / (x2 - x1), (obj["cy"] - y1) / (y2 - y1), (ox2 - ox1) / (x2 - x1),
                     (oy2 - oy1) / (y2 - y1), *(values.index(obj[name]) for name, values in _ATTRIBUTE_VALUES.items())])
    return rows


def lookalike(objects: list[dict[str, Any]], rng: np.random.Generator) -> int | None:
    """An object a student would mistake for object 0 (the target or the near miss): colour counts most (it
    is readable at any size in the first view), then shape, fill and size."""
    target = objects[0]
    others = list(range(1, len(objects)))
    if not others:
        return None
    weights = np.array([4.0 ** (objects[i]["colour"] == target["colour"])
                        * 2.0 ** sum(objects[i][a] == target[a] for a in ("shape", "fill", "size")) for i in others])
    return int(rng.choice(others, p=weights / weights.sum()))


def zoom_views(stack: ViewStack, image_size: tuple[int, int], box: tuple[float, float, float, float],
               zoom_context: float, rng: np.random.Generator) -> Any:
    """A zoom onto the object of original-pixel ``box`` by the expert's rule, its side scaled by a random
    factor and its centre shifted (the zooms a student makes are not the expert's exact ones), executed by
    the graph's view code; None when the rule would not zoom."""
    root = stack.views[0]
    region = zoom_region(tuple(round(v) for v in box), root, image_size, ZoomLimits(), zoom_context, zoom_below=1.0)
    if region is None:
        return None
    side = min((region[2] - region[0]) * math.exp(rng.uniform(-0.25, 0.5)), 0.9 * min(image_size))
    cx = (box[0] + box[2]) / 2 + rng.uniform(-0.125, 0.125) * side
    cy = (box[1] + box[3]) / 2 + rng.uniform(-0.125, 0.125) * side
    x1 = min(max(cx - side / 2, 0), image_size[0] - side)
    y1 = min(max(cy - side / 2, 0), image_size[1] - side)
    try:
        view = stack.zoom_in(model_box(root, (x1, y1, x1 + side, y1 + side)))
    except ViewError:
        return None
    stack.zoom_out()
    return view


@dataclass
class _Shard:
    root: list[np.ndarray]
    zoom: list[np.ndarray]
    root_magnification: list[float]
    zoom_magnification: list[float]
    root_labels: list[list[float]]
    zoom_labels: list[list[float]]
    scenes: list[dict[str, Any]]


def _build_shard(args: tuple[dict[str, Any], str, int, int, int]) -> _Shard:
    config_fields, data, start, stop, seed = args
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    config = CompactConfig.model_validate(config_fields)
    spec = load_samples(data)
    assert isinstance(spec, SynthSamples)
    shard = _Shard([], [], [], [], [], [], [])
    for index in range(start, stop):
        made = generate_scene(scene_seed(spec.seed, index), spec.size, spec.difficulty, spec.no_target_rate)
        objects = made.meta["objects"]
        height, width = made.image.shape[:2]
        rng = np.random.default_rng([seed, index])
        stack = ViewStack(width, height, config.max_side)
        shard.root_labels += labels(objects, stack.current.box.as_tuple(), len(shard.root))
        shard.root.append(perception_input(render_view(made.image, stack.current), config.root_input).numpy())
        shard.root_magnification.append(magnification(stack.current.box.as_tuple(), (width, height)))
        picks = {"target": 0 if made.mask is not None else None, "lookalike": lookalike(objects, rng),
                 "random": int(rng.integers(len(objects)))}
        zooms = []
        for name in ZOOMS:
            obj = picks[name]
            if obj is None:
                continue
            view = zoom_views(stack, (width, height), object_box(SceneObject(**objects[obj])), config.zoom_context, rng)
            if view is None:
                continue
            box = view.box.as_tuple()
            shard.zoom_labels += labels(objects, box, len(shard.zoom))
            shard.zoom.append(perception_input(render_view(made.image, view), config.zoom_input).numpy())
            shard.zoom_magnification.append(magnification(box, (width, height)))
            zooms.append({"name": name, "object": obj, "box": list(box), "row": len(shard.zoom) - 1})
        shard.scenes.append({"scene": index, "width": width, "height": height, "query": made.query,
                             "kind": made.meta["kind"],
                             "has_target": made.mask is not None, "objects": objects, "zooms": zooms})
    return shard


def build(config: CacheConfig) -> dict[str, Any]:
    """Write the cache ``config`` describes, on the trainers' scaffold (``rl.scaffold``: the config file, the
    timing, the summary); returns the summary (the cache's ``config.json`` holds it too)."""
    from segloop.rl.scaffold import TrainingRun

    policy_config = CompactConfig(**config.compact_options)
    spec = load_samples(config.data)
    if not isinstance(spec, SynthSamples):
        raise ValueError("the perception cache is made from synth:... scenes")
    run = TrainingRun("cache", config, config.out, steps=1, seed=config.seed)
    chunk = 250
    jobs = [(policy_config.model_dump(), config.data, s, min(s + chunk, len(spec)), config.seed)
            for s in range(0, len(spec), chunk)]
    if config.workers > 1:  # the workers' CPU is in the run's timing once they have exited
        with multiprocessing.get_context("spawn").Pool(config.workers) as pool:
            shards = pool.map(_build_shard, jobs)
    else:
        shards = [_build_shard(job) for job in jobs]
    root_offset = zoom_offset = 0
    root_labels, zoom_labels, scenes = [], [], []
    for shard in shards:
        root_labels += [[row[0] + root_offset, *row[1:]] for row in shard.root_labels]
        zoom_labels += [[row[0] + zoom_offset, *row[1:]] for row in shard.zoom_labels]
        for scene in shard.scenes:
            scene["root_row"] = len(scenes)  # one full view per scene, in scene order
            for zoom in scene["zooms"]:
                zoom["row"] += zoom_offset
            scenes.append(scene)
        root_offset += len(shard.root)
        zoom_offset += len(shard.zoom)
    np.save(config.out / "root.npy", np.stack([v for s in shards for v in s.root]))
    np.save(config.out / "zoom.npy", np.stack([v for s in shards for v in s.zoom]))
    for kind in ("root", "zoom"):
        values = [v for s in shards for v in getattr(s, f"{kind}_magnification")]
        np.save(config.out / f"{kind}_magnification.npy", np.array(values, dtype=np.float32))
    np.save(config.out / "root_labels.npy", np.array(root_labels, dtype=np.float32).reshape(-1, len(LABEL_COLUMNS)))
    np.save(config.out / "zoom_labels.npy", np.array(zoom_labels, dtype=np.float32).reshape(-1, len(LABEL_COLUMNS)))
    with (config.out / "scenes.jsonl").open("w") as handle:
        for scene in scenes:
            handle.write(json.dumps(scene) + "\n")
    summary = {"data": config.data, "seed": config.seed, "scenes": len(scenes), "root_views": root_offset,
               "zoom_views": zoom_offset, "objects_labelled": len(root_labels) + len(zoom_labels),
               **run.timing(), "policy_config": policy_config.model_dump()}
    (config.out / "config.json").write_text(json.dumps(summary, indent=1))
    return run.finish(summary, [], "perception cache",
                      f"{root_offset} full and {zoom_offset} zoomed views of {len(scenes)} scenes "
                      f"({summary['objects_labelled']} objects labelled) in {config.out}")


class PerceptionCache:
    """A cache directory opened for training: images memory-mapped, labels grouped by view."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.summary = json.loads((self.directory / "config.json").read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.directory} is not a perception cache (segloop train cache)") from None
        self.images = {k: np.load(self.directory / f"{k}.npy", mmap_mode="r") for k in ("root", "zoom")}
        self.magnification = {k: np.load(self.directory / f"{k}_magnification.npy") for k in ("root", "zoom")}
        self.labels = {}
        for kind in ("root", "zoom"):
            rows = np.load(self.directory / f"{kind}_labels.npy")
            grouped: list[list[np.ndarray]] = [[] for _ in range(len(self.images[kind]))]
            for row in rows:
                grouped[int(row[0])].append(row)
            self.labels[kind] = [np.array(g, dtype=np.float32).reshape(-1, len(LABEL_COLUMNS)) for g in grouped]
        self.scenes = [json.loads(line) for line in (self.directory / "scenes.jsonl").read_text().splitlines()]

    def check(self, config: CompactConfig) -> None:
        """Refuse a cache made for other inputs than ``config``'s."""
        made = self.summary["policy_config"]
        for key in ("max_side", "root_input", "zoom_input", "zoom_context"):
            if made.get(key) != getattr(config, key):
                raise ValueError(f"{self.directory}: made for {key}={made.get(key)!r}, the policy has "
                                 f"{getattr(config, key)!r}; rebuild the cache")
