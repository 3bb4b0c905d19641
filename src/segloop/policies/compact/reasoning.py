"""From what is seen to which object the request means: detected objects, noun-phrase matches, referents.

Perception (``perception.py``) says, per grid cell, how likely an object's centre is there and what that
object's shape, colour, fill and size are. Here those maps become a list of ``Objects`` in original-image
pixels (the cells where objectness peaks), and the request's slots (``query.py``) are compared with them
explicitly:

- a noun phrase's match ``m_i`` = P(object i exists) x the product of P(attribute = the named value);
- the referent scores ``R_i`` = P(object i is what the request singles out), by the world's semantics
  (``agent.synth``): for "the NP" and "the only NP", i matches and no other object does; for a superlative,
  i matches and no matching object is more extreme (or within the world's margin); for "A left of B", B is
  the one object matching its phrase, i matches A, lies clearly on that side of B, and no other A-match on
  that side is nearly as close. Objects are treated as independent, so each score is a product.

Why explicit: the decision "is this the target" learnt from one bit per state never bound the query to what
is seen (docs/notes/zoomed-judge.md), while the attributes themselves are learnt densely in minutes. The
decisions on top (``decisions.py``) read these scores and learn what to do with them.

An episode's ``belief`` is the root view's objects, refined by every zoomed view: objects seen large replace
what the full view made of them (their attributes are far more certain there), and they keep that after a
zoom-out, so the scores of superlative and relation requests improve as the search visits candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segloop.data.synth import AREA_MARGIN, COLOURS, FILLS, LOOSE, NEAR_MARGIN, SHAPES, SIZES, STRICT, NounPhrase
from segloop.policies.compact.query import QuerySlots

ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "fill": FILLS, "size": SIZES}
# A shape's area as a share of its box's (the world's outlines; "largest" compares areas).
_AREA_SHARE = {"circle": 0.783, "square": 1.0, "triangle": 0.5, "star": 0.384, "diamond": 0.5, "hexagon": 0.75}
_EPS = 1e-6


@dataclass(frozen=True)
class Objects:
    """Objects seen so far, in original-image pixels: ``p`` P(an object is there), ``attributes`` name ->
    (K, values) probabilities, centres ``x``/``y`` and expected box sides ``w``/``h``."""

    p: np.ndarray
    attributes: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray

    def __len__(self) -> int:
        return len(self.p)

    @staticmethod
    def empty() -> Objects:
        z = np.zeros(0)
        return Objects(z, {k: np.zeros((0, len(v))) for k, v in ATTRIBUTES.items()}, z, z, z, z)

    def take(self, keep: np.ndarray) -> Objects:
        return Objects(self.p[keep], {k: v[keep] for k, v in self.attributes.items()}, self.x[keep], self.y[keep],
                       self.w[keep], self.h[keep])

    @staticmethod
    def concat(a: Objects, b: Objects) -> Objects:
        return Objects(np.concatenate([a.p, b.p]), {k: np.concatenate([a.attributes[k], b.attributes[k]])
                                                    for k in ATTRIBUTES},
                       *(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("x", "y", "w", "h")))


def merge_view(belief: Objects, seen: Objects, box: tuple[int, int, int, int], margin: float = 0.1) -> Objects:
    """The belief after a view of ``box`` (x1, y1, x2, y2): objects whose centre lies in the view's inner
    part (away from its border by ``margin`` of its side, where objects are cut off) are what this view saw."""
    x1, y1, x2, y2 = box
    mx, my = margin * (x2 - x1), margin * (y2 - y1)

    def inner(o: Objects) -> np.ndarray:
        return (o.x >= x1 + mx) & (o.x < x2 - mx) & (o.y >= y1 + my) & (o.y < y2 - my)

    return Objects.concat(belief.take(~inner(belief)), seen.take(inner(seen)))


def np_match(objects: Objects, phrase: NounPhrase | None) -> np.ndarray:
    """(K,) P(object exists and has every attribute the phrase names)."""
    m = objects.p.copy()
    if phrase is None:
        return np.clip(m, 0.0, 1 - _EPS)
    for name, values in ATTRIBUTES.items():
        value = getattr(phrase, name)
        if value is not None:
            m = m * objects.attributes[name][:, values.index(value)]
    return np.clip(m, 0.0, 1 - _EPS)


def _only(m: np.ndarray) -> np.ndarray:
    """P(i matches and no other object does), objects independent."""
    logs = np.log1p(-m)
    return m * np.exp(logs.sum() - logs)


def _blocked(m: np.ndarray, block: np.ndarray) -> np.ndarray:
    """P(i matches and none of the objects ``block[i]`` marks matches)."""
    np.fill_diagonal(block, False)
    return m * np.exp(block.astype(float) @ np.log1p(-m))


def referent_scores(objects: Objects, slots: QuerySlots) -> np.ndarray:
    """(K,) P(object i is the one the request singles out) (see the module docstring)."""
    if not len(objects):
        return np.zeros(0)
    m = np_match(objects, slots.target)
    if slots.kind == "relation" and slots.relation is not None:
        anchor_m = np_match(objects, slots.anchor)
        anchor = _only(anchor_m)
        dx = objects.x[:, None] - objects.x[None, :]  # [i, b]: i relative to anchor b
        dy = objects.y[:, None] - objects.y[None, :]
        along, across = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[
            slots.relation]
        loose = (along > 0) & (along >= LOOSE * np.abs(across))
        strict = (along > 0) & (along >= STRICT * np.abs(across))
        distance = np.hypot(dx, dy)
        log_miss = np.log1p(-m)
        scores = np.zeros(len(objects))
        for b in np.flatnonzero(anchor > 1e-4):
            # Blockers of i: other A-matches on the same side of b, not clearly farther than i.
            block = loose[:, b][None, :] & (distance[:, b][None, :] < NEAR_MARGIN * distance[:, b][:, None])
            np.fill_diagonal(block, False)
            block[:, b] = False
            free = np.exp(block.astype(float) @ log_miss)
            scores += anchor[b] * strict[:, b] * m * free * (np.arange(len(objects)) != b)
        return scores
    if slots.kind == "superlative" and slots.superlative is not None:
        kind = slots.superlative
        if kind in ("largest", "smallest"):
            share = objects.attributes["shape"] @ np.array([_AREA_SHARE[s] for s in SHAPES])
            area = objects.w * objects.h * share
            # j blocks i when it is not clearly smaller (largest) / larger (smallest) than i.
            block = (area[None, :] * AREA_MARGIN > area[:, None]) if kind == "largest" else (
                area[None, :] < area[:, None] * AREA_MARGIN)
        else:
            value = {"leftmost": -objects.x, "rightmost": objects.x, "topmost": -objects.y,
                     "bottommost": objects.y}[kind]
            side = np.maximum(objects.w, objects.h)
            block = value[None, :] > value[:, None] - np.maximum(side[:, None], side[None, :])
        return _blocked(m, block)
    return _only(m)
