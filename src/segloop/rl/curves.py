"""Training logs: one CSV row per logged step, and a PNG of chosen columns against the step, as a grid."""

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
            csv.writer(f).writerow([_cell(row.get(c)) for c in self.columns])

    def drop_after(self, step: int) -> None:
        """Remove the rows logged after ``step`` (a run resumed from a checkpoint at ``step`` logs them again)."""
        logged = self.rows()
        rows = [r for r in logged if int(r["step"]) <= step]
        if self.columns is None or len(rows) == len(logged):
            return
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))


def _cell(value: float | int | str | None) -> str:
    """A CSV cell: floats to six significant digits (0.002, not 0.0019999999999999996), None empty."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# Panels per row of the figure.
COLUMNS_PER_ROW = 3


def plot_curves(rows: Sequence[Mapping[str, str]], columns: Sequence[str], path: str | Path, title: str,
                x: str = "step") -> None:
    """One panel per column that has values (its points against ``x``), in a grid of ``COLUMNS_PER_ROW``
    panels a row, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    if not present:
        return
    ncols = min(COLUMNS_PER_ROW, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, column in zip(axes.flat, present, strict=False):
        points = [(float(r[x]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
        points = [p for p in points if math.isfinite(p[1])]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(column.replace("eval_", "held-out ").replace("_", " "), fontsize=10)
        ax.set_xlabel(x, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
