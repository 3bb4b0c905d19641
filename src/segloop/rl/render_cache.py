"""The render cache (``segloop train cache``): the compact policy's inputs on synthetic scenes, labelled
by the expert, on disk.

Why: the decision the reward hangs on is where the first zoom goes, and a policy learns it from many
distinct first views (measured: ~12k scenes, ~20 CPU-minutes of dense training). Making a 768-px scene
costs ~30 ms, more than training on it; so scenes are made once, the states that matter are rendered
with the graph's own view code (``tools.views``) and turned into inputs by the policy's own
``inputs_of`` (so training and deployment see the same pixels, visited planes and state vectors), and
the compact expert (``OraclePolicy(compact=True)``) labels them, exactly as DAgger does later.

Per scene, two short scripted walks through the views (episode turns are simulated, not run by the
graph: no segmenter is called, so no state here holds a candidate):
- direct: the full view (turn 0), then the expert's zoom onto the target, jittered in size and place
  (turn 1: segment the target, or zoom further);
- search: the full view, a zoom onto a look-alike (an object sharing the target's colour and other
  attributes; for a "no such object" query, the near miss it was made from), zoom_out, sometimes a
  second look-alike and zoom_out, then the target's zoom: "not here -> zoom out", "the next candidate
  given what was visited", and the target's view after a search;
- swapped queries: a zoomed view seen with a query that names another object. A look-alike's view with a
  query naming that look-alike is "segment it"; the target's view with a query naming an object outside
  it is "not here". Why: the zoomed network learnt the segment-or-leave decision from the picture alone
  (measured: its accuracy was the same with the query removed); the same picture under two queries with
  opposite labels leaves it no way but to read the query.
Every state is stored with its label (the expert's action as the policy's parts) and, for the go/no-go
checks, the target's box and the state's view.

Layout of a cache directory: ``config.json`` (the policy config the inputs were made for and the data
spec), ``images.npy`` (M, 3, S, S) uint8, and per state ``index.npy`` (image row), ``visited.npy``
(bit-packed S x S), ``state.npy``, ``parts.npy``, ``query.npy`` (padded ids), ``target.npy`` (target
box in original pixels, -1 when none), ``view.npy`` (view box and model size), ``tags.npy`` (scene,
walk step, zooms so far, kind of query).
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Kinds of query, in ``tags[:, 3]``.
KIND_CODES = ("attribute", "unique", "superlative", "relation", "no_target")
# Walk steps, in ``tags[:, 1]``: what the state is.
STEPS = ("root", "target_view", "lookalike_view", "root_after_miss", "swapped_view")


@dataclass
class _Walk:
    """A simulated episode: the view stack, the transcript and pictures the policy reads."""

    image: np.ndarray
    query: str
    max_side: int
    episode_id: str
    max_turns: int = 8
    stack: Any = None
    messages: list = field(default_factory=list)
    pictures: dict[str, np.ndarray] = field(default_factory=dict)
    turn: int = 0
    last_turn: Any = None  # the previous call, parsed (``PolicyContext.last_turn``)

    def __post_init__(self) -> None:
        from segloop.agent.policy import ChatMessage
        from segloop.tools.views import ViewStack, render_view

        height, width = self.image.shape[:2]
        self.stack = ViewStack(width, height, self.max_side)
        self.pictures["request"] = render_view(self.image, self.stack.current)
        self.messages = [ChatMessage(role="system", content="tools"),
                         ChatMessage(role="user", content=self.query, image_id="request")]

    def context(self, truth: np.ndarray | None) -> Any:
        from segloop.agent.policy import PolicyContext

        height, width = self.image.shape[:2]
        return PolicyContext(episode_id=self.episode_id, query=self.query, messages=list(self.messages),
                             images=self.pictures, view=self.stack.current, view_depth=len(self.stack.views) - 1,
                             image_size=(width, height), turn=self.turn, max_turns=self.max_turns,
                             last_turn=self.last_turn, candidate=None, ground_truth=truth)

    def step(self, text: str) -> None:
        """Execute a zoom_in / zoom_out call as the graph would, and show its picture."""
        from segloop.agent.actions import ZoomIn
        from segloop.agent.parser import parse_turn
        from segloop.agent.policy import ChatMessage
        from segloop.tools.views import render_view

        self.last_turn = parse_turn(text)
        action = self.last_turn.action
        if isinstance(action, ZoomIn):
            self.stack.zoom_in(action.bbox_2d)
        else:
            self.stack.zoom_out()
        self.turn += 1
        picture = f"turn_{self.turn:02d}"
        self.pictures[picture] = render_view(self.image, self.stack.current)
        self.messages += [ChatMessage(role="assistant", content=text),
                          ChatMessage(role="tool", content="ok", image_id=picture)]


def _object_box(obj: dict[str, Any]) -> tuple[float, float, float, float]:
    r = obj["diameter"] / 2
    return obj["cx"] - r, obj["cy"] - r, obj["cx"] + r, obj["cy"] + r


def _lookalikes(objects: list[dict[str, Any]], no_target: bool, rng: np.random.Generator, n: int) -> list[int]:
    """Up to ``n`` distinct objects a student would mistake for the target: colour counts most (it is
    readable at any size in the first view), then shape, fill and size. For a "no such object" query
    the near miss (object 0, which the query describes with one attribute changed) comes first."""
    target = objects[0]
    others = list(range(1, len(objects)))
    if not others:
        return [0] if no_target else []
    weights = np.array([4.0 ** (objects[i]["colour"] == target["colour"])
                        * 2.0 ** sum(objects[i][a] == target[a] for a in ("shape", "fill", "size")) for i in others])
    chosen = [int(i) for i in rng.choice(others, size=min(n, len(others)), replace=False, p=weights / weights.sum())]
    return ([0, *chosen])[:n] if no_target else chosen


def _zoom_text(walk: _Walk, box: tuple[float, float, float, float], oracle: Any, rng: np.random.Generator,
               holds: tuple[float, float, float, float] | None = None) -> str | None:
    """A zoom_in call around an original-pixel ``box`` by the expert's zoom rule, its side scaled by a
    random factor and its centre shifted (keeping ``holds`` inside when given): the zooms a student
    makes are not the expert's exact ones. None when the rule would not zoom."""
    from segloop.agent.actions import ZoomIn
    from segloop.agent.parser import format_call
    from segloop.policies.scripted import model_box
    from segloop.tools.views import ZoomLimits

    view = walk.stack.current
    region = oracle.zoom_region(tuple(round(v) for v in box), view, walk.image.shape[1::-1], ZoomLimits())
    if region is None:
        return None
    side = (region[2] - region[0]) * math.exp(rng.uniform(-0.25, 0.5))
    side = min(side, 0.9 * min(view.box.width, view.box.height))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    inner = holds or box
    slack_x = max(0.0, (side - (inner[2] - inner[0])) / 2 * 0.8)
    slack_y = max(0.0, (side - (inner[3] - inner[1])) / 2 * 0.8)
    cx += rng.uniform(-slack_x, slack_x) if holds is not None else rng.uniform(-0.25, 0.25) * side
    cy += rng.uniform(-slack_y, slack_y) if holds is not None else rng.uniform(-0.25, 0.25) * side
    b = view.box
    x1 = min(max(cx - side / 2, b.x1), b.x2 - side)
    y1 = min(max(cy - side / 2, b.y1), b.y2 - side)
    return format_call(ZoomIn(bbox_2d=model_box(view, (x1, y1, x1 + side, y1 + side))))


