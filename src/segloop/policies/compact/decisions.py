"""The decisions on top of perception: what the policy reads each turn (``TurnFeatures``, one layout) and
the small networks that choose the action's parts from it (``DecisionNet``, one per view depth).

A turn's features are computed from the episode's belief (``reasoning.py``), the current view's perception
and the episode so far; they are all a decision network sees, so a turn is recorded as its features and
re-scored from them under new weights (SFT, GRPO) without running perception again.

- Per cell of the current view (``CELL_FEATURES``): the referent score of the object there, the target
  phrase's and the anchor phrase's match, objectness, whether the object was visited and left, how much
  of the cell the candidate mask covers, nearness to the view's centre (a zoomed view is centred on the
  object it was made for), a segment call here that failed or gave an empty mask, the fill there (a hollow
  object wants a background point inside it), and whether an object was detected there.
- Scalars (``SCALAR_FEATURES``): the request's kind; summaries of the scores (all objects, none matching,
  the best unvisited and visited object, the central object of a zoomed view and the rest); the candidate
  (present, how well it covers the central object, empty after a segment); the last call (tool, failed);
  zooms so far and turns left.
- Legal choices: tools that can succeed (no zoom_out at the root, no zoom_in at ``max_depth`` or with no
  unvisited object, no submit without a candidate, "no such object" only from the full view); the cells a
  zoom may name (detected, unvisited objects) and a segment may name (detected objects where no segment
  just failed; any such cell when nothing is detected). Illegal choices get no probability, when acting
  and when scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segloop.policies.compact.actions import PART, PARTS, POINT_KINDS, TOOL, TOOLS
from segloop.policies.compact.query import KINDS

CELL_FEATURES = ("log_referent", "log_match", "log_anchor_match", "log_objectness", "visited", "candidate",
                 "centre_prior", "failed", "solid", "striped", "hollow", "detected")
SCALAR_FEATURES = (*(f"kind_{k}" for k in KINDS), "log_referent_sum", "log_none_match", "log_best_unvisited",
                   "log_best_visited", "log_central_referent", "log_central_match", "log_best_other_in_view",
                   "log_referent_outside_view", "has_candidate", "candidate_covers_central",
                   "candidate_empty", "last_failed",
                   *(f"last_{t}" for t in ("none", "zoom_in", "zoom_out", "segment", "submit", "error")),
                   *(f"zooms_{k}" for k in range(4)), *(f"turns_left_{k}" for k in range(1, 5)))
CELL = {name: i for i, name in enumerate(CELL_FEATURES)}
SCALAR = {name: i for i, name in enumerate(SCALAR_FEATURES)}
LOG_FLOOR = -14.0  # log of "nothing here" (~1e-6)
# The networks read log-probabilities divided by this (about [-3.5, 0], the range of the other features), so
# no input dominates the first steps of learning by its scale alone.
LOG_SCALE = 4.0
# Logit given to an illegal choice: exp() is exactly 0 in float32, yet entropies stay finite (0 * -1e4).
ILLEGAL = -1e4


@dataclass
class TurnFeatures:
    """Everything a decision network reads for one turn (see the module docstring). ``depth`` picks the
    network; ``sizes`` are perception's box width/height logits per cell (2, size_bins, G*G)."""

    depth: int
    cells: torch.Tensor        # float (len(CELL_FEATURES), G*G)
    scalars: torch.Tensor      # float (len(SCALAR_FEATURES),)
    legal_tools: torch.Tensor  # bool (len(TOOLS),)
    zoom_cells: torch.Tensor   # bool (G*G,) cells a zoom may name
    segment_cells: torch.Tensor  # bool (G*G,) cells a segment may name
    sizes: torch.Tensor        # float (2, size_bins, G*G)


def stack(features: list[TurnFeatures]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([getattr(f, name).float() if name in ("cells", "scalars", "sizes")
                               else getattr(f, name) for f in features])
            for name in ("cells", "scalars", "legal_tools", "zoom_cells", "segment_cells", "sizes")}


