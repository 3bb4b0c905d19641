"""``segloop train cache``: render the views the compact policy's perception learns from, every object labelled, once
(``segloop.rl.compact.cache``; every field of ``CacheConfig`` is a flag)."""

from __future__ import annotations

import argparse
import sys

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.rl.compact.cache import CacheConfig

    add_config_arguments(parser, CacheConfig)


def main(args: argparse.Namespace) -> int:
    from segloop.rl.compact.cache import CacheConfig, build

    try:
        config = config_from_args(CacheConfig, args)
        summary = build(config)
    except (OptionsError, ValueError, OSError) as exc:
        print(f"segloop train cache: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{summary['root_views']} full and {summary['zoom_views']} zoomed views of {summary['scenes']} scenes "
          f"({summary['objects_labelled']} objects labelled) in "
          f"{config.out}: {summary['cpu_s'] / 60:.1f} CPU min, {summary['wall_s'] / 60:.1f} min wall")
    return 0