class _Store:
    """Columns of states and the de-duplicated pictures they point to."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.rows: dict[str, list[np.ndarray]] = {k: [] for k in ("index", "visited", "state", "parts", "query",
                                                                   "target", "view", "tags")}
        self._seen: dict[int, int] = {}

    def add(self, inputs: dict[str, Any], parts: Any, target: tuple[int, ...] | None, view: Any,
            tags: tuple[int, int, int, int], max_words: int) -> None:
        image = inputs["image"].numpy()
        key = hash(image.tobytes())
        if key not in self._seen:
            self._seen[key] = len(self.images)
            self.images.append(image)
        query = np.zeros(max_words, dtype=np.int16)
        ids = inputs["query"].numpy()[:max_words]
        query[: len(ids)] = ids
        plane = inputs["visited"].numpy()
        b = view.box
        self.rows["index"].append(np.int32(self._seen[key]))
        self.rows["visited"].append(np.packbits(plane.reshape(-1)))
        self.rows["state"].append(inputs["state"].numpy().astype(np.float32))
        self.rows["parts"].append(parts.numpy().astype(np.int16))
        self.rows["query"].append(query)
        self.rows["target"].append(np.array(target if target is not None else (-1, -1, -1, -1), dtype=np.int32))
        self.rows["view"].append(np.array([b.x1, b.y1, b.x2, b.y2, view.width, view.height], dtype=np.int32))
        self.rows["tags"].append(np.array(tags, dtype=np.int32))


def _scene_states(policy: Any, oracle: Any, item: Any, scene: int, seed: int, store: _Store) -> None:
    """Walk one scene (see the module docstring) and add its labelled states to ``store``."""
    import torch

    from segloop.agent.actions import Segment, ZoomOut
    from segloop.agent.parser import format_call
    from segloop.data.synth import describe, generate_scene, scene_seed
    from segloop.policies.scripted import model_box
    from segloop.tools.masks import box_of

    made = generate_scene(scene_seed(item.seed, scene), item.size, item.difficulty, item.no_target_rate)
    image, query = made.image, made.query
    truth = made.mask if made.mask is not None else np.zeros(image.shape[:2], dtype=bool)
    target = box_of(truth)
    kind = KIND_CODES.index(made.meta["kind"])
    rng = np.random.default_rng([seed, scene])
    max_words = policy.config.max_query_words

    def label(walk: _Walk, step: str) -> tuple[str, Any, dict[str, Any]]:
        """Store the walk's current state with the expert's label; its text, context and inputs."""
        context = walk.context(truth)
        inputs = policy.inputs_of(context)
        turn = asyncio.run(oracle.act(context))
        parts = policy.parts_of(turn.text, context.view, turn.info.get("zoom_target"))
        zooms = policy.zooms_so_far(walk.episode_id)
        store.add(inputs, parts, target, context.view, (scene, STEPS.index(step), zooms, kind), max_words)
        return turn.text, context, inputs

    def swapped(labelled: tuple[str, Any, dict[str, Any]], named: int | None, outside: bool) -> None:
        """The state ``label`` just stored, with a query naming object ``named`` (a random object entirely
        outside the view when ``outside``): "segment it" when it lies inside the view, else "not here"."""
        _, context, inputs = labelled
        b = context.view.box
        objects = made.meta["objects"]

        def inside(i: int) -> bool:
            x1, y1, x2, y2 = _object_box(objects[i])
            return b.x1 <= x1 and b.y1 <= y1 and x2 <= b.x2 and y2 <= b.y2

        def apart(i: int) -> bool:
            x1, y1, x2, y2 = _object_box(objects[i])
            return x2 < b.x1 or x1 > b.x2 or y2 < b.y1 or y1 > b.y2

        if outside:
            away = [i for i in range(1, len(objects)) if apart(i)]
            named = int(rng.choice(away)) if away else None
        if named is None or (not outside and not inside(named)):
            return
        query = describe(made, named, rng)
        if query is None:
            return
        named_box = _object_box(objects[named])
        text = format_call(ZoomOut()) if outside else format_call(Segment(bbox_2d=model_box(context.view, named_box)))
        swapped_inputs = dict(inputs, query=torch.tensor(policy.config.word_ids(query)))
        zooms = policy.zooms_so_far(context.episode_id)
        store.add(swapped_inputs, policy.parts_of(text, context.view), tuple(round(v) for v in named_box),
                  context.view, (scene, STEPS.index("swapped_view"), zooms, kind), max_words)

    # Direct walk: the full view, then a zoom that holds the target.
    walk = _Walk(image, query, policy.max_side, f"c{seed}-{scene}-d")
    label(walk, "root")
    if target is not None:
        zoom = _zoom_text(walk, target, oracle, rng, holds=target)
        if zoom is not None:
            walk.step(zoom)
            swapped(label(walk, "target_view"), None, outside=True)
    policy.end_episode(walk.episode_id)
    oracle.end_episode(walk.episode_id)
    # Search walk: one or two look-alikes visited and left, then the target. Its first state is the
    # direct walk's, so it is only followed (the policy's navigation), not stored again.
    misses = 1 + int(rng.random() < 0.35)
    walk = _Walk(image, query, policy.max_side, f"c{seed}-{scene}-s")
    policy.inputs_of(walk.context(truth))
    for other in _lookalikes(made.meta["objects"], target is None, rng, misses):
        zoom = _zoom_text(walk, _object_box(made.meta["objects"][other]), oracle, rng)
        if zoom is None:
            break
        walk.step(zoom)
        labelled = label(walk, "lookalike_view")
        if "zoom_out" not in labelled[0]:
            break  # this view holds the target after all: the walk found it
        swapped(labelled, other, outside=False)
        walk.step(format_call(ZoomOut()))
        label(walk, "root_after_miss")
    if target is not None and len(walk.stack.views) == 1:
        zoom = _zoom_text(walk, target, oracle, rng, holds=target)
        if zoom is not None:
            walk.step(zoom)
            label(walk, "target_view")
    policy.end_episode(walk.episode_id)
    oracle.end_episode(walk.episode_id)


def _build_shard(args: tuple[dict[str, Any], str, int, int, int, str]) -> dict[str, np.ndarray]:
    config, data, start, stop, seed, _ = args
    import cv2
    import torch

    from segloop.data.specs import load_samples
    from segloop.policies.compact import CompactConfig, CompactPolicy
    from segloop.policies.scripted import OraclePolicy

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    policy = CompactPolicy(CompactConfig.model_validate(config))
    oracle = OraclePolicy(max_side=policy.max_side, compact=True, max_depth=policy.config.max_depth)
    spec = load_samples(data)
    store = _Store()
    for scene in range(start, stop):
        _scene_states(policy, oracle, spec, scene, seed, store)
    return {"images": np.stack(store.images), **{k: np.stack(v) for k, v in store.rows.items()}}


class CacheConfig(BaseModel):
    """What ``segloop train cache`` builds."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="the scenes: synth:DIFFICULTY:SIZE:SEED:N[:NO_TARGET_RATE]")
    out: Path = Field(description="the cache directory to write")
    compact_options: dict[str, Any] = Field(default_factory=dict, description="JSON CompactConfig fields of the "
                                                                              "policy the cache is for")
    seed: int = Field(0, description="seed of the walks' jitter and look-alike choice")
    workers: int = Field(1, ge=1, description="processes sharing the scenes (one thread each)")


