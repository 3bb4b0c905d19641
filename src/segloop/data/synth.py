"""The synthetic world: seeded, deterministic, high-resolution cluttered scenes with referring queries.

A scene is a textured background (noise, gradient, stripes or checker in muted tones) with many
saturated shapes on it; one of them (the target) is singled out by a query that is true of it and of no
other object. Small targets (size classes S/XS/XXS of ``tools.masks.size_class``) are common, so a
policy that zooms in does better. Everything comes from one ``numpy.random.Generator`` seeded per scene
and is drawn without anti-aliasing, so a seed always gives the same pixels and a mask's pixels are
exactly the target's colours.

The grammar (fixed word order, so a small network with a word encoder can learn it)::

    QUERY  := "the" NP                              kind "attribute"
            | "the only" NP                         kind "unique"
            | "the" SUPER NP                        kind "superlative"
            | "the" NP REL "the" NP                 kind "relation" (the second NP names the anchor)
            | "the" NP   (no object matches it)     kind "no_target"
    NP     := [SIZE] [COLOUR] [FILL] HEAD
    SIZE   := small | medium | large                (the object's size bin; bins do not touch)
    COLOUR := red | green | blue | yellow | purple | orange
    FILL   := solid | striped | hollow
    HEAD   := circle | square | triangle | star | diamond | hexagon | object   ("object": any shape)
    SUPER  := largest | smallest | leftmost | rightmost | topmost | bottommost
    REL    := left of | right of | above | below

Meaning (``resolve`` implements it; the generator keeps a query only if it resolves to the target alone):

- an NP matches the objects that have every attribute it names;
- a superlative picks the matching object with the extreme area or centre coordinate; every matching
  object within a clear margin of the extreme stays a candidate, so only a clear winner is unique;
  NPs under "largest"/"smallest" name no SIZE;
- "A left of B": B's NP must match exactly one object; among the objects A's NP matches whose centre
  lies mostly to the left of B's (horizontal offset at least ``LOOSE`` times the vertical one), the
  one nearest B, with every other one within ``NEAR_MARGIN`` times that distance still a candidate;
  the target itself must lie clearly on that side (offset at least ``STRICT`` times), so no case is
  borderline.

The mask of a hollow shape is its outline (the pixels drawn); a striped shape is filled with its colour
and a darker shade of it. ``generate_scene`` is the Python API (also used for on-the-fly training
data, ``synth:...`` data specs in ``segloop.data.specs``); ``segloop synth`` writes scenes as images, masks
and a ``manifest.jsonl``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

from segloop.tools.masks import box_of, size_class

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
FILLS = ("solid", "striped", "hollow")
SIZES = ("small", "medium", "large")
# Nominal diameter as a share of the image side per size word. The bins leave gaps so the words are
# never borderline; at 1536 px "small" (12-20 px) targets are XXS, "medium" XS/S, "large" S/M.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.008, 0.013), "medium": (0.025, 0.04),
                                               "large": (0.065, 0.10)}
MIN_DIAMETER = 8  # px: below this a star is no longer a star
MIN_SIZE = 128  # px: the smallest image side a scene is drawn at
SUPERLATIVES = ("largest", "smallest", "leftmost", "rightmost", "topmost", "bottommost")
RELATIONS = ("left of", "right of", "above", "below")
HEAD_ANY = "object"
KINDS = ("attribute", "unique", "superlative", "relation", "no_target")
ATTRIBUTES = ("size", "colour", "fill", "shape")  # also the NP's word order
LOOSE = 0.67
STRICT = 2.0
AREA_MARGIN = 1.5  # a "largest" must be this many times the runner-up's area
NEAR_MARGIN = 1.5  # "A left of B" is the A nearest B on that side, by this factor over the next one
STRIPE_SHADE = 0.55

VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    ["the", "only", *SIZES, *COLOURS, *FILLS, *SHAPES, HEAD_ANY, *SUPERLATIVES,
     *itertools.chain.from_iterable(r.split() for r in RELATIONS)]
))


class SynthError(ValueError):
    """A query outside the grammar, or a request the generator cannot meet."""


@dataclass(frozen=True)
class Difficulty:
    objects: tuple[int, int]  # distractor count range, inclusive
    target_sizes: tuple[float, float, float]  # probabilities of small / medium / large targets
    distractor_sizes: tuple[float, float, float]
    kinds: tuple[float, float, float, float]  # attribute / unique / superlative / relation
    confusion: float  # chance a distractor copies each of the target's attributes
    overlap: float  # chance a distractor may partly overlap another object


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty((6, 12), (0.2, 0.4, 0.4), (0.3, 0.4, 0.3), (0.45, 0.25, 0.2, 0.1), 0.25, 0.0),
    "medium": Difficulty((15, 30), (0.35, 0.4, 0.25), (0.4, 0.4, 0.2), (0.3, 0.2, 0.25, 0.25), 0.35, 0.1),
    "hard": Difficulty((35, 60), (0.5, 0.35, 0.15), (0.45, 0.4, 0.15), (0.2, 0.15, 0.3, 0.35), 0.45, 0.2),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    fill: str
    size: str
    cx: float
    cy: float
    diameter: float
    angle: float
    area: float  # of the filled outline polygon, whatever the fill, so "largest" ignores fill

    def attribute(self, name: str) -> str:
        return getattr(self, name)


class NounPhrase(NamedTuple):
    """The attributes an NP names (None: not named). ``shape`` None is the head "object"."""

    size: str | None = None
    colour: str | None = None
    fill: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(value is None or obj.attribute(name) == value for name, value in zip(ATTRIBUTES, self, strict=True))

    def words(self) -> list[str]:
        return [v for v in self[:3] if v is not None] + [self.shape or HEAD_ANY]


class Query(NamedTuple):
    np: NounPhrase
    only: bool = False
    superlative: str | None = None
    relation: str | None = None
    anchor: NounPhrase | None = None

    def text(self) -> str:
        words = ["the", *(["only"] if self.only else []), *([self.superlative] if self.superlative else []),
                 *self.np.words()]
        if self.relation is not None and self.anchor is not None:
            words += [self.relation, "the", *self.anchor.words()]
        return " ".join(words)


# --- the grammar: parse and resolve -----------------------------------------------------------------


def _parse_np(words: list[str], where: str) -> NounPhrase:
    values: dict[str, str] = {}
    vocab = {"size": SIZES, "colour": tuple(COLOURS), "fill": FILLS}
    position = 0
    for name in ("size", "colour", "fill"):
        if position < len(words) and words[position] in vocab[name]:
            values[name] = words[position]
            position += 1
    if position != len(words) - 1 or words[position] not in (*SHAPES, HEAD_ANY):
        raise SynthError(f"{where}: expected [size] [colour] [fill] shape-or-'object', got {' '.join(words)!r}")
    head = words[position]
    return NounPhrase(shape=None if head == HEAD_ANY else head, **values)


def parse_query(text: str) -> Query:
    """A query of the grammar in the module docstring; anything else is a ``SynthError``."""
    words = text.lower().split()
    if not words or words[0] != "the":
        raise SynthError(f"{text!r}: a query starts with 'the'")
    rest = words[1:]
    only = bool(rest) and rest[0] == "only"
    rest = rest[1:] if only else rest
    superlative = rest[0] if rest and rest[0] in SUPERLATIVES else None
    rest = rest[1:] if superlative else rest
    for relation in RELATIONS:
        rel_words = relation.split()
        for i in range(len(rest) - len(rel_words)):
            if rest[i:i + len(rel_words)] == rel_words and rest[i + len(rel_words)] == "the":
                np = _parse_np(rest[:i], text)
                anchor = _parse_np(rest[i + len(rel_words) + 1:], text)
                return Query(np, only, superlative, relation, anchor)
    return Query(_parse_np(rest, text), only, superlative)


def _direction_ok(obj: SceneObject, anchor: SceneObject, relation: str, ratio: float) -> bool:
    dx, dy = obj.cx - anchor.cx, obj.cy - anchor.cy
    along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return along > 0 and along >= ratio * abs(across)


def _superlative_value(obj: SceneObject, superlative: str) -> float:
    # Larger is "more extreme" for every superlative.
    return {"largest": obj.area, "smallest": -obj.area, "leftmost": -obj.cx, "rightmost": obj.cx,
            "topmost": -obj.cy, "bottommost": obj.cy}[superlative]


def _position_margin(a: SceneObject, b: SceneObject) -> float:
    return max(a.diameter, b.diameter)


class World:
    """A scene's objects, with NP matches memoised: the generator asks thousands of queries per scene."""

    def __init__(self, objects: Sequence[SceneObject]) -> None:
        self.objects = tuple(objects)
        self._matches: dict[NounPhrase, list[int]] = {}

    def matching(self, np_: NounPhrase) -> list[int]:
        if np_ not in self._matches:
            self._matches[np_] = [i for i, obj in enumerate(self.objects) if np_.matches(obj)]
        return self._matches[np_]


