"""The compact grounding network: a query-conditioned conv net with a tool head and spatial heatmaps.

Why this shape: a language model emitting digit tokens does not learn *where* a described object is
on a CPU (docs/notes/tiny-vlm-learnability.md); a conv net with coordinate channels, conditioned on the query
by FiLM, reads position directly and answers with a categorical heatmap over a grid, which is a
classification problem it learns in minutes.

Inputs (one turn): the current view as the model is shown it, resized to ``input_size`` square; the
candidate mask inside that view (what the overlay shows); a "visited" plane (the regions this episode
already zoomed into and left, painted in the current view's frame); the query's word ids; a small state
vector (previous tool, view depth, turn share, has candidate, last turn, the numbers of zooms and
zoom-outs so far, the view's magnification). Why the visited plane and counts: the first zoom is a bet on
one of several look-alikes (docs/notes/grounding-on-cpu.md); after a zoom-out, without a memory of where
it looked, the net sees the same view and state as before and bets on the same peak again.
Outputs: logits for the tool (``TOOLS``) and for using a point; ``grid x grid`` heatmaps for the box
centre and the positive point; and at every cell, logits over ``size_bins`` box widths and heights,
read where the centre is (CenterNet-style: a box is found by finding its object, not its empty
corners; measured, corner heatmaps localised far worse).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

# The tool head's classes; "submit_no_target" is submit(no_target=true).
TOOLS: tuple[str, ...] = ("zoom_in", "zoom_out", "segment", "inspect_mask", "submit", "submit_no_target")
# Previous-tool slots of the state vector: the tools, then "none yet" and "error".
PREVIOUS = (*TOOLS, "none", "error")
MAX_DEPTH = 3
# One-hot counts (0, 1, 2, 3+) of zooms made and of zoom-outs made.
MAX_COUNT = 3
# Previous tool, depth, turn share, has candidate, last turn, the two counts, and the view's
# magnification (log2 of image side over view side, / 4): "small" or "largest" depend on the scale.
STATE_SIZE = len(PREVIOUS) + (MAX_DEPTH + 1) + 3 + 2 * (MAX_COUNT + 1) + 1
# RGB, candidate, visited, x and y coordinates.
IN_CHANNELS = 7
PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The query's words as the vocabulary sees them: lower case, letters and digits."""
    return _WORD.findall(text.lower())


class CompactConfig(BaseModel):
    """Everything needed to rebuild the network and its inputs; saved as ``config.json``."""

    model_config = ConfigDict(extra="forbid")

    segloop_policy: str = "compact"
    vocabulary: list[str] = Field(default_factory=lambda: [PAD, UNK])
    max_side: int = Field(224, ge=28, description="longest side of the views the policy asks to be shown")
    input_size: int = Field(128, ge=32, description="the view is resized to this square before the net")
    grid: int = Field(32, ge=4, description="heatmap cells per side")
    channels: int = Field(32, ge=8)
    word_dim: int = Field(48, ge=8)
    cond_dim: int = Field(96, ge=8)
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 1])
    max_query_words: int = Field(24, ge=1)
    size_bins: int = Field(16, ge=2, description="log-spaced box sides, as a share of the view's side")
    min_share: float = Field(0.02, gt=0, lt=1, description="the smallest box side's share of the view")
    augment: bool = Field(True, description="train imitated turns under random symmetries of the square")
    zoom_context: float = Field(4.0, gt=1, description=(
        "a zoom's parts name the object to zoom onto (centre, width, height, as for segment) and the zoom "
        "written is a square this many times its larger side"))
    max_depth: int = Field(1, ge=1, le=MAX_DEPTH, description="no zoom_in at this view depth")

    def size_shares(self) -> list[float]:
        """The box side (share of the view's side) of each size bin, log-spaced from min_share to 1."""
        ratio = (1.0 / self.min_share) ** (1.0 / (self.size_bins - 1))
        return [self.min_share * ratio**k for k in range(self.size_bins)]

    def word_ids(self, query: str) -> list[int]:
        index = {w: i for i, w in enumerate(self.vocabulary)}
        ids = [index.get(w, 1) for w in words(query)][: self.max_query_words]
        return ids or [index[UNK]]


def build_vocabulary(queries: list[str]) -> list[str]:
    """``<pad>``, ``<unk>`` and every word of the queries, sorted (deterministic for a given set)."""
    return [PAD, UNK, *sorted({w for q in queries for w in words(q)} - {PAD, UNK})]


