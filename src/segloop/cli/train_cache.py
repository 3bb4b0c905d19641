"""``segloop train cache``: render and label the compact policy's training states on synthetic scenes, once
(``segloop.rl.render_cache``; every field of ``CacheConfig`` is a flag)."""

from __future__ import annotations

import argparse
import sys

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.rl.render_cache import CacheConfig

    add_config_arguments(parser, CacheConfig)


def main(args: argparse.Namespace) -> int:
    from segloop.rl.render_cache import CacheConfig, build

    try:
        config = config_from_args(CacheConfig, args)
        summary = build(config)
    except (OptionsError, ValueError, OSError) as exc:
        print(f"segloop train cache: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{summary['states']} states from {summary['scenes']} scenes ({summary['images']} pictures) in "
          f"{config.out}: {summary['cpu_s'] / 60:.1f} CPU min, {summary['wall_s'] / 60:.1f} min wall")
    return 0
