"""``segloop train pretrain``: dense pre-training of the compact policy's perception on a perception cache
(``segloop.rl.compact.pretrain``; every field of ``PretrainConfig`` is a flag)."""

from __future__ import annotations

import argparse
import sys

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.rl.compact.pretrain import PretrainConfig

    add_config_arguments(parser, PretrainConfig)


def main(args: argparse.Namespace) -> int:
    from segloop.rl.compact.pretrain import PretrainConfig, train

    try:
        config = config_from_args(PretrainConfig, args)
        summary = train(config)
    except (OptionsError, ValueError, OSError) as exc:
        print(f"segloop train pretrain: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"pre-trained in {summary['cpu_min']} CPU min ({summary['wall_min']} min wall); "
          f"model in {config.out / 'final'}")
    return 0
