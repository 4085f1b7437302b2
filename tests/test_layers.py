"""The import layers of pyproject.toml's [tool.importlinter]: kept by the tree, and really checked.

`lint-imports` runs on the repository as it is (every contract KEPT), then on copies of the
package with one import injected that breaks a contract, to show that the contracts catch what
they claim to (a contract that cannot fail protects nothing).

The package is installed editable (a setuptools `__editable__` finder that maps `milpf_jax` to
this checkout). For a copy, grimp must analyse the copy, not the install: lint-imports puts its
cwd first on sys.path, and the editable finder is appended to sys.meta_path, after the ordinary
path finder, so a `milpf_jax/` in the cwd wins. PYTHONPATH is set to the copy as well (first),
so the same holds for any interpreter started with that environment, and every copy test checks
that `milpf_jax` resolves to the copy under that environment before trusting lint-imports' word.
`--no-cache` keeps grimp from writing (or reusing) `.import_linter_cache/`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.repo import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = (
    "Layers follow the data flow",
    "Reading never imports JAX or PyTorch",
    "Evaluation never imports JAX or PyTorch",
)

# Skipped without import-linter (the `test` extra), except in CI (CI set): there it fails.
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file() and not os.environ.get("CI"),
                                reason=f"import-linter not installed ({LINT_IMPORTS} missing)")


def lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=120)


def statuses(output: str) -> dict[str, str]:
    """contract name -> KEPT or BROKEN, from lint-imports' summary lines."""
    found = dict(re.findall(r"^(.+?) (KEPT|BROKEN)$", output, flags=re.MULTILINE))
    assert set(found) == set(CONTRACTS), output
    return found


def copy_tree(dest: Path) -> Path:
    """milpf_jax/, experiments/ and pyproject.toml copied to dest (no bytecode)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("milpf_jax", "experiments"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    # The copy is what an interpreter started there imports, not the editable install.
    env = dict(os.environ, PYTHONPATH=str(dest))
    where = subprocess.run([sys.executable, "-c", "import milpf_jax; print(milpf_jax.__file__)"],
                           cwd=dest, env=env, capture_output=True, text=True, check=False,
                           timeout=60)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve() == (dest / "milpf_jax" / "__init__.py").resolve()
    return dest


def inject(path: Path, line: str) -> None:
    text = path.read_text()
    path.write_text(text + ("" if text.endswith("\n") else "\n") + line + "\n")


def test_repository_keeps_every_contract():
    res = lint(REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert statuses(out) == {name: "KEPT" for name in CONTRACTS}
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in out


@pytest.fixture(scope="module")
def pristine_copy(tmp_path_factory):
    """An unmodified copy: it passes, so a failure in a modified copy is the injection's."""
    dest = copy_tree(tmp_path_factory.mktemp("layers-pristine"))
    res = lint(dest, pythonpath=dest)
    assert res.returncode == 0, res.stdout + res.stderr
    assert statuses(res.stdout) == {name: "KEPT" for name in CONTRACTS}
    return dest


def test_unmodified_copy_keeps_every_contract(pristine_copy):
    assert (pristine_copy / "milpf_jax" / "reading" / "manifest.py").read_text() == (
        REPO / "milpf_jax" / "reading" / "manifest.py").read_text()


def test_upward_import_breaks_the_layers(pristine_copy, tmp_path):
    dest = copy_tree(tmp_path)
    inject(dest / "milpf_jax" / "reading" / "manifest.py",
           "from milpf_jax.learning import head  # noqa")
    res = lint(dest, pythonpath=dest)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    got = statuses(out)
    assert got["Layers follow the data flow"] == "BROKEN"
    assert got["Evaluation never imports JAX or PyTorch"] == "KEPT"
    assert "milpf_jax.reading is not allowed to import milpf_jax.learning" in out
    assert "milpf_jax.reading.manifest -> milpf_jax.learning.head" in out
    # The install (this checkout) is untouched and still passes: the copy was analysed.
    assert "milpf_jax.learning" not in (REPO / "milpf_jax/reading/manifest.py").read_text()


def test_jax_in_evaluation_breaks_the_forbidden_contract(pristine_copy, tmp_path):
    dest = copy_tree(tmp_path)
    inject(dest / "milpf_jax" / "evaluation" / "metrics.py", "import jax  # noqa")
    res = lint(dest, pythonpath=dest)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert statuses(out) == {
        "Layers follow the data flow": "KEPT",
        "Reading never imports JAX or PyTorch": "KEPT",
        "Evaluation never imports JAX or PyTorch": "BROKEN",
    }
    assert "milpf_jax.evaluation is not allowed to import jax" in out
    assert "milpf_jax.evaluation.metrics -> jax" in out
