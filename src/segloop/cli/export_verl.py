"""``segloop export-verl --data SPEC --out FILE``: samples as verl's ``RLHFDataset`` parquet, one row per sample,
for the ``segloop_agent`` loop (docs/verl.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.data.specs import SPEC_HELP

    parser.add_argument("--data", required=True, help=f"the samples: {SPEC_HELP}")
    parser.add_argument("--out", required=True, type=Path, help="parquet file to write")
    parser.add_argument("--split", default="train", help="written into extra_info.split")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="view size the prompt text describes (the loop's max_side)")
    parser.add_argument("--max-turns", type=int, default=6, help="turn budget the system prompt states")


def main(args: argparse.Namespace) -> int:
    from segloop.rl.verl.export import export

    try:
        n = export(args.data, args.out, args.split, args.max_side, args.max_turns)
    except (ValueError, OSError) as exc:
        print(f"segloop export-verl: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows to {args.out}")
    return 0
