"""Where the tests find the repository's scripts and the real mammograms beside it."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# mini-MIAS is never copied into the repository: tests read it from beside the checkout.
MIAS_DIR = Path(os.environ.get("MILPF_MIAS_DIR", REPO.parent / "shared" / "data" / "mias-dev"))
needs_mias = pytest.mark.skipif(
    not ((MIAS_DIR / "images").is_dir() and (MIAS_DIR / "Info.txt").is_file()),
    reason=f"mini-MIAS folder not found at {MIAS_DIR}; set MILPF_MIAS_DIR to a folder holding "
    "Info.txt and images/mdbNNN.png",
)


def load_script(name: str, folder: str = "experiments"):
    """<folder>/<name>.py as a module, so tests call its main() as the README's commands do."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module
