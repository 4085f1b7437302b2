"""The public API: `milpf_jax.<name>` for every name of `__all__`, loaded lazily from `_EXPORTS`.

Each name is one object however it is reached (twice, before or after its module or any other
submodule is imported), of the kind its name says (CamelCase: a class; else a function), and
never the name of a submodule (which an import would overwrite). `import milpf_jax` alone loads
neither JAX nor PyTorch nor transformers.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import types

import pytest

import milpf_jax
from helpers.repo import REPO

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "torch", "transformers")


def run_fresh(code: str) -> dict:
    """`code` in a fresh interpreter (it prints one JSON object last); that object."""
    env = dict(os.environ, MILPF_NO_TUNING="1")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_all_is_the_export_table():
    assert milpf_jax.__all__ == sorted(milpf_jax._EXPORTS)
    assert len(milpf_jax.__all__) == len(set(milpf_jax.__all__)) == 30
    assert set(milpf_jax.__all__) <= set(dir(milpf_jax))


@pytest.mark.parametrize("name", milpf_jax.__all__)
def test_name_is_one_object_of_its_kind(name):
    first = getattr(milpf_jax, name)
    assert getattr(milpf_jax, name) is first
    assert getattr(importlib.import_module(milpf_jax._EXPORTS[name]), name) is first
    assert not isinstance(first, types.ModuleType)
    if name[0].isupper():
        assert inspect.isclass(first), (name, first)
    else:
        assert inspect.isfunction(first), (name, first)
        assert first.__name__ == name


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        milpf_jax.no_such_name  # noqa: B018
    assert not hasattr(milpf_jax, "read_cohorts")


def test_no_export_is_a_submodule_name():
    submodules = {m.name for m in pkgutil.iter_modules(milpf_jax.__path__)}
    assert {"cli", "learning", "reading", "sweep"} <= submodules  # the walk sees the package
    assert submodules.isdisjoint(milpf_jax.__all__), submodules & set(milpf_jax.__all__)


def test_train_stays_the_function_after_its_module_is_imported():
    import milpf_jax.learning.train

    train_module = sys.modules["milpf_jax.learning.train"]
    assert isinstance(train_module, types.ModuleType)
    assert milpf_jax.train is train_module.train
    assert inspect.isfunction(milpf_jax.train)
    # and in a fresh process where the module is imported first, then the name reached
    got = run_fresh("""
        import json, types
        import milpf_jax.learning.train
        import milpf_jax
        from milpf_jax.learning import train as module
        print(json.dumps(dict(module=isinstance(module, types.ModuleType),
                              same=milpf_jax.train is module.train,
                              function=callable(milpf_jax.train)
                              and not isinstance(milpf_jax.train, types.ModuleType))))
    """)
    assert got == {"module": True, "same": True, "function": True}


def test_every_name_survives_importing_every_submodule():
    got = run_fresh("""
        import importlib, inspect, json, pkgutil, types
        import milpf_jax

        before = {name: getattr(milpf_jax, name) for name in milpf_jax.__all__}
        modules, failed = [], {}
        for info in pkgutil.walk_packages(milpf_jax.__path__, "milpf_jax.",
                                          onerror=lambda n: failed.setdefault(n, "walk")):
            try:
                importlib.import_module(info.name)
                modules.append(info.name)
            except Exception as err:
                failed[info.name] = repr(err)
        after = {name: getattr(milpf_jax, name) for name in milpf_jax.__all__}
        kinds = {name: "module" if isinstance(v, types.ModuleType) else "class"
                 if inspect.isclass(v) else "function" if inspect.isfunction(v) else
                 "callable" if callable(v) else type(v).__name__ for name, v in after.items()}
        print(json.dumps(dict(
            modules=modules, failed=failed, kinds=kinds,
            changed=sorted(n for n in before if after[n] is not before[n]),
            attr_changed=sorted(n for n in before if vars(milpf_jax).get(n) is not before[n]),
        )))
    """)
    assert got["failed"] == {}
    modules = set(got["modules"])
    assert {"milpf_jax.learning.train", "milpf_jax.extraction.extract", "milpf_jax.sweep",
            "milpf_jax.cli", "milpf_jax.reading.sources"} <= modules
    assert len(modules) >= 50
    assert got["changed"] == []
    assert got["attr_changed"] == []
    assert got["kinds"] == {n: "class" if n[0].isupper() else "function"
                            for n in milpf_jax.__all__}


def test_import_alone_loads_no_framework():
    got = run_fresh(f"""
        import json, sys
        import milpf_jax
        heavy = {HEAVY!r}
        def loaded():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
        at_import = loaded()
        milpf_jax.__all__, dir(milpf_jax)
        after_dir = loaded()
        milpf_jax.read_cohort, milpf_jax.Cohort, milpf_jax.ExtractConfig
        after_reading = loaded()
        milpf_jax.train
        after_train = loaded()
        print(json.dumps(dict(at_import=at_import, after_dir=after_dir,
                              after_reading=after_reading, after_train=after_train)))
    """)
    assert got["at_import"] == []
    assert got["after_dir"] == []
    assert got["after_reading"] == []  # reading and extraction's config stay framework-free
    assert "jax" in got["after_train"]  # the check sees a framework when one loads


def test_dir_lists_each_name_once():
    milpf_jax.Store  # noqa: B018 (cached in the module's globals)
    names = dir(milpf_jax)
    assert len(names) == len(set(names))
