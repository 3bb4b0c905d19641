"""``segloop``: the command line, and the composition root: the only layer that imports every other.

Each subcommand lives in its own module of this package (or is an object of one: ``module:name``), imported
only when used, so ``segloop --help`` stays fast; it gives ``add_arguments(parser)`` and ``main(args) -> int``.
Help texts show every default. Errors a user can cause end in one clear line on stderr and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from segloop.evaluation.provenance import segloop_version
from segloop.tools.redaction import RedactingStream

# name -> (module or "module:object", one-line help). Nested names ("bench tools") are subcommands of a group.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("segloop.cli.run", "run the agent on one image and request"),
    "batch": ("segloop.cli.batch", "run episodes over a dataset and score them (resumable)"),
    "demo": ("segloop.cli.demo", "start the Gradio chat demo"),
    "synth": ("segloop.cli.synth", "write a seeded synthetic world of cluttered scenes with referring queries"),
    "eval-masks": ("segloop.cli.eval_masks", "score a folder of predicted mask PNGs against a dataset"),
    "train cache": ("segloop.cli.train:cache", "render the views the compact policy's perception learns from, once"),
    "train pretrain": ("segloop.cli.train:pretrain", "dense pre-training of the compact policy's perception"),
    "train sft": ("segloop.cli.train:sft", "imitation of an expert (on its episodes, or DAgger on the student's)"),
    "train grpo": ("segloop.cli.train:grpo", "GRPO on the IoU of the submitted mask"),
    "make-tiny": ("segloop.cli.make_tiny", "build a tiny Qwen2.5-VL-architecture model that trains on a CPU"),
    "export-verl": ("segloop.cli.export_verl", "write samples as verl's RLHFDataset parquet (segloop_agent loop)"),
    "bench tools": ("segloop.cli.bench_tools", "time SAM2 encode/prompt, overlays and GrabCut on this machine"),
    "bench agent": ("segloop.cli.bench_agent", "time the agent's own per-turn overhead"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except where the help text already states it or the option is required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segloop", description="segloop: segment what a sentence asks for by acting.")
    parser.add_argument("--version", action="version", version=f"segloop {segloop_version()}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in COMMANDS.items():
        words = name.split()
        options = {"help": help_text, "description": help_text,
                   "formatter_class": HelpFormatter}
        if len(words) == 1:
            sub = top.add_parser(name, **options)
        else:
            group, leaf = words
            if group not in groups:
                group_parser = top.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[group].add_parser(leaf, **options)
        sub.set_defaults(_command=module)
        # Only the invoked command's module is imported (its imports may be heavy).
        if argv[: len(words)] == words:
            _command(module).add_arguments(sub)
    return parser


def _command(target: str) -> Any:
    """The module (or ``module:object``) that implements a command."""
    module, _, name = target.partition(":")
    found = importlib.import_module(module)
    return getattr(found, name) if name else found


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Every console line passes through redaction: a key echoed in a server's error, credentials in a URL.
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(stdout), RedactingStream(stderr)
    try:
        args = build_parser(argv).parse_args(argv)
        args._argv = argv  # the command line as given: what an interrupted batch prints to resume
        return int(_command(args._command).main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = stdout, stderr

