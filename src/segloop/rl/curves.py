"""Training logs: one CSV row per logged step, and a PNG of chosen columns against the step."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path


class CurveLog:
    """Appends rows to ``path`` (CSV). Columns are fixed by the first row written (or found on disk
    when resuming); a later row may leave columns empty."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open() as f:
                self.columns = next(csv.reader(f))

    def write(self, row: Mapping[str, float | int | str | None]) -> None:
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"columns {sorted(unknown)} were not in the log's first row")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row[c] for c in self.columns])

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))


def plot_curves(rows: Sequence[Mapping[str, str]], columns: Sequence[str], path: str | Path, title: str,
                x: str = "step") -> None:
    """One panel per column (points where the column has a value), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    if not present:
        return
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.8), squeeze=False)
    for ax, column in zip(axes[0], present, strict=True):
        points = [(float(r[x]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
        points = [p for p in points if math.isfinite(p[1])]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
