"""Frozen configs (milpf_jax.config): one default, one help text, checks that name the field."""

from dataclasses import dataclass
from typing import Literal

import pytest

from milpf_jax.config import (
    ConfigError,
    as_dict,
    check,
    check_choices,
    from_dict,
    leaf_names,
    option,
    parse_k_of_n,
    with_leaves,
)
from milpf_jax.learning.head import HeadConfig, HeadImpl
from milpf_jax.sweep import SweepConfig


@dataclass(frozen=True)
class Inner:
    kind: Literal["a", "b"] = option("a", "which kind")
    size: int = option(2, "how many")

    def __post_init__(self):
        check_choices(self)
        check(self, self.size >= 1, "size", f"{self.size}; expected >= 1")


@dataclass(frozen=True)
class Outer:
    name: str = option("x", "a name")
    inner: Inner = option(Inner())


def test_checks_name_the_config_and_the_field():
    with pytest.raises(ConfigError, match=r"^Inner.kind: 'c': choose one of a, b$") as err:
        Inner(kind="c")
    assert err.value.fields == ("kind",) and err.value.owner == "Inner"
    with pytest.raises(ConfigError, match=r"^Inner.size: 0; expected >= 1$"):
        Inner(size=0)


def test_leaves_are_set_by_name_through_the_tree():
    assert leaf_names(Outer) == {"name": ("name",), "kind": ("inner", "kind"),
                                 "size": ("inner", "size")}
    cfg = with_leaves(Outer, kind="b", size=5)
    assert cfg == Outer(inner=Inner(kind="b", size=5))
    assert with_leaves(cfg, name="y") == Outer(name="y", inner=Inner(kind="b", size=5))
    with pytest.raises(ConfigError, match="not a field of Outer"):
        with_leaves(Outer, colour="red")
    with pytest.raises(ConfigError, match="Inner.size"):  # the nested check still runs
        with_leaves(Outer, size=0)


def test_the_sweep_tree_round_trips_through_plain_dicts():
    cfg = SweepConfig.of(seeds=3, lr=(1e-3, 2e-3), epochs=40, global_pool="mean",
                         first_layer_dtype="float32", fold="1/5", bootstrap=0)
    plain = as_dict(cfg)
    assert plain["train"]["head"]["global_pool"] == "mean" and plain["lr"] == [1e-3, 2e-3]
    assert plain["train"]["head"]["impl"] == as_dict(HeadImpl())
    assert from_dict(SweepConfig, plain) == cfg
    assert cfg.replace(split_seed=4).data == cfg.data.replace(split_seed=4)
    with pytest.raises(ConfigError, match="not a field of HeadConfig"):
        from_dict(HeadConfig, {"dim": 8, "colour": "red"})


def test_one_default_per_setting():
    """The sweep's head is HeadConfig's own: the first-layer dtype defaults to auto in both."""
    assert SweepConfig().train.head == HeadConfig()
    assert HeadConfig().first_layer_dtype == "auto"
    assert HeadConfig().resolved().first_layer_dtype in ("float32", "bfloat16")


@pytest.mark.parametrize("text, n_min, want", [("0/4", 1, (0, 4)), (" 2 / 3 ", 3, (2, 3))])
def test_k_of_n(text, n_min, want):
    assert parse_k_of_n(text, "shard", min_n=n_min) == want


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "0/2"])
def test_k_of_n_refused_names_the_setting(text):
    with pytest.raises(ConfigError, match=r"^fold: .*expected k/n with 0 <= k < n and n >= 3"):
        parse_k_of_n(text, "fold", min_n=3)


@dataclass(frozen=True)
class Command:
    runs: tuple[str, ...] = option(help="run folders", positional=True, metavar="RUN")
    out: str = option(help="where to write")
    kinds: tuple[Literal["a", "b"], ...] = option(("a",), "kinds, a comma list")
    span: tuple[float, float] = option((1.0, 2.0), "low and high")
    limit: int | None = option(None, "at most this many")
    quiet: bool = option(False, "say nothing", switch=True)
    strict: bool = option(False, "stop at the first problem")
    tree: Outer = option(Outer())

    def __post_init__(self):
        check(self, len(self.runs) >= 2, "runs", "give two runs or more")


def test_flags_are_made_from_the_tree_and_read_back_into_it(capsys):
    import argparse

    from milpf_jax.cli import add_config_flags, config_from_args

    parser = argparse.ArgumentParser(prog="cmd")
    add_config_flags(parser, Command)
    flags = sorted(o for a in parser._actions for o in a.option_strings)
    assert flags == ["--help", "--kind", "--kinds", "--limit", "--name", "--no-strict", "--out",
                     "--quiet", "--size", "--span", "--strict", "-h"]
    args = parser.parse_args(["r1", "r2", "--out", "o", "--kinds", "a,b", "--span", "0.5", "3",
                              "--size", "7", "--strict"])
    got = config_from_args(Command, args, parser)
    assert got == Command(runs=("r1", "r2"), out="o", kinds=("a", "b"), span=(0.5, 3.0),
                          strict=True, tree=Outer(inner=Inner(size=7)))
    with pytest.raises(SystemExit):  # a value outside the Literal: argparse's usage error
        parser.parse_args(["r1", "r2", "--out", "o", "--kinds", "a,c"])
    assert "--kinds: c: choose from a, b" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a check of a nested config names its flag
        config_from_args(Command, parser.parse_args(["r1", "r2", "--out", "o", "--size", "0"]),
                         parser)
    assert usage.value.code == 2 and "error: --size: 0; expected >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a positional is named as the command line shows it
        config_from_args(Command, parser.parse_args(["r1", "--out", "o"]), parser)
    assert "error: RUN: give two runs or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a field without a default is a required flag
        parser.parse_args(["r1", "r2"])
    assert "the following arguments are required: --out" in capsys.readouterr().err