class FiLMBlock(nn.Module):
    """3x3 conv, per-channel scale and shift from the condition, ReLU, residual."""

    def __init__(self, channels: int, cond_dim: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm = nn.GroupNorm(8 if channels % 8 == 0 else 1, channels, affine=False)
        self.film = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(cond).chunk(2, dim=-1)
        h = self.norm(self.conv(x)) * (1 + gamma[..., None, None]) + beta[..., None, None]
        return x + F.relu(h)


class CompactNet(nn.Module):
    """See the module docstring. ``forward`` returns a dict of logits."""

    def __init__(self, config: CompactConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.embed = nn.Embedding(len(config.vocabulary), config.word_dim, padding_idx=0)
        self.gru = nn.GRU(config.word_dim, config.word_dim, batch_first=True, bidirectional=True)
        self.cond = nn.Sequential(nn.Linear(2 * config.word_dim + STATE_SIZE, config.cond_dim), nn.ReLU(),
                                  nn.Linear(config.cond_dim, config.cond_dim), nn.ReLU())
        # The stem brings input_size down to the grid.
        stride = config.input_size // config.grid
        if stride * config.grid != config.input_size or stride not in (1, 2, 4, 8):
            raise ValueError(f"input_size {config.input_size} must be grid {config.grid} x 1, 2, 4 or 8")
        # Narrow strided convs until the grid: full-resolution layers dominate the cost on a CPU.
        stem: list[nn.Module] = []
        width = IN_CHANNELS
        while stride > 1:
            stem += [nn.Conv2d(width, c // 2 if stride > 2 else c, 3, stride=2, padding=1), nn.ReLU()]
            width = c // 2 if stride > 2 else c
            stride //= 2
        if not stem:
            stem = [nn.Conv2d(width, c, 3, padding=1), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.ModuleList(FiLMBlock(c, config.cond_dim, d) for d in config.dilations)
        # Per cell: centre, point, then size_bins widths and size_bins heights.
        self.heatmaps = nn.Conv2d(c + 2, 2 + 2 * config.size_bins, 1)
        self.tool_head = nn.Sequential(nn.Linear(2 * c + config.cond_dim, config.cond_dim), nn.ReLU(),
                                       nn.Linear(config.cond_dim, len(TOOLS) + 2))
        # Why: in a zoomed view "segment or zoom out" is "does an object here match the query", which is
        # what the centre map's peak already measures; pooled features learnt it far slower (measured).
        self.map_tool = nn.Linear(3, len(TOOLS) + 2)
        nn.init.zeros_(self.map_tool.weight)
        nn.init.zeros_(self.map_tool.bias)

    @staticmethod
    def _coords(n: int, size: int, device: torch.device) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, size, device=device)
        return torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")).expand(n, 2, size, size)

    def forward(self, image: torch.Tensor, candidate: torch.Tensor, query: torch.Tensor,
                state: torch.Tensor, visited: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` (N, 3, S, S) uint8, ``candidate`` and ``visited`` (N, S, S) bool/uint8, ``query``
        (N, L) word ids (0-padded), ``state`` (N, STATE_SIZE). Heatmap logits are flattened row-major
        (y * grid + x): ``centre``, ``point`` (N, grid**2); ``width``, ``height`` (N, size_bins, grid**2)."""
        n, size = image.shape[0], self.config.input_size
        x = torch.cat([image.float() / 127.5 - 1.0, candidate.float()[:, None] * 2 - 1,
                       visited.float()[:, None] * 2 - 1, self._coords(n, size, image.device)], dim=1)
        lengths = (query != 0).sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(query), lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.gru(packed)
        cond = self.cond(torch.cat([hidden[0], hidden[1], state], dim=-1))
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, cond)
        grid = self.config.grid
        maps = self.heatmaps(torch.cat([h, self._coords(n, grid, h.device)], dim=1)).flatten(2)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3)), cond], dim=-1)
        centre = maps[:, 0]
        soft = torch.logsumexp(centre, -1) - math.log(centre.shape[-1])
        heads = self.tool_head(pooled) + self.map_tool(torch.stack([centre.amax(-1), soft, centre.mean(-1)], -1))
        bins = self.config.size_bins
        return {"tool": heads[:, : len(TOOLS)], "use_point": heads[:, len(TOOLS):],
                "centre": maps[:, 0], "point": maps[:, 1],
                "width": maps[:, 2 : 2 + bins], "height": maps[:, 2 + bins :]}
