"""``segloop eval-masks``: score a folder of predicted masks against a dataset.

Predictions are mask PNGs named ``<sample id>.png`` (any non-zero pixel is foreground) at the image's
size. A sample with no prediction is an error (a folder of the wrong run, or half a run, would otherwise be
scored: a sample with no target and no prediction scores 1), unless asked to score it as an empty mask; those
are then counted and listed. Scores are gIoU / cIoU overall, by size class and by kind
(``tools.masks.Metrics``), with ignore regions excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from segloop.data.sample import Sample
from segloop.tools.images import ImageError, load_mask
from segloop.tools.masks import Metrics, score_sample


class EvaluationError(ValueError):
    """A prediction or ground truth that cannot be scored, naming the file."""


class Evaluation(BaseModel):
    """The metrics summary plus the samples that had no prediction."""

    summary: dict
    missing: list[str]

    def to_json(self) -> dict:
        return {**self.summary, "n_missing": len(self.missing), "missing": self.missing}


def evaluate_predictions(samples: Sequence[Sample], pred_dir: str | Path, *,
                         missing_as_empty: bool = False) -> Evaluation:
    """Score ``pred_dir/<id>.png`` for every sample. A missing file raises ``EvaluationError`` naming how many
    and which, unless ``missing_as_empty``: then it is an empty prediction."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: no such prediction folder")
    absent = [s.id for s in samples if not (pred_dir / f"{s.id}.png").is_file()]
    if absent and not missing_as_empty:
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise EvaluationError(f"{len(absent)} of {len(samples)} samples have no prediction in {pred_dir} ({shown}); "
                              "score them as empty masks with --missing-as-empty")
    metrics = Metrics()
    missing: list[str] = []
    for sample in samples:
        pred_path = pred_dir / f"{sample.id}.png"
        try:
            gt, ignore = sample.load_truth()  # a file sample's image is not decoded: its header gives the size
        except (ImageError, ValueError) as exc:
            raise EvaluationError(f"sample {sample.id}: ground truth unusable ({exc})") from exc
        shape = gt.shape
        if pred_path.is_file():
            try:
                pred = load_mask(pred_path)
            except ImageError as exc:
                raise EvaluationError(str(exc)) from exc
            if pred.shape != shape:
                image = f"image {sample.image.name}" if sample.image is not None else f"the image of {sample.id}"
                raise EvaluationError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                                      f"{image} is {shape[1]}x{shape[0]}")
        else:
            missing.append(sample.id)
            pred = np.zeros(shape, dtype=bool)
        metrics.add(score_sample(sample.id, pred, gt, ignore, kind=sample.kind))
    return Evaluation(summary=metrics.summary(), missing=missing)
