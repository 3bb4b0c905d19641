"""The eight symmetries of the square acting on one imitated turn: image, candidate, query and decision.

Why: imitation from a few thousand expert episodes over-fits (measured: train loss keeps falling while
held-out localisation stalls). A mirrored or transposed scene is another valid scene of the same world
once the query's directional words are mapped with it ("left" <-> "right" under a horizontal flip,
"left" <-> "above" under a transpose, and their superlatives), and the decision's cells and box sides
map exactly, so every expert turn counts eight times.

A symmetry is an int 0..7: bit 0 flips left-right, bit 1 flips top-bottom, bit 2 transposes (applied
in that order).
"""

from __future__ import annotations

import torch

# Words each generator maps; the rest map to themselves.
_FLIP_X = {"left": "right", "leftmost": "rightmost"}
_FLIP_Y = {"above": "below", "topmost": "bottommost"}
_TRANSPOSE = {"left": "above", "right": "below", "leftmost": "topmost", "rightmost": "bottommost"}


def _both_ways(pairs: dict[str, str]) -> dict[str, str]:
    return {**pairs, **{v: k for k, v in pairs.items()}}


WORD_MAPS = tuple(_both_ways(m) for m in (_FLIP_X, _FLIP_Y, _TRANSPOSE))


def word_permutations(vocabulary: list[str]) -> torch.Tensor:
    """(3, V) word-id maps for the three generators, over ``vocabulary`` (ids map to ids)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    return torch.tensor([[index.get(m.get(w, w), i) for i, w in enumerate(vocabulary)] for m in WORD_MAPS])


def apply(symmetry: int, image: torch.Tensor, candidate: torch.Tensor, query: torch.Tensor, parts: torch.Tensor,
          words: torch.Tensor, grid: int, cell_parts: tuple[int, ...], width_part: int, height_part: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The turn seen under ``symmetry``: image (3, S, S), candidate (S, S), query ids (L,), parts (P,)
    whose ``cell_parts`` are grid cells (y * grid + x, -1 unused) and whose width/height parts are
    size bins (swapped by a transpose)."""
    parts = parts.clone()
    cells = [int(parts[k]) for k in cell_parts]
    xy = [(c % grid, c // grid) if c >= 0 else None for c in cells]
    for generator in range(3):
        if not symmetry >> generator & 1:
            continue
        query = words[generator][query]
        if generator == 0:
            image, candidate = image.flip(-1), candidate.flip(-1)
            xy = [None if p is None else (grid - 1 - p[0], p[1]) for p in xy]
        elif generator == 1:
            image, candidate = image.flip(-2), candidate.flip(-2)
            xy = [None if p is None else (p[0], grid - 1 - p[1]) for p in xy]
        else:
            image, candidate = image.transpose(-1, -2), candidate.transpose(-1, -2)
            xy = [None if p is None else (p[1], p[0]) for p in xy]
            parts[width_part], parts[height_part] = parts[height_part].clone(), parts[width_part].clone()
    for k, p in zip(cell_parts, xy, strict=True):
        parts[k] = -1 if p is None else p[1] * grid + p[0]
    return image.contiguous(), candidate.contiguous(), query, parts
