"""``segloop``: the command line. Each subcommand lives in its own module, imported only when used,
so ``segloop --help`` stays fast; a module gives ``add_arguments(parser)`` and ``main(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Nested names ("bench tools") are subcommands of a group.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agent.run_cli", "run the agent on one image and request"),
    "batch": ("agent.batch", "run episodes over a dataset manifest and score them"),
    "synth": ("agent.synth", "write a seeded synthetic world of cluttered scenes with referring queries"),
    "eval-masks": ("agent.evaluate", "score a folder of predicted mask PNGs against a manifest"),
    "make-tiny": ("policies.tiny", "build a tiny Qwen2.5-VL-architecture model that trains on a CPU"),
    "demo": ("demos.app", "start the Gradio chat demo"),
    "bench tools": ("tools.bench", "time SAM2 encode/prompt, overlays and GrabCut on this machine"),
    "bench agent": ("agent.bench", "time the agent's own per-turn overhead"),
    "train sft": ("rl.sft", "supervised warm start from expert trajectories"),
    "train grpo": ("rl.grpo", "GRPO on the IoU of the submitted mask"),
    "export-verl": ("rl.verl.export", "write a manifest as verl's RLHFDataset parquet for the segloop_agent loop"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segloop", description="segloop: segment what a sentence asks for by acting.")
    parser.add_argument("--version", action="version", version="segloop 0.1.0")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (module, help_text) in COMMANDS.items():
        words = name.split()
        if len(words) == 1:
            sub = top.add_parser(name, help=help_text, description=help_text)
        else:
            group, leaf = words
            if group not in groups:
                group_parser = top.add_parser(group, help=f"{group} commands")
                groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[group].add_parser(leaf, help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        # Only the invoked command's module is imported (its imports may be heavy).
        if argv[: len(words)] == words:
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
