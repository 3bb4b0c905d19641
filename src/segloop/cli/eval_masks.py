"""``segloop eval-masks --data SPEC --pred DIR``: score a folder of predicted mask PNGs (``<sample id>.png``)
against a dataset, as gIoU / cIoU overall, by size class and by kind."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.data.specs import SPEC_HELP

    parser.add_argument("--data", required=True, help=f"the samples: {SPEC_HELP}")
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted masks named <sample id>.png")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    parser.add_argument("--missing-as-empty", action="store_true",
                        help="score a sample with no prediction as an empty mask (without it, a missing prediction "
                             "is an error)")


def main(args: argparse.Namespace) -> int:
    from segloop.data.readers import DatasetError
    from segloop.data.specs import load_samples
    from segloop.evaluation.predictions import EvaluationError, evaluate_predictions
    from segloop.tools.files import write_record
    from segloop.tools.images import ImageError
    from segloop.tools.masks import format_table

    try:
        samples = load_samples(args.data)
        result = evaluate_predictions(samples, args.pred, missing_as_empty=args.missing_as_empty)
    except (DatasetError, EvaluationError, ImageError) as exc:
        print(f"segloop eval-masks: {exc}", file=sys.stderr)
        return 2
    print(format_table(result.summary))
    if result.missing:
        shown = ", ".join(result.missing[:5]) + (", ..." if len(result.missing) > 5 else "")
        print(f"missing predictions: {len(result.missing)} of {len(samples)} scored as empty ({shown})")
    if args.out is not None:
        try:
            write_record(args.out, json.dumps(result.to_json(), indent=2) + "\n")
        except OSError as exc:
            print(f"segloop eval-masks: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}")
    return 0
