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
