"""Command-line flags generated from frozen config dataclasses: one flag per field.

    parser = argparse.ArgumentParser()
    add_config_flags(parser, SweepConfig)
    cfg = config_from_args(SweepConfig, parser.parse_args())

Tuple fields take a comma list (`--lr 1e-3,2e-3`), booleans are switches, `X | None` fields
accept a value or are left out. Help text shows the default, which reproduces the paper.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing


def _parse_tuple(item_type):
    def parse(text: str):
        try:
            return tuple(item_type(x) for x in text.split(",") if x.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma list of {item_type.__name__}: "
                                             f"{text!r}") from err

    return parse


def command_line(script: str, argv=None) -> str:
    """The command as typed, for results files: `python <script> <args>` (argv: sys.argv[1:])."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def add_config_flags(parser: argparse.ArgumentParser, cls, *, skip=(), choices=None,
                     help=None) -> None:
    """Add `--field-name` for every field of dataclass `cls` (except `skip`)."""
    choices = choices or {}
    help = help or {}
    types = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        t = types[f.name]
        default = f.default
        args = typing.get_args(t)
        text = help.get(f.name, "")
        if t is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=f"{text} (default: {default})")
            continue
        if typing.get_origin(t) is tuple:
            conv = _parse_tuple(args[0])
            shown = ",".join(str(x) for x in default)
        elif type(None) in args:  # Optional[X]
            conv = next(a for a in args if a is not type(None))
            shown = default
        else:
            conv = t
            shown = default
        parser.add_argument(flag, dest=f.name, type=conv, default=None,
                            choices=choices.get(f.name), help=f"{text} (default: {shown})")


def config_from_args(cls, args: argparse.Namespace, parser=None, **overrides):
    """The dataclass with every flag that was given; fields not given keep their defaults.

    A value the dataclass refuses (its ValueError names the field) ends as `parser.error`:
    usage and the reason on stderr, exit status 2, no traceback.
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if getattr(args, f.name, None) is not None}
    values.update(overrides)
    try:
        return cls(**values)
    except ValueError as err:
        if parser is None:
            raise
        parser.error(str(err))
