"""``segloop train grpo``: GRPO on the IoU of the submitted mask, for any learnable policy
(``segloop.rl.grpo``; every field of ``GRPOConfig`` is a flag)."""

from __future__ import annotations

import argparse
import sys

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.rl.grpo import GRPOConfig

    add_config_arguments(parser, GRPOConfig)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")


def main(args: argparse.Namespace) -> int:
    from segloop.cli.paths import check_out_folder
    from segloop.rl.grpo import GRPOConfig, train

    try:
        config = config_from_args(GRPOConfig, args)
        check_out_folder(config.out)  # before any training starts
        summary = train(config, resume=args.resume)
    except (OptionsError, ValueError, ImportError, OSError) as exc:
        print(f"segloop train grpo: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    result = summary.get("eval")
    tail = f"held-out gIoU {result['giou']:.4f} cIoU {result['ciou']:.4f}; " if result else ""
    print(f"{tail}model in {config.out / 'final'}")
    return 0