class DecisionNet(nn.Module):
    """Logits of every part from a batch of ``TurnFeatures`` of one depth.

    - tool: a linear map of the scalars plus a small MLP on them (the linear path learns the main effects,
      such as "segment when the central object's referent score is high", within a few steps);
    - centre: a per-cell linear map of the cell features (starts as the referent score: where the request
      points is where to look), masked to the cells the chosen tool may name;
    - width/height: perception's box logits at the chosen cell plus a learnt offset per bin (which box
      sizes the segmenter rewards is learnt, not perceived);
    - point kind: a linear map of the chosen cell's features and the scalars; point cell: a per-cell linear
      map of the cell features and the distance to the chosen cell."""

    def __init__(self, size_bins: int, hidden: int = 32) -> None:
        super().__init__()
        n_cell, n_scalar = len(CELL_FEATURES), len(SCALAR_FEATURES)
        self.register_buffer("cell_scale", _scale(CELL_FEATURES), persistent=False)
        self.register_buffer("scalar_scale", _scale(SCALAR_FEATURES), persistent=False)
        self.tool_linear = nn.Linear(n_scalar, len(TOOLS))
        self.tool = nn.Sequential(nn.Linear(n_scalar, hidden), nn.Tanh(), nn.Linear(hidden, len(TOOLS)))
        self.centre = nn.Linear(n_cell, 1)
        self.size_offset = nn.Parameter(torch.zeros(2, size_bins))
        self.point = nn.Linear(n_cell + n_scalar, len(POINT_KINDS))
        self.point_cell = nn.Linear(n_cell + 1, 1)
        with torch.no_grad():
            self.centre.weight.zero_()
            self.centre.bias.zero_()
            self.centre.weight[0, CELL["log_referent"]] = LOG_SCALE  # logits start as the log referent score
            for layer in (self.tool_linear, self.tool[2]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            nn.init.zeros_(self.point.weight)
            nn.init.zeros_(self.point.bias)
            self.point_cell.weight.zero_()
            self.point_cell.bias.zero_()

    def forward(self, batch: dict[str, torch.Tensor], chosen: torch.Tensor) -> list[torch.Tensor]:
        """Logits (N, choices) of each part in ``PARTS`` order. The parts that depend on earlier ones (the
        centre's mask on the tool, sizes and point on the centre) read them from ``chosen`` (N, len(PARTS))
        (-1 entries are unused parts; their logits are computed for cell 0 and ignored)."""
        cells = batch["cells"].transpose(1, 2) * self.cell_scale  # (N, G*G, F)
        n, area = cells.shape[:2]
        scalars = batch["scalars"] * self.scalar_scale
        tool = (self.tool_linear(scalars) + self.tool(scalars)).masked_fill(~batch["legal_tools"], ILLEGAL)
        legal = torch.where((chosen[:, PART["tool"]] == TOOL["zoom_in"])[:, None], batch["zoom_cells"],
                            batch["segment_cells"])
        centre = self.centre(cells)[..., 0].masked_fill(~legal, ILLEGAL)
        cell = chosen[:, PART["centre"]].clamp(0, area - 1)
        rows = torch.arange(n)
        width = batch["sizes"][rows, 0, :, cell] + self.size_offset[0]
        height = batch["sizes"][rows, 1, :, cell] + self.size_offset[1]
        point = self.point(torch.cat([cells[rows, cell], scalars], 1))
        grid = round(area**0.5)
        ys, xs = torch.arange(area) // grid, torch.arange(area) % grid
        distance = ((xs[None] - (cell % grid)[:, None]) ** 2 + (ys[None] - (cell // grid)[:, None]) ** 2).float()
        point_cell = self.point_cell(torch.cat([cells, (distance / grid)[..., None]], 2))[..., 0]
        return [tool, centre, width, height, point, point_cell]


def _scale(names: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([1 / LOG_SCALE if name.startswith("log_") else 1.0 for name in names])


def part_log_probs(logits: list[torch.Tensor], chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row and part: log-prob of the chosen index, mask (part used), entropy; each (N, len(PARTS))."""
    mask = (chosen >= 0).float()
    log_probs, entropies = [], []
    for k, part in enumerate(logits):
        log_p = torch.log_softmax(part.float(), -1)
        log_probs.append(log_p.gather(1, chosen[:, k].clamp_min(0)[:, None])[:, 0])
        entropies.append(-(log_p.exp() * log_p).sum(-1))
    return torch.stack(log_probs, 1) * mask, mask, torch.stack(entropies, 1) * mask


def choose(net: DecisionNet, batch: dict[str, torch.Tensor], greedy: list[bool],
           generators: list[torch.Generator]) -> torch.Tensor:
    """The parts of every row, chosen part by part (each part's logits depend on the earlier choices)."""
    n = batch["cells"].shape[0]
    chosen = torch.full((n, len(PARTS)), -1, dtype=torch.long)

    def pick(logits: torch.Tensor, rows: list[int], part: int) -> None:
        for row in rows:
            values = logits[row].detach().float()
            if greedy[row]:
                chosen[row, part] = int(values.argmax())
            else:
                chosen[row, part] = int(torch.multinomial(torch.softmax(values, -1), 1, generator=generators[row]))

    everyone = list(range(n))
    pick(net(batch, chosen)[PART["tool"]], everyone, PART["tool"])
    boxed = [r for r in everyone if int(chosen[r, PART["tool"]]) in (TOOL["zoom_in"], TOOL["segment"])]
    if boxed:
        pick(net(batch, chosen)[PART["centre"]], boxed, PART["centre"])
        logits = net(batch, chosen)
        pick(logits[PART["width"]], boxed, PART["width"])
        pick(logits[PART["height"]], boxed, PART["height"])
        segments = [r for r in boxed if int(chosen[r, PART["tool"]]) == TOOL["segment"]]
        pick(logits[PART["point"]], segments, PART["point"])
        pointed = [r for r in segments if int(chosen[r, PART["point"]]) > 0]
        pick(logits[PART["point_cell"]], pointed, PART["point_cell"])
    return chosen


def coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """(G*G,) share of each cell a (S, S) bool mask covers."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(tensor, grid).flatten().numpy()
