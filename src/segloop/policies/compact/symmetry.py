"""The eight symmetries of the square acting on one turn: image, candidate, visited, query and decision.

Why: imitation from a few thousand expert episodes over-fits (measured: train loss keeps falling while
held-out localisation stalls). A mirrored or transposed scene is another valid scene of the same world
once the query's directional phrases are mapped with it ("left of" <-> "right of" under a horizontal
flip, "left of" <-> "above" under a transpose, and their superlatives), and the decision's cells and
box sides map exactly, so every expert turn counts eight times.

Relations are mapped as *phrases*, not words: the grammar (``data.synth``) says "left of" but "above",
so a word-by-word transpose would write "above of" and turn "above" into a bare "left", spellings the
world never produces. The mapped query may therefore change length.

A symmetry is an int 0..7: bit 0 flips left-right, bit 1 flips top-bottom, bit 2 transposes (applied
in that order).
"""

from __future__ import annotations

import torch

# Phrases each generator maps (both ways); everything else maps to itself.
_FLIP_X = {"left of": "right of", "leftmost": "rightmost"}
_FLIP_Y = {"above": "below", "topmost": "bottommost"}
_TRANSPOSE = {"left of": "above", "right of": "below", "leftmost": "topmost", "rightmost": "bottommost"}


def _both_ways(pairs: dict[str, str]) -> dict[str, str]:
    return {**pairs, **{v: k for k, v in pairs.items()}}


PHRASE_MAPS = tuple(_both_ways(m) for m in (_FLIP_X, _FLIP_Y, _TRANSPOSE))

# Per generator: (source phrase as word ids, target phrase as word ids), longest source first.
PhraseTable = list[tuple[tuple[int, ...], tuple[int, ...]]]


def phrase_tables(vocabulary: list[str]) -> tuple[PhraseTable, PhraseTable, PhraseTable]:
    """The three generators' phrase maps over ``vocabulary`` ids (phrases with an unknown word are
    left out: such a query cannot contain them anyway)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    tables = []
    for mapping in PHRASE_MAPS:
        table = []
        for source, target in mapping.items():
            ids = [index.get(w) for w in source.split()], [index.get(w) for w in target.split()]
            if None not in ids[0] and None not in ids[1]:
                table.append((tuple(ids[0]), tuple(ids[1])))
        tables.append(sorted(table, key=lambda pair: -len(pair[0])))
    return tables[0], tables[1], tables[2]


def map_query(query: torch.Tensor, table: PhraseTable) -> torch.Tensor:
    """``query`` (L,) word ids with every phrase of ``table`` replaced, scanning left to right and
    preferring the longest phrase; padding (id 0) is dropped."""
    ids = [int(i) for i in query if int(i) != 0]
    out: list[int] = []
    position = 0
    while position < len(ids):
        for source, target in table:
            if tuple(ids[position : position + len(source)]) == source:
                out.extend(target)
                position += len(source)
                break
        else:
            out.append(ids[position])
            position += 1
    return torch.tensor(out or [1], dtype=torch.long)


def apply(symmetry: int, image: torch.Tensor, planes: list[torch.Tensor], query: torch.Tensor, parts: torch.Tensor,
          tables: tuple[PhraseTable, PhraseTable, PhraseTable], grid: int, cell_parts: tuple[int, ...],
          width_part: int, height_part: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The turn seen under ``symmetry``: image (3, S, S), extra (S, S) planes (candidate, visited),
    query ids (L,), parts (P,) whose ``cell_parts`` are grid cells (y * grid + x; -1 and grid**2 are
    left alone) and whose width/height parts are size bins (swapped by a transpose)."""
    parts = parts.clone()
    cells = [int(parts[k]) for k in cell_parts]
    # -1 (unused) and grid**2 (the compact policy's "no matching object here") are not places: kept as they are.
    xy = [(c % grid, c // grid) if 0 <= c < grid * grid else None for c in cells]
    for generator in range(3):
        if not symmetry >> generator & 1:
            continue
        query = map_query(query, tables[generator])
        if generator == 0:
            image, planes = image.flip(-1), [p.flip(-1) for p in planes]
            xy = [None if p is None else (grid - 1 - p[0], p[1]) for p in xy]
        elif generator == 1:
            image, planes = image.flip(-2), [p.flip(-2) for p in planes]
            xy = [None if p is None else (p[0], grid - 1 - p[1]) for p in xy]
        else:
            image, planes = image.transpose(-1, -2), [p.transpose(-1, -2) for p in planes]
            xy = [None if p is None else (p[1], p[0]) for p in xy]
            parts[width_part], parts[height_part] = parts[height_part].clone(), parts[width_part].clone()
    for k, p, cell in zip(cell_parts, xy, cells, strict=True):
        parts[k] = cell if p is None else p[1] * grid + p[0]
    return image.contiguous(), [p.contiguous() for p in planes], query, parts
