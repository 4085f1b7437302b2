"""Fixtures shared by every test module; the helpers behind them live in tests/helpers/."""

import os

import pytest

# The tests compare with float32 references (DESIGN: every parity test runs in f32), so
# `first_layer_dtype="auto"` resolves to float32 in every test and in every command a test runs,
# whatever the CPU (one with AMX or AVX512-BF16 would otherwise resolve it to bfloat16). A test of
# bf16 asks for it by name, or sets the variable itself.
os.environ.setdefault("MILPF_FIRST_LAYER_DTYPE", "float32")

from helpers.plans import make_plans  # noqa: E402 (after the variable, before any import of jax)
from helpers.standin import coupled, standin  # noqa: E402, F401 (fixtures, by name)


@pytest.fixture
def plans():
    return make_plans()
