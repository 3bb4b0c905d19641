"""``segloop eval-masks``: score a folder of predicted masks against a dataset.

Predictions are mask PNGs named ``<sample id>.png`` (any non-zero pixel is foreground) at the image's
size. A sample with no prediction is scored as an empty mask, and counted and listed, so a partial run
never looks better than it is. Scores are gIoU / cIoU overall, by size class and by kind
(``tools.masks.Metrics``), with ignore regions excluded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from agent.datasets import DatasetError, load_samples
from agent.sample import Sample
from tools.images import ImageError, load_mask
from tools.masks import Metrics, format_table, score_sample


class EvaluationError(ValueError):
    """A prediction or ground truth that cannot be scored, naming the file."""


class Evaluation(BaseModel):
    """The metrics summary plus the samples that had no prediction."""

    summary: dict
    missing: list[str]

    def to_json(self) -> dict:
        return {**self.summary, "n_missing": len(self.missing), "missing": self.missing}


def _image_shape(sample: Sample) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(sample.image) as img:
            width, height = img.size
    except OSError as exc:
        raise EvaluationError(f"{sample.image}: not a readable image ({exc})") from exc
    return height, width


def evaluate_predictions(samples: list[Sample], pred_dir: str | Path) -> Evaluation:
    """Score ``pred_dir/<id>.png`` for every sample; a missing file is an empty prediction."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: no such prediction folder")
    metrics = Metrics()
    missing: list[str] = []
    for sample in samples:
        # The header gives the size; the pixels of the image itself are never needed for scoring.
        shape = _image_shape(sample)
        pred_path = pred_dir / f"{sample.id}.png"
        try:
            gt = sample.load_mask(shape)
            ignore = sample.load_ignore(shape)
        except (ImageError, ValueError) as exc:
            raise EvaluationError(f"sample {sample.id}: ground truth unusable ({exc})") from exc
        if pred_path.is_file():
            try:
                pred = load_mask(pred_path)
            except ImageError as exc:
                raise EvaluationError(str(exc)) from exc
            if pred.shape != shape:
                raise EvaluationError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                                      f"image {sample.image.name} is {shape[1]}x{shape[0]}")
        else:
            missing.append(sample.id)
            pred = np.zeros(shape, dtype=bool)
        metrics.add(score_sample(sample.id, pred, gt, ignore, kind=sample.kind))
    return Evaluation(summary=metrics.summary(), missing=missing)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a manifest path or a dataset spec (see agent.datasets)")
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted masks named <sample id>.png")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")


def main(args: argparse.Namespace) -> int:
    try:
        samples = load_samples(args.data)
        result = evaluate_predictions(samples, args.pred)
    except (DatasetError, EvaluationError, ImageError) as exc:
        print(f"segloop eval-masks: {exc}", file=sys.stderr)
        return 2
    print(format_table(result.summary))
    if result.missing:
        shown = ", ".join(result.missing[:5]) + (", ..." if len(result.missing) > 5 else "")
        print(f"missing predictions: {len(result.missing)} of {len(samples)} scored as empty ({shown})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
