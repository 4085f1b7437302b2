"""Frozen configuration: defaults and help written once, checked when a config is made.

Every setting of milpf-jax lives in a frozen dataclass whose fields are made by `option`: the
default, the help text a command line shows, and, where they differ from the field's, the
flag's name or kind. A `Literal[...]` type gives the valid values. `__post_init__` calls
`check_choices` and raises `ConfigError` naming the field(s) a check refused, so the same check
serves a library caller ("HeadConfig.global_pool: ...") and a command line ("--global-pool:
..."; `milpf_jax.cli` makes one flag per field of a config tree, nested configs included).

    @dataclass(frozen=True)
    class EvalConfig:
        bootstrap: int = option(1000, "bootstrap resamples for the 95% intervals (0: none)")

        def __post_init__(self):
            check(self, self.bootstrap >= 0, "bootstrap", f"{self.bootstrap}: expected >= 0")
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence

MISSING = dataclasses.MISSING


def option(default=MISSING, help: str = "", *, flag: str | None = None, cli: bool = True,
           switch: bool = False, positional: bool = False, metavar: str | None = None,
           hidden: bool = False, default_factory=MISSING):
    """A config field. help: what the flag's help says (the default is added to it).

    flag: the flag's name without dashes when it is not the field's (`bags` for max_bags);
    cli=False: no flag (set by code: a store's dim, an implementation switch); switch: a
    bool flag that only turns on (`--quiet`), not `--x/--no-x`; positional: a positional
    argument (a tuple field takes one or more); hidden: a flag left out of --help.
    """
    meta = dict(help=help, flag=flag, cli=cli, switch=switch, positional=positional,
                metavar=metavar, hidden=hidden)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A config value (or combination of values) that a check refused.

    fields: the field name(s) concerned; reason: why; owner: the config class's name. str()
    names them: "TilingConfig.overlap: 1.5; expected a fraction in [0, 1)".
    """

    def __init__(self, fields: str | Sequence[str], reason: str, owner: str = ""):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.reason = reason
        self.owner = owner
        prefix = f"{owner}." if owner else ""
        super().__init__(f"{' and '.join(prefix + f for f in self.fields)}: {reason}")


def check(cfg, condition: bool, fields: str | Sequence[str], reason: str) -> None:
    """Raise ConfigError(fields, reason) for config `cfg` unless `condition`."""
    if not condition:
        raise ConfigError(fields, reason, type(cfg).__name__)


def literal_choices(tp) -> tuple | None:
    """The values of a Literal[...] type (also of `Literal[...] | None`), else None."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is typing.Literal:
                return typing.get_args(arg)
    return None


def check_choices(cfg) -> None:
    """Every Literal-typed field of dataclass `cfg` holds one of its values (or None where the
    type allows it)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = literal_choices(hints[f.name])
        value = getattr(cfg, f.name)
        if choices is None or value in choices:
            continue
        if value is None and type(None) in typing.get_args(hints[f.name]):
            continue
        raise ConfigError(f.name, f"{value!r}: choose one of {', '.join(map(str, choices))}",
                          type(cfg).__name__)


_K_OF_N = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_k_of_n(text, what: str, *, min_n: int = 1, example: str = "0/4") -> tuple[int, int]:
    """'k/n' -> (k, n) with 0 <= k < n and n >= min_n; ConfigError(what) otherwise.

    What a shard (`--shard i/n`) and a fold (`--fold k/n`) are written as."""
    match = _K_OF_N.fullmatch(str(text))
    k, n = (int(match[1]), int(match[2])) if match else (-1, 0)
    if not (n >= min_n and 0 <= k < n):
        raise ConfigError(what, f"{text!r}: expected k/n with 0 <= k < n"
                          + (f" and n >= {min_n}" if min_n > 1 else "") + f", e.g. {example}")
    return k, n


def config_fields(cls) -> list[tuple[dataclasses.Field, object]]:
    """(field, resolved type) of a config dataclass, in order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def as_dict(cfg) -> dict:
    """A config tree as nested plain dicts (tuples as lists), e.g. for results.json."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def from_dict(cls, values: dict):
    """The config `cls` from (nested) plain dicts as `as_dict` writes them; unknown keys raise
    ConfigError naming them, missing keys keep their defaults."""
    known = {f.name: tp for f, tp in config_fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(unknown, f"not a field of {cls.__name__} (fields: {sorted(known)})")
    kwargs = {}
    for name, value in values.items():
        tp = known[name]
        if is_config(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def leaf_names(cls) -> dict[str, tuple[str, ...]]:
    """leaf field name -> its path in a config tree ("global_pool" -> ("train", "head",
    "global_pool")); a name used twice in one tree raises ValueError."""
    out: dict[str, tuple[str, ...]] = {}
    for f, tp in config_fields(cls):
        paths = ({k: (f.name, *v) for k, v in leaf_names(tp).items()} if is_config(tp)
                 else {f.name: (f.name,)})
        for name, path in paths.items():
            if name in out:
                raise ValueError(f"{cls.__name__}: field {name!r} at {out[name]} and {path}")
            out[name] = path
    return out


def with_leaves(cfg_or_cls, **values):
    """A config tree with leaf fields set by their names, nested configs rebuilt from what the
    tree holds (an instance) or from their defaults (a class); unknown names raise
    ConfigError.

        with_leaves(SweepConfig, epochs=50, global_pool="mean")
        with_leaves(cfg, split_seed=3)
    """
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    base = None if isinstance(cfg_or_cls, type) else cfg_or_cls
    unknown = sorted(set(values) - set(leaf_names(cls)))
    if unknown:
        raise ConfigError(unknown, f"not a field of {cls.__name__}", cls.__name__)
    return _build(cls, base, values)


def _build(cls, base, values: dict):
    changes = {}
    for f, tp in config_fields(cls):
        if is_config(tp):
            if base is not None:
                sub_base = getattr(base, f.name)
            elif f.default is not MISSING:
                sub_base = f.default
            else:
                sub_base = None
            sub = _build(tp, sub_base, values)
            if sub is not sub_base:
                changes[f.name] = sub
        elif f.name in values:
            value = values[f.name]
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    if base is None:
        return cls(**changes)
    return dataclasses.replace(base, **changes) if changes else base
