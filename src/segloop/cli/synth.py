"""``segloop synth --out DIR``: a seeded synthetic world of cluttered scenes with referring queries, written as
``images/``, ``masks/`` and ``manifest.jsonl``."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.data.synth import DIFFICULTIES

    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n", type=int, default=100, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole set")
    # The defaults are the world the bundled agent was trained on (scripts/train_default_agent.sh).
    parser.add_argument("--size", type=int, default=768, help="image side in pixels")
    parser.add_argument("--difficulty", choices=tuple(DIFFICULTIES), default="easy", help="clutter and query mix")
    parser.add_argument("--no-target-rate", type=float, default=0.1, help="share of 'no such object' queries")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from segloop.cli.paths import check_out_folder
    from segloop.data.specs import write_world
    from segloop.data.synth import SynthError

    if args.n < 1:
        print("segloop synth: --n must be at least 1", file=sys.stderr)
        return 2
    try:
        check_out_folder(args.out)
        manifest = write_world(args.out, args.n, args.seed, args.size, args.difficulty, args.no_target_rate,
                               progress=not args.quiet)
    except (SynthError, OSError, ValueError) as exc:
        print(f"segloop synth: {exc}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]
    print(f"wrote {args.n} scenes to {manifest} (manifest sha256 {digest})")
    return 0
