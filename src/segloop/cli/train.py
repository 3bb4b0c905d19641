"""``segloop train cache|pretrain|sft|grpo``: each trainer's pydantic config is its command line (every field
a flag, no per-field glue: ``cli.options``); the trainer runs on the shared scaffold (``rl.scaffold``), and
this prints the one line its summary ends with."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any

from segloop.cli.options import OptionsError, add_config_arguments, config_from_args
from segloop.cli.paths import check_out_folder


@dataclass(frozen=True)
class Trainer:
    """A ``segloop train`` subcommand: the module holding the trainer's config class and its run function."""

    name: str
    module: str
    config: str
    run: str = "train"

    def _load(self) -> tuple[Any, Any]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.run)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        config, _ = self._load()
        add_config_arguments(parser, config)

    def main(self, args: argparse.Namespace) -> int:
        config_class, run = self._load()
        try:
            config = config_from_args(config_class, args)
            check_out_folder(config.out)  # before any work
            summary = run(config)
        except (OptionsError, ValueError, ImportError, OSError) as exc:
            print(f"segloop train {self.name}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        print(f"{summary['result']} ({summary['cpu_min']} CPU min, {summary['wall_min']} min wall)")
        return 0


cache = Trainer("cache", "segloop.rl.compact.cache", "CacheConfig", run="build")
pretrain = Trainer("pretrain", "segloop.rl.compact.pretrain", "PretrainConfig")
sft = Trainer("sft", "segloop.rl.sft", "SFTConfig")
grpo = Trainer("grpo", "segloop.rl.grpo", "GRPOConfig")
