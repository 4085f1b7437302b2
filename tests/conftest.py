"""Fixtures shared by every test module; the helpers behind them live in tests/helpers/."""

import pytest

from helpers.plans import make_plans
from helpers.standin import coupled, standin  # noqa: F401 (fixtures, by name)


@pytest.fixture
def plans():
    return make_plans()