def resolve(query: Query, scene: Sequence[SceneObject] | World) -> list[int]:
    """Indices of the objects the query may denote (see the module docstring); with a relation, the
    candidates for any object the anchor NP matches."""
    world = scene if isinstance(scene, World) else World(scene)
    objects = world.objects
    candidates = world.matching(query.np)
    if query.superlative is not None and candidates:
        values = {i: _superlative_value(objects[i], query.superlative) for i in candidates}
        best = max(candidates, key=lambda i: values[i])
        if query.superlative in ("largest", "smallest"):
            top = objects[best].area
            candidates = [i for i in candidates
                          if max(top, objects[i].area) < AREA_MARGIN * min(top, objects[i].area)]
        else:
            candidates = [i for i in candidates
                          if values[best] - values[i] < _position_margin(objects[best], objects[i])]
    if query.relation is not None and query.anchor is not None:
        kept: set[int] = set()
        for a in world.matching(query.anchor):
            anchor = objects[a]
            cone = {i: math.hypot(objects[i].cx - anchor.cx, objects[i].cy - anchor.cy) for i in candidates
                    if i != a and _direction_ok(objects[i], anchor, query.relation, LOOSE)}
            if cone:
                nearest = min(cone.values())
                kept.update(i for i, d in cone.items() if d < NEAR_MARGIN * nearest)
        candidates = sorted(kept)
    return candidates


