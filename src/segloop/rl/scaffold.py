"""What every trainer shares (``segloop train cache|pretrain|sft|grpo``), so each trainer's own module holds
only its loop, readable top to bottom.

A ``TrainingRun`` seeds torch and sets its threads, writes the config to ``OUT/NAME_config.json``, prints
progress on stderr (``step k/N``, the rate, the time left, the step's figures, at most every few seconds),
logs rows to ``OUT/NAME_log.csv`` with the time spent (wall and process CPU, workers included) and the peak
memory, and at the end saves ``final/`` with ``final/checkpoint.json`` (which step it is, and how it scored
held out against the best evaluation of the run: a run that made the policy worse says so), draws
``OUT/NAME_curves.png`` (one readable grid) and writes ``OUT/NAME_summary.json``.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from segloop.rl.curves import CurveLog, plot_curves

# Seconds between two progress lines (a line is printed at least at the first and the last step).
PROGRESS_EVERY_S = 5.0
# A final held-out gIoU this much below the run's best is a run that made the policy worse.
WORSE_BY = 0.005


class Saveable(Protocol):
    def save_pretrained(self, directory: str | Path) -> None: ...


def number(value: Any) -> str:
    """A figure as a person reads it: four significant digits for a float, as is otherwise."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plain(value: float) -> str:
    """A rate without an exponent: 0.347, 3.47, 34.7, 347."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def duration(seconds: float) -> str:
    """``1h02m``, ``4m10s`` or ``12s``."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and, on a GPU, peak allocated device memory) in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024
    import torch

    if torch.cuda.is_available():
        return rss_mb + torch.cuda.max_memory_allocated() / 2**20
    return rss_mb


class TrainingRun:
    """One trainer's run in ``out``: see the module docstring. ``steps`` is the last step; ``first_step`` the
    step this process starts after (a resumed run's); ``resume`` keeps the log rows already on disk."""

    def __init__(self, name: str, config: BaseModel, out: Path, *, steps: int, seed: int, threads: int | None = None,
                 first_step: int = 0, resume: bool = False) -> None:
        import torch

        self.name, self.out, self.steps = name, Path(out), steps
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{name}_config.json").write_text(config.model_dump_json(indent=1))
        self.log = CurveLog(self.out / f"{name}_log.csv")
        if resume:
            self.log.drop_after(first_step)
        else:
            self.log.path.unlink(missing_ok=True)
            self.log.columns = None
        self.first_step = first_step
        # (step, held-out gIoU), in order; a resumed run's earlier ones from its log (``rl.rollout.EVAL_COLUMNS``).
        self.evaluations: list[tuple[int, float]] = [(int(r["step"]), float(r["eval_giou"])) for r in self.log.rows()
                                                     if r.get("eval_giou")] if resume else []
        self._cpu0, self._children0, self._wall0 = time.process_time(), _children_cpu(), time.perf_counter()
        self._printed = -math.inf
        self._since: tuple[int, float] | None = None

    # -- while it runs ------------------------------------------------------------------------------------
    def timing(self) -> dict[str, float]:
        """Minutes of wall time and of CPU (this process's threads and its finished workers) so far."""
        cpu = time.process_time() - self._cpu0 + _children_cpu() - self._children0
        return {"cpu_min": round(cpu / 60, 2), "wall_min": round((time.perf_counter() - self._wall0) / 60, 2)}

    def progress(self, step: int, figures: Mapping[str, Any] | None = None, *, force: bool = False) -> None:
        """``NAME: step k/N (p%), rate, ETA`` and the figures, on stderr (at most every few seconds)."""
        now = time.perf_counter()
        if self._since is None:  # the rate counts from the first step reported, not from the setup before it
            self._since = (step, now)
        if not force and step not in (self.first_step + 1, self.steps) and now - self._printed < PROGRESS_EVERY_S:
            return
        self._printed = now
        done, spent = step - self._since[0], now - self._since[1]
        parts = [f"{self.name}: step {step}/{self.steps} ({100 * step / max(self.steps, 1):.0f}%)"]
        if done > 0 and spent > 0:
            rate = done / spent
            parts.append(f"{_plain(rate)} steps/s" if rate >= 1 else f"{_plain(1 / rate)} s/step")
            parts.append(f"ETA {duration((self.steps - step) / rate)}")
        parts += [f"{key} {number(value)}" for key, value in (figures or {}).items() if value is not None]
        print(" · ".join(parts), file=sys.stderr, flush=True)

    def write(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Log ``row`` (a step's figures) with the time spent and the peak memory; returns the row as logged."""
        logged = {**row, **self.timing(), "peak_mem_mb": round(peak_memory_mb(), 1)}
        self.log.write(logged)
        return logged

    def held_out(self, step: int, giou: float) -> None:
        """Record a held-out evaluation (for ``final/checkpoint.json`` and the warning of a run made worse)."""
        self.evaluations.append((step, float(giou)))

    # -- at the end -----------------------------------------------------------------------------------------
    def save_final(self, policy: Saveable, step: int, which: str = "last") -> dict[str, Any]:
        """Save ``final/`` (the policy at ``step``: the last one, or the ``which="best"`` held-out one) and
        ``final/checkpoint.json`` saying which it is and how it compares held out with the run's best evaluation; a
        final score below the best is said on stderr."""
        final = self.out / "final"
        policy.save_pretrained(final)
        record: dict[str, Any] = {"step": step, "which": which}
        if self.evaluations:
            best_step, best = max(self.evaluations, key=lambda e: e[1])
            last_step, last = next((e for e in reversed(self.evaluations) if e[0] == step), self.evaluations[-1])
            record.update(held_out_giou=last if last_step == step else None,
                          best_held_out={"step": best_step, "giou": best})
            if last_step == step and last < best - WORSE_BY:
                record["warning"] = (f"held-out gIoU fell to {last:.4f} at the last step from {best:.4f} at step "
                                     f"{best_step}: final/ is the last step's policy (a smaller --lr, or "
                                     "more steps, may help)")
                print(f"{self.name}: WARNING: {record['warning']}", file=sys.stderr, flush=True)
        (final / "checkpoint.json").write_text(json.dumps(record, indent=1))
        return record

    def finish(self, summary: dict[str, Any], curves: Sequence[str], title: str, result: str) -> dict[str, Any]:
        """Draw the curves, add the timing and ``result`` (the run's one line) to ``summary`` and write it."""
        plot_curves(self.log.rows(), curves, self.out / f"{self.name}_curves.png", title)
        summary = {**summary, **self.timing(), "result": result}
        (self.out / f"{self.name}_summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary
