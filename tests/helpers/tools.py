"""System tools a test needs (Debian packages, listed in .ci/apt-packages)."""

from __future__ import annotations

import functools
import os
import shutil

import pytest


def needs_tool(name: str):
    """Decorate a test that runs the command `name`: without it on PATH the test is skipped with
    the reason, except where the environment variable CI is set (.ci/run sets it): there a
    missing tool fails the test, so CI cannot pass by skipping."""

    def decorate(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            if shutil.which(name) is None:
                reason = (f"{name} is not installed (its Debian package is listed in "
                          ".ci/apt-packages)")
                if os.environ.get("CI"):
                    pytest.fail(reason)
                pytest.skip(reason)
            return test(*args, **kwargs)

        return run

    return decorate
