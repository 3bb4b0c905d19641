"""``segloop make-tiny --out DIR``: a tiny Qwen2.5-VL-architecture model with an offline tokenizer, saved as a
checkpoint directory that loads through the same code as a hub checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and tokenizer corpus")


def main(args: argparse.Namespace) -> int:
    from segloop.cli.paths import check_out_folder
    from segloop.policies.tiny import make_tiny

    try:
        check_out_folder(args.out)
    except ValueError as exc:
        print(f"segloop make-tiny: {exc}", file=sys.stderr)
        return 2
    try:
        path = make_tiny(args.out, seed=args.seed)
    except OSError as exc:
        print(f"segloop make-tiny: cannot write the tiny model to {args.out}: {exc}", file=sys.stderr)
        return 1
    n = sum(1 for _ in path.iterdir())
    print(f"wrote the tiny Qwen2.5-VL model ({n} files) to {path}")
    return 0