def refers_to(query: Query, scene: Sequence[SceneObject] | World) -> int | None:
    """The one object the query singles out, or None when it denotes none or several (or its anchor
    is not unique)."""
    world = scene if isinstance(scene, World) else World(scene)
    if query.anchor is not None and len(world.matching(query.anchor)) != 1:
        return None
    found = resolve(query, world)
    return found[0] if len(found) == 1 else None


# --- drawing ----------------------------------------------------------------------------------------


def _outline(obj: SceneObject) -> np.ndarray:
    """Polygon vertices (N, 2) of the object's outline in image pixels."""
    r = obj.diameter / 2
    if obj.shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif obj.shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * (r * 0.8)
    elif obj.shape == "diamond":
        pts = np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], dtype=float) * r
    elif obj.shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
        pts[:, 1] += r * 0.25  # centre the triangle's box on (cx, cy)
    elif obj.shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    else:  # star
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius], 1)
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    return pts @ np.array([[c, s], [-s, c]]) + np.array([obj.cx, obj.cy])


def object_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """The object's drawn extent in image pixels (x1, y1, x2, y2): its outline's bounds."""
    pts = _outline(obj)
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    return float(x1), float(y1), float(x2), float(y2)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _rasterise(obj: SceneObject, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """The object's drawn pixels (no anti-aliasing) as a bool patch and where it sits in the image."""
    pts = _outline(obj)
    height, width = shape
    x1, y1 = np.floor(pts.min(0)).astype(int) - 3
    x2, y2 = np.ceil(pts.max(0)).astype(int) + 4
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    patch = np.zeros((y2 - y1, x2 - x1), dtype=np.uint8)
    local = np.round((pts - [x1, y1]) * 16).astype(np.int32)[None]  # 4 bits of sub-pixel precision
    if obj.fill == "hollow":
        thickness = max(2, round(obj.diameter * 0.1))
        cv2.polylines(patch, local, True, 1, thickness=thickness, lineType=cv2.LINE_8, shift=4)
    else:
        cv2.fillPoly(patch, local, 1, lineType=cv2.LINE_8, shift=4)
    return (slice(y1, y2), slice(x1, x2)), patch.astype(bool)


def _draw(obj: SceneObject, image: np.ndarray, labels: np.ndarray, label: int) -> int:
    """Paint the object into the image and its label into the label map; returns its pixel count."""
    where, inside = _rasterise(obj, labels.shape)
    colour = np.array(COLOURS[obj.colour], dtype=np.uint8)
    region = image[where]
    if obj.fill == "striped":
        period = max(4, round(obj.diameter / 5))
        yy, xx = np.mgrid[where]
        light = ((xx + yy) // (period // 2)) % 2 == 0
        region[inside & light] = colour
        region[inside & ~light] = (colour * STRIPE_SHADE).astype(np.uint8)
    else:
        region[inside] = colour
    labels[where][inside] = label
    return int(np.count_nonzero(inside))


def _muted(rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.uniform(70, 190) + rng.uniform(-18, 18, 3), 0, 255)


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A muted texture: noise, gradient, stripes or checker between two tones, with fine grain on top."""
    kind = rng.integers(4)
    a, b = _muted(rng), _muted(rng)
    if kind == 0:
        coarse = rng.random((8, 8)).astype(np.float32)
        weight = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    else:
        coords = np.arange(side, dtype=np.float32) / side
        theta = rng.uniform(0, np.pi)
        if kind == 1:
            proj = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
            weight = (proj - proj.min()) / (proj.max() - proj.min())
        elif kind == 2:
            proj = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
            weight = np.floor(proj * rng.integers(6, 30)) % 2
        else:
            cells = np.floor(coords * rng.integers(6, 24))
            weight = (cells[None, :] + cells[:, None]) % 2
    # Blend through a 256-entry palette: one lookup instead of float arithmetic on every channel.
    steps = np.linspace(0.0, 1.0, 256)[:, None]
    palette = np.round(a * (1 - steps) + b * steps).astype(np.uint8)
    image = palette[np.clip(weight * 255, 0, 255).astype(np.uint8)]
    # Smooth mottling rather than per-pixel grain: per-pixel noise would make every PNG ~2.5 MB.
    # Tones stay inside [52, 208], so an offset of -6..+6 cannot wrap around in uint8.
    cells = max(2, side // 48)
    mottle = cv2.resize(rng.random((cells, cells)).astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    image += np.round(mottle * 12).astype(np.uint8)[:, :, None]
    image -= 6
    return image


# --- scenes ------------------------------------------------------------------------------------------


class Scene(NamedTuple):
    """``image`` uint8 (H, W, 3); ``mask`` bool (H, W), None for a no-target query; ``meta`` holds
    ``kind``, ``size_class``, ``box``, ``scene_seed``, ``difficulty``, ``target``, ``objects``."""

    image: np.ndarray
    mask: np.ndarray | None
    query: str
    meta: dict[str, Any]


def _random_attributes(rng: np.random.Generator, size_weights: tuple[float, ...]) -> dict[str, str]:
    return {"shape": SHAPES[rng.integers(len(SHAPES))], "colour": list(COLOURS)[rng.integers(len(COLOURS))],
            "fill": FILLS[rng.integers(len(FILLS))], "size": SIZES[rng.choice(3, p=size_weights)]}


def _place(rng: np.random.Generator, attrs: dict[str, str], side: int, boxes: list[np.ndarray],
           may_overlap: bool) -> SceneObject | None:
    low, high = SIZE_RANGES[attrs["size"]]
    diameter = max(float(MIN_DIAMETER), rng.uniform(low, high) * side)
    angle = 0.0 if attrs["shape"] == "circle" else rng.uniform(-0.2, 0.2)
    r = diameter / 2 + 2
    existing = np.array(boxes) if boxes else np.zeros((0, 4))
    for _ in range(40):
        cx, cy = rng.uniform(r, side - r, 2)
        box = np.array([cx - r, cy - r, cx + r, cy + r])
        gap = r * 0.3
        ix = np.minimum(existing[:, 2] + gap, box[2]) - np.maximum(existing[:, 0] - gap, box[0])
        iy = np.minimum(existing[:, 3] + gap, box[3]) - np.maximum(existing[:, 1] - gap, box[1])
        inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
        if may_overlap:
            areas = np.minimum((existing[:, 2] - existing[:, 0]) * (existing[:, 3] - existing[:, 1]), (2 * r) ** 2)
            ok = bool(np.all(inter <= 0.3 * areas))
        else:
            ok = not np.any(inter > 0)
        if ok:
            boxes.append(box)
            obj = SceneObject(cx=float(cx), cy=float(cy), diameter=diameter, angle=float(angle), area=0.0, **attrs)
            return SceneObject(**{**asdict(obj), "area": _polygon_area(_outline(obj))})
    return None


def _subsets(with_size: bool = True) -> list[tuple[str, ...]]:
    names = ATTRIBUTES if with_size else ATTRIBUTES[1:]
    return [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]


def _np_of(obj: SceneObject, names: tuple[str, ...]) -> NounPhrase:
    return NounPhrase(**{name: obj.attribute(name) for name in names})


def _unique_nps(world: World, index: int) -> list[NounPhrase]:
    nps = [_np_of(world.objects[index], names) for names in _subsets() if names]
    return [np_ for np_ in nps if refers_to(Query(np_), world) == index]


def _pick(rng: np.random.Generator, options: list[Any]) -> Any:
    """One NP or query, shorter NPs more likely (fewer named attributes reads more naturally)."""
    weights = np.array([0.5 ** sum(v is not None for v in (o.np if isinstance(o, Query) else o)) for o in options])
    return options[rng.choice(len(options), p=weights / weights.sum())]


def _query_for(kind: str, rng: np.random.Generator, world: World, target: int) -> Query | None:
    """A query of this kind that resolves to the target alone, or None if the scene has none."""
    objects = world.objects
    obj = objects[target]
    if kind in ("attribute", "unique"):
        nps = _unique_nps(world, target)
        return Query(_pick(rng, nps), only=kind == "unique") if nps else None
    if kind == "superlative":
        options = [Query(_np_of(obj, names), superlative=sup)
                   for sup in SUPERLATIVES for names in _subsets(with_size=sup not in ("largest", "smallest"))]
        # Only queries whose NP alone is ambiguous: otherwise the superlative says nothing.
        options = [q for q in options if len(resolve(Query(q.np), world)) >= 2 and refers_to(q, world) == target]
        return _pick(rng, options) if options else None
    if kind == "relation":
        near = sorted((i for i in range(len(objects)) if i != target),
                      key=lambda i: math.hypot(objects[i].cx - obj.cx, objects[i].cy - obj.cy))[:10]
        options = []
        for anchor in near:
            anchor_nps = _unique_nps(world, anchor)
            relations = [r for r in RELATIONS if _direction_ok(obj, objects[anchor], r, STRICT)]
            if not anchor_nps or not relations:
                continue
            anchor_np = _pick(rng, anchor_nps)
            for names in _subsets():
                np_ = _np_of(obj, names)
                if np_.matches(objects[anchor]) or len(resolve(Query(np_), world)) < 2:
                    continue
                options += [Query(np_, relation=r, anchor=anchor_np) for r in relations
                            if refers_to(Query(np_, relation=r, anchor=anchor_np), world) == target]
        return _pick(rng, options) if options else None
    raise SynthError(f"unknown query kind {kind!r}")


def _absent_query(rng: np.random.Generator, world: World, target: int) -> Query | None:
    """A near miss: the target's description with one attribute changed so that nothing matches."""
    obj = world.objects[target]
    vocab = {"size": SIZES, "colour": tuple(COLOURS), "fill": FILLS, "shape": SHAPES}
    options = []
    for names in _subsets():
        for changed in names:
            for value in vocab[changed]:
                if value == obj.attribute(changed):
                    continue
                np_ = NounPhrase(**{**_np_of(obj, names)._asdict(), changed: value})
                if not resolve(Query(np_), world):
                    options.append(np_)
    return Query(_pick(rng, options)) if options else None


def _any_query(rng: np.random.Generator, first: str, world: World) -> tuple[Query | None, str]:
    """A query for object 0: of kind ``first`` if the scene allows one, else of any kind that works."""
    others = [KINDS[int(i)] for i in rng.permutation(4) if KINDS[int(i)] != first]
    for kind in (first, *others):
        query = _query_for(kind, rng, world, 0)
        if query is not None:
            return query, kind
    return None, ""


def _distractor(rng: np.random.Generator, cfg: Difficulty, target: dict[str, str], distinct: bool) -> dict[str, str]:
    """Attributes of a distractor: each copied from the target with the difficulty's confusion chance;
    with ``distinct`` never an exact copy, so an attribute query stays possible."""
    attrs = _random_attributes(rng, cfg.distractor_sizes)
    copy = rng.random(4) < cfg.confusion
    attrs = {k: (target[k] if c else v) for (k, v), c in zip(attrs.items(), copy, strict=True)}
    if distinct and attrs == target:
        name = ATTRIBUTES[rng.integers(4)]
        values = {"size": SIZES, "colour": tuple(COLOURS), "fill": FILLS, "shape": SHAPES}[name]
        attrs[name] = [v for v in values if v != target[name]][rng.integers(len(values) - 1)]
    return attrs


def _layout(seed: int, size: int, difficulty: str, no_target_rate: float
            ) -> tuple[np.random.Generator, list[SceneObject], Query, str]:
    """The scene's objects, its query and the query's kind, drawn from the scene's generator (which the
    pixels are drawn from next)."""
    if difficulty not in DIFFICULTIES:
        raise SynthError(f"unknown difficulty {difficulty!r}; choose from {', '.join(DIFFICULTIES)}")
    if size < MIN_SIZE:
        raise SynthError(f"image side {size} is too small (at least {MIN_SIZE} px)")
    if not 0.0 <= no_target_rate <= 1.0:
        raise SynthError(f"no-target rate {no_target_rate} is not in [0, 1]")
    cfg = DIFFICULTIES[difficulty]
    rng = np.random.default_rng(seed)
    no_target = bool(rng.random() < no_target_rate)
    for _attempt in range(20):
        target_attrs = _random_attributes(rng, cfg.target_sizes)
        boxes: list[np.ndarray] = []
        target_obj = _place(rng, target_attrs, size, boxes, may_overlap=False)
        if target_obj is None:
            continue
        objects = [target_obj]
        n_distractors = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
        # The kind is drawn before the distractors, so the scene can be made to allow it.
        kind = "no_target" if no_target else KINDS[int(rng.choice(4, p=cfg.kinds))]
        distinct = kind in ("attribute", "unique")
        wanted = [_distractor(rng, cfg, target_attrs, distinct) for _ in range(n_distractors)]
        # Largest first, so big objects still find room in a crowded scene.
        for attrs in sorted(wanted, key=lambda a: -SIZES.index(a["size"])):
            placed = _place(rng, attrs, size, boxes, may_overlap=bool(rng.random() < cfg.overlap))
            if placed is not None:
                objects.append(placed)
        if no_target:
            query = _absent_query(rng, World(objects), 0)
        else:
            query, kind = _any_query(rng, kind, World(objects))
        if query is not None:
            return rng, objects, query, kind
    raise SynthError(f"seed {seed}: no valid query in 20 attempts (difficulty {difficulty})")


def scene_request(seed: int, size: int, difficulty: str, no_target_rate: float = 0.0) -> tuple[str, str]:
    """The query and its kind of the scene ``generate_scene`` makes from these arguments, without drawing its
    pixels (a few milliseconds instead of tens: listing thousands of scenes stays cheap)."""
    _, _, query, kind = _layout(seed, size, difficulty, no_target_rate)
    return query.text(), kind


def generate_scene(seed: int, size: int = 1536, difficulty: str = "medium", no_target_rate: float = 0.0) -> Scene:
    """One scene, fully determined by its arguments (the same call gives the same pixels)."""
    rng, objects, query, kind = _layout(seed, size, difficulty, no_target_rate)
    image = _background(rng, size)
    labels = np.zeros((size, size), dtype=np.int16)
    own = {int(i): _draw(objects[i], image, labels, int(i) + 1) for i in rng.permutation(len(objects))}
    target_pixels = labels == 1
    if np.count_nonzero(target_pixels) < 0.9 * own[0]:
        # Too occluded to be fairly described: paint the target again, on top of everything.
        _draw(objects[0], image, labels, 1)
        target_pixels = labels == 1

    box = box_of(target_pixels)
    meta: dict[str, Any] = {
        "kind": kind,
        "scene_seed": int(seed),
        "difficulty": difficulty,
        "width": size,
        "height": size,
        "n_objects": len(objects),
        "target": {k: getattr(objects[0], k) for k in ATTRIBUTES},
        "objects": [asdict(o) for o in objects],
    }
    if kind == "no_target":
        meta.update(size_class="none", box=None)
        return Scene(image, None, query.text(), meta)
    meta.update(size_class=size_class(np.count_nonzero(target_pixels) / target_pixels.size), box=list(box))
    return Scene(image, target_pixels, query.text(), meta)


# --- other referents of a scene ---------------------------------------------------------------------


def another_referent(scene: Scene, rng: np.random.Generator) -> tuple[str, np.ndarray] | None:
    """A query of the grammar that names another object of ``scene`` (resolving to it alone) and that
    object's mask, or None when no other object can be described. The mask is the object's own drawing:
    objects painted over it are not taken off, so use it on worlds without overlap (``easy``)."""
    objects = [SceneObject(**o) for o in scene.meta["objects"]]
    for other in rng.permutation(np.arange(1, len(objects))):
        query = describe(scene, int(other), rng)
        if query is not None:
            where, inside = _rasterise(objects[int(other)], scene.image.shape[:2])
            mask = np.zeros(scene.image.shape[:2], dtype=bool)
            mask[where] = inside
            return query, mask
    return None


def describe(scene: Scene, index: int, rng: np.random.Generator) -> str | None:
    """A query of the grammar (of a random kind) that resolves to object ``index`` of ``scene`` alone, or
    None when the scene has none for it."""
    world = World([SceneObject(**o) for o in scene.meta["objects"]])
    for kind in rng.permutation(KINDS[:4]):
        query = _query_for(str(kind), rng, world, index)
        if query is not None:
            return query.text()
    return None


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of a set generated with ``seed`` (independent streams per scene)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
