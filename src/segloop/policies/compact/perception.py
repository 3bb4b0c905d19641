"""Dense perception: a query-free conv net that says, per grid cell, whether an object's centre is there and
what that object is (shape, colour, fill, size class) and how large its box is.

Why query-free and dense: every object of every view is a labelled example (about ten per scene), where a
query-conditioned decision gets one bit per view; measured, the dense heads learn the attributes in
minutes and the one-bit judge never bound the query (docs/notes/zoomed-judge.md). The query is compared
with these maps explicitly (``reasoning.py``).

Its input is the view's picture and the view's magnification (``magnification``: the log2 of the image's side
over the view's, / 4; 0 for the full view): a zoomed view shows every object at about the same size, so "small"
or "large" can only be read knowing how far the view is zoomed.

Outputs are logits per cell, flattened row-major (``y * grid + x``): ``objectness`` (N, G*G), one
(N, values, G*G) map per attribute, and box ``width`` / ``height`` (N, size_bins, G*G) over log-spaced
shares of the view's side (CenterNet-style: a box is read where its object's centre is).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segloop.policies.compact.reasoning import ATTRIBUTES, Objects


class _Block(nn.Module):
    """Dilated 3x3 conv, group norm, ReLU, residual."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm = nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.norm(self.conv(x)))


def _coords(n: int, size: int, device: torch.device) -> torch.Tensor:
    ramp = torch.linspace(-1.0, 1.0, size, device=device)
    return torch.stack(torch.meshgrid(ramp, ramp, indexing="xy")).expand(n, 2, size, size)


class PerceptionNet(nn.Module):
    """See the module docstring. ``input_size`` must be ``grid`` times 1, 2, 4 or 8 (strided stem)."""

    def __init__(self, input_size: int, grid: int, channels: int, dilations: list[int], size_bins: int) -> None:
        super().__init__()
        stride = input_size // grid
        if stride * grid != input_size or stride not in (1, 2, 4, 8):
            raise ValueError(f"input size {input_size} must be the grid {grid} times 1, 2, 4 or 8")
        self.grid = grid
        self.heads = {"objectness": 1, **{name: len(values) for name, values in ATTRIBUTES.items()},
                      "width": size_bins, "height": size_bins}
        stem: list[nn.Module] = []
        width = 6  # RGB, x and y coordinates, magnification
        # Narrow strided convs until the grid: full-resolution layers dominate the cost on a CPU.
        while stride > 1:
            out = channels if stride == 2 else channels // 2
            stem += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.ReLU()]
            width, stride = out, stride // 2
        if not stem:
            stem = [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(*(_Block(channels, d) for d in dilations))
        self.out = nn.Conv2d(channels + 2, sum(self.heads.values()), 1)

    def forward(self, image: torch.Tensor, magnification: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` (N, 3, S, S) uint8 and ``magnification`` (N,) -> logits per head (module docstring)."""
        n, size = image.shape[0], image.shape[-1]
        scale = magnification.float().view(n, 1, 1, 1).expand(n, 1, size, size)
        x = torch.cat([image.float() / 127.5 - 1.0, _coords(n, size, image.device), scale], 1)
        h = self.blocks(self.stem(x))
        maps = self.out(torch.cat([h, _coords(n, self.grid, h.device)], 1)).flatten(2)
        result = dict(zip(self.heads, maps.split(list(self.heads.values()), dim=1), strict=True))
        result["objectness"] = result["objectness"][:, 0]
        return result


def detect(maps: dict[str, torch.Tensor], box: tuple[int, int, int, int], shares: torch.Tensor, threshold: float,
           limit: int) -> Objects:
    """The objects one view's maps (one row of ``PerceptionNet``'s output, batch dimension dropped) show:
    cells where objectness peaks (3 x 3) above ``threshold``, at most ``limit``, most likely first, with their
    attribute probabilities and expected box sides, in the original-image pixels of the view ``box``. An
    object's probability is the objectness summed over its peak's 3 x 3 cells (an object's centre may fall
    near a cell's edge, and a large one spreads over its neighbours)."""
    objectness = torch.sigmoid(maps["objectness"].float())
    area = objectness.shape[0]
    grid = round(area**0.5)
    square = objectness.view(1, 1, grid, grid)
    peaks = ((square == F.max_pool2d(square, 3, 1, 1)).view(-1) & (objectness > threshold)).nonzero()[:, 0]
    peaks = peaks[objectness[peaks].argsort(descending=True)[:limit]]
    x1, y1, x2, y2 = box
    log_shares = shares.log()
    side = torch.softmax(maps["width"][:, peaks].float().T, -1) @ log_shares, torch.softmax(
        maps["height"][:, peaks].float().T, -1) @ log_shares
    mass = F.avg_pool2d(square, 3, 1, 1, count_include_pad=True).view(-1) * 9
    return Objects(
        p=mass[peaks].clamp(max=0.999).numpy().astype(np.float64),
        attributes={name: torch.softmax(maps[name][:, peaks].float().T, -1).numpy().astype(np.float64)
                    for name in ATTRIBUTES},
        x=(x1 + ((peaks % grid).float() + 0.5) / grid * (x2 - x1)).numpy().astype(np.float64),
        y=(y1 + ((peaks // grid).float() + 0.5) / grid * (y2 - y1)).numpy().astype(np.float64),
        w=(side[0].exp() * (x2 - x1)).numpy().astype(np.float64),
        h=(side[1].exp() * (y2 - y1)).numpy().astype(np.float64))
