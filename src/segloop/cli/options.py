"""Pydantic configs as command-line flags, with no per-command glue.

``add_config_arguments(parser, Config)`` adds one flag per field (``max_turns`` -> ``--max-turns``) whose
help is the field's description and whose default is the field's default (shown by ``--help``);
``config_from_args(Config, args)`` builds the config back from the parsed namespace, so pydantic's
validation (ranges, literals) is the one place options are checked. Nested configs become prefixed
flags (``reward.mode`` -> ``--reward-mode``). A field may name extra spellings of its flag in
``json_schema_extra={"cli_aliases": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined


class OptionsError(ValueError):
    """Options that do not make a valid config; the message names the flag."""


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: type[BaseModel], *,
                         exclude: Collection[str] = (), prefix: str = "",
                         defaults: dict[str, Any] | None = None,
                         choices: dict[str, Collection[str]] | None = None) -> None:
    """Add a flag for every field of ``config`` except ``exclude``; ``defaults`` override the model's, and
    ``choices`` restrict a string field to the values this command accepts (the parser lists them)."""
    defaults = defaults or {}
    choices = choices or {}
    for name, field in config.model_fields.items():
        if name in exclude:
            continue
        dest = prefix + name
        annotation, optional = _unwrap_optional(field.annotation)
        if _is_model(annotation):
            add_config_arguments(parser, annotation, prefix=f"{dest}_", defaults=defaults.get(name))
            continue
        if name in defaults:
            default = defaults[name]
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            default = field.default
        required = default is PydanticUndefined
        # argparse expands "%(...)s" in help texts: a literal "%" in a description must be doubled.
        help_text = (field.description or name.replace("_", " ")).replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": dest, "help": help_text}
        if required:  # no "(default: None)" in --help for a flag that must be given
            kwargs.update(required=True, default=argparse.SUPPRESS)
        else:
            kwargs["default"] = default
        origin = typing.get_origin(annotation)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation)
            kwargs["type"] = type(typing.get_args(annotation)[0])
        elif origin in (list, tuple):
            item = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
            kwargs.update(nargs="*" if optional else "+", type=item)
        elif origin is dict or annotation is dict:
            kwargs.update(type=json.loads, metavar="JSON")
        elif annotation in (int, float, str, Path):
            kwargs["type"] = annotation
        else:
            raise TypeError(f"{config.__name__}.{name}: no command-line form for {field.annotation!r}")
        if name in choices:
            kwargs["choices"] = tuple(choices[name])
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        parser.add_argument(_flag(dest), *extra.get("cli_aliases", ()), **kwargs)


def config_values(config: type[BaseModel], args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The fields of ``config`` found in ``args`` (nested configs as dicts)."""
    values: dict[str, Any] = {}
    for name, field in config.model_fields.items():
        annotation, _ = _unwrap_optional(field.annotation)
        if _is_model(annotation):
            nested = config_values(annotation, args, prefix=f"{prefix}{name}_")
            if nested:
                values[name] = nested
        elif hasattr(args, prefix + name):
            values[name] = getattr(args, prefix + name)
    return values


def config_from_args(config: type[BaseModel], args: argparse.Namespace, **overrides: Any) -> Any:
    """``config`` built from the parsed flags (plus ``overrides``); a bad value raises ``OptionsError``
    naming its flag."""
    try:
        return config(**{**config_values(config, args), **overrides})
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:3]:
            flag = _flag("_".join(str(p) for p in error["loc"])) if error["loc"] else config.__name__
            problems.append(f"{flag}: {error['msg']}")
        raise OptionsError("; ".join(problems)) from None