def build(config: CacheConfig) -> dict[str, Any]:
    """Build the cache ``config`` describes, for a compact policy of the synthetic world's vocabulary, on the
    trainers' scaffold (``rl.scaffold``: the config file, the timing, the summary)."""
    from segloop.data.synth import VOCABULARY
    from segloop.policies.compact import CompactConfig, build_vocabulary
    from segloop.rl.scaffold import TrainingRun

    run = TrainingRun("cache", config, config.out, steps=1, seed=config.seed)
    policy_config = CompactConfig(vocabulary=build_vocabulary(list(VOCABULARY)), **config.compact_options)
    summary = build_cache(config.out, policy_config.model_dump(), config.data, config.seed, config.workers)
    return run.finish(summary, [], "render cache", f"{summary['states']} states from {summary['scenes']} scenes "
                                                   f"({summary['images']} pictures) in {config.out}")


def build_cache(out: Path, config: dict[str, Any], data: str, seed: int = 0, workers: int = 1,
                chunk: int = 250) -> dict[str, Any]:
    """Write the cache for the scenes of ``data`` (a ``synth:`` spec) under ``out``; returns its summary.
    ``workers`` processes share the scenes (one thread each)."""
    from segloop.data.specs import SynthSamples, load_samples

    spec = load_samples(data)
    if not isinstance(spec, SynthSamples):
        raise ValueError("the render cache is made from synth:... scenes")
    out.mkdir(parents=True, exist_ok=True)
    cpu, wall = time.process_time(), time.perf_counter()
    jobs = [(config, data, s, min(s + chunk, len(spec)), seed, str(out)) for s in range(0, len(spec), chunk)]
    if workers > 1:
        before = _children_cpu()
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            shards = pool.map(_build_shard, jobs)
        children = _children_cpu() - before  # the workers' CPU, counted once they have exited
    else:
        shards = [_build_shard(job) for job in jobs]
        children = 0.0
    offset, merged = 0, {}
    for shard in shards:
        shard["index"] = shard["index"] + offset
        offset += len(shard["images"])
        for key, value in shard.items():
            merged.setdefault(key, []).append(value)
    for key, values in merged.items():
        np.save(out / f"{key}.npy", np.concatenate(values))
    summary = {"data": data, "seed": seed, "scenes": len(spec), "states": int(sum(len(s["parts"]) for s in shards)),
               "images": offset, "cpu_s": round(time.process_time() - cpu + children, 1),
               "wall_s": round(time.perf_counter() - wall, 1), "policy_config": config}
    (out / "config.json").write_text(json.dumps(summary, indent=1))
    return summary


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RenderCache:
    """A cache directory opened for training: arrays memory-mapped, states as ``TurnRecord``s."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.summary = json.loads((self.directory / "config.json").read_text())
        self.arrays = {p.stem: np.load(p, mmap_mode="r") for p in self.directory.glob("*.npy")}
        self.size = int(self.arrays["images"].shape[-1])

    def __len__(self) -> int:
        return len(self.arrays["parts"])

    def check(self, config: Any) -> None:
        """Refuse a cache made for other inputs or labels than ``config``'s (a CompactConfig)."""
        made = self.summary["policy_config"]
        for key in ("vocabulary", "max_side", "input_size", "grid", "size_bins", "min_share", "zoom_context",
                    "max_depth", "max_query_words"):
            if made.get(key) != getattr(config, key):
                raise ValueError(f"{self.directory}: made for {key}={made.get(key)!r}, the policy has "
                                 f"{getattr(config, key)!r}; rebuild the cache")

    def record(self, i: int) -> Any:
        import torch

        from segloop.policies.compact import TurnRecord

        a = self.arrays
        query = np.asarray(a["query"][i]).astype(np.int64)
        query = query[query != 0] if (query != 0).any() else np.array([1])
        visited = np.unpackbits(np.asarray(a["visited"][i]))[: self.size * self.size].reshape(self.size, self.size)
        parts = torch.from_numpy(np.asarray(a["parts"][i]).astype(np.int64))
        return TurnRecord(image=torch.from_numpy(np.array(a["images"][int(a["index"][i])])),
                          candidate=torch.zeros(self.size, self.size, dtype=torch.bool),
                          visited=torch.from_numpy(visited.astype(bool)), query=torch.from_numpy(query),
                          state=torch.from_numpy(np.array(a["state"][i])), parts=parts,
                          log_probs=torch.zeros(len(parts)), imitated=True)
