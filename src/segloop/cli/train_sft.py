"""``segloop train sft``: supervised warm start of a learnable policy from expert trajectories
(``segloop.rl.sft``; every field of ``SFTConfig`` is a flag)."""

from __future__ import annotations

import argparse
import sys

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from segloop.policies.registry import SCRIPTED
    from segloop.rl.sft import SFTConfig

    add_config_arguments(parser, SFTConfig, choices={"expert": SCRIPTED})


def main(args: argparse.Namespace) -> int:
    from segloop.cli.paths import check_out_folder
    from segloop.rl.sft import SFTConfig, train

    try:
        config = config_from_args(SFTConfig, args)
        check_out_folder(config.out)  # before any training starts
        summary = train(config)
    except (OptionsError, ValueError, ImportError, OSError) as exc:
        print(f"segloop train sft: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    result = summary.get("eval")
    tail = f"held-out gIoU {result['giou']:.4f} cIoU {result['ciou']:.4f}; " if result else ""
    print(f"{tail}model in {config.out / 'final'}")
    return 0
