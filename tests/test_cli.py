"""The command lines: their flags as they were, usage errors (exit 2), a user's errors (exit 1).

Flags: every CLI's parser keeps exactly the option strings and positionals recorded in
tests/golden/cli_flags.json before the flags were generated from the config dataclasses.

Usage errors: a bad value or combination exits 2, naming the flag, before anything is read,
extracted or trained (checked on the scripts run as subprocesses, the way a user runs them,
from an empty folder with an empty MILPF_CACHE: both stay empty).

A user's errors (missing run folder, store, CSV, folder; a hub model not available offline):
one `error: ...` paragraph on stderr, exit 1, no traceback unless MILPF_DEBUG=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.repo import REPO, load_script

GOLDEN = json.loads((REPO / "tests" / "golden" / "cli_flags.json").read_text())
BENCHMARKS = ("benchmark", "extract_throughput")
EXPERIMENTS = REPO / "experiments"
USAGE_LIMIT_S = 5.0  # a usage error is reported before anything heavy is done


# -- the flags, as recorded ----------------------------------------------------------------------


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (registered first: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench_script",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_parser(name: str):
    if name in BENCHMARKS:
        return load_benchmark(name).build_parser()
    module = load_script(name)
    if name == "ablation":  # ablation.py parses with the sweep's parser
        from milpf_jax.cli import sweep_parser

        assert not hasattr(module, "build_parser")
        assert module.sweep_parser is sweep_parser
        return sweep_parser()
    return module.build_parser()


def test_golden_names_every_cli():
    scripts = {p.stem for p in EXPERIMENTS.glob("*.py")} - {"__init__"}
    assert set(GOLDEN) == scripts | set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_flags_match_golden(name):
    parser = build_parser(name)
    flags = sorted(s for action in parser._actions for s in action.option_strings)
    positional = [action.dest for action in parser._actions if not action.option_strings]
    assert flags == GOLDEN[name]["flags"]
    assert positional == GOLDEN[name]["positional"]


# -- running the scripts -------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    """An environment with an empty cache, offline, no tuning re-exec, no debug tracebacks."""
    e = dict(os.environ, MILPF_NO_TUNING="1", MILPF_CACHE=str(tmp_path / "cache"),
             HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    e.pop("MILPF_DEBUG", None)
    return e


def run_script(script: str, args, env, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """experiments/<script>.py run as a user runs it; (result, wall seconds)."""
    cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(EXPERIMENTS / f"{script}.py"), *args], cwd=cwd,
                         env=env, capture_output=True, text=True, check=False, timeout=300)
    return res, time.perf_counter() - t0


def assert_nothing_written(cwd: Path, cache: Path):
    assert sorted(p.name for p in cwd.iterdir()) == []  # no runs/ folder, nothing
    for name in ("stores", "cohorts"):
        assert not (cache / name).exists(), sorted(cache.rglob("*"))


def assert_usage_error(res, elapsed, flags):
    last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert ": error: " in last, res.stderr[-2000:]
    for flag in flags:  # the whole flag: --fold is not named by a message naming --folds
        assert re.search(re.escape(flag) + r"(?![\w-])", last), (flag, last)
    assert elapsed < USAGE_LIMIT_S, f"usage error after {elapsed:.1f} s: {last}"


# -- usage errors: exit 2, the flag named, nothing done ------------------------------------------

SWEEP_USAGE = {
    "seeds": (["--seeds", "0"], ["--seeds"]),
    "bootstrap": (["--bootstrap", "-1"], ["--bootstrap"]),
    "fold": (["--fold", "7/5"], ["--fold"]),
    "no-stream": (["--global-pool", "none", "--local-pool", "none"],
                  ["--global-pool", "--local-pool"]),
    "instance-two-streams": (["--mode", "instance"], ["--mode"]),  # both streams by default
    "encoder": (["--encoder", "nope"], ["--encoder"]),
    "lr": (["--lr", "0"], ["--lr"]),
    "mapping": (["--mapping", "nope"], ["--mapping"]),
    "split-seeds-and-seed": (["--split-seeds", "0,1", "--split-seed", "3"],
                             ["--split-seeds", "--split-seed"]),
    "folds": (["--folds", "2"], ["--folds"]),
}


# Each case costs a process start with JAX imported (about 3 s here): the default tier keeps one
# of each kind (a field's own check, two fields together, two flags of the command, a registry
# name), the rest run with -m slow.
SWEEP_USAGE_DEFAULT = {"seeds", "no-stream", "split-seeds-and-seed", "encoder"}


@pytest.mark.parametrize("case", [
    c if c in SWEEP_USAGE_DEFAULT else pytest.param(c, marks=pytest.mark.slow)
    for c in sorted(SWEEP_USAGE)])
def test_sweep_usage_error(case, env, tmp_path):
    args, flags = SWEEP_USAGE[case]
    cwd = tmp_path / "cwd"
    res, elapsed = run_script("sweep", args, env, cwd)
    assert_usage_error(res, elapsed, flags)
    assert_nothing_written(cwd, Path(env["MILPF_CACHE"]))


OTHER_USAGE = {
    "extract-shard": ("extract", ["--cohort", "x.csv", "--shard", "3/2"], ["--shard"]),
    "extract-batch-size": ("extract", ["--cohort", "x.csv", "--batch-size", "0"],
                           ["--batch-size"]),
    "explain-overlap": ("explain", ["--run", "R", "--out", "O", "--overlap", "1.5"],
                        ["--overlap"]),
    "compare-one-run": ("compare", ["onlyone"], ["two run folders"]),
    "phantom-n-patients": ("phantom", ["--out", "O", "--n-patients", "0"], ["--n-patients"]),
    "import-features-bags": ("import_features", ["--format", "milpf-h5", "--h5", "e.hdf5",
                                                 "--encoder-name", "x", "--out", "O"],
                             ["--bags"]),
}


@pytest.mark.parametrize("case", sorted(OTHER_USAGE))
def test_other_usage_error(case, env, tmp_path):
    script, args, named = OTHER_USAGE[case]
    cwd = tmp_path / "cwd"
    res, elapsed = run_script(script, args, env, cwd)
    assert_usage_error(res, elapsed, named)
    assert_nothing_written(cwd, Path(env["MILPF_CACHE"]))


def test_positional_usage_error_names_the_argument_not_a_flag(env, tmp_path):
    res, _ = run_script("compare", ["onlyone"], env, tmp_path / "cwd")
    assert res.returncode == 2
    assert "--runs" not in res.stderr and "error: RUN: give at least two run folders" in \
        res.stderr


# -- a user's errors: exit 1, one `error:` paragraph, no traceback -------------------------------


def user_error_cases(t: Path) -> dict[str, tuple[str, list[str], str]]:
    """case -> (script, args, a path the message must name)."""
    return {
        "sweep-store": ("sweep", ["--store", str(t / "missing.zarr")], str(t / "missing.zarr")),
        "evaluate-run": ("evaluate", ["--run", str(t / "norun"), "--store", str(t / "nostore")],
                         str(t / "norun")),
        "explain-run": ("explain", ["--run", str(t / "norun"), "--out", str(t / "o")],
                        str(t / "norun")),
        "extract-cohort": ("extract", ["--cohort", str(t / "missing.csv")],
                           str(t / "missing.csv")),
        "compare-runs": ("compare", [str(t / "a"), str(t / "b")], str(t / "a")),
        "subgroups-run": ("subgroups", ["--run", str(t / "norun"), "--by", "x"],
                          str(t / "norun")),
        "manifest-dicom-dir": ("manifest", ["--dicom-dir", str(t / "nodir"), "--labels",
                                            str(t / "no.csv"), "--out", str(t / "m.csv")],
                               str(t / "nodir")),
        "import-features-h5": ("import_features", ["--format", "milpf-h5", "--h5",
                                                   str(t / "no.hdf5"), "--bags",
                                                   str(t / "bags.csv"), "--encoder-name", "x",
                                                   "--out", str(t / "o.zarr")],
                               str(t / "no.hdf5")),
    }


USER_ERRORS = sorted(user_error_cases(Path("/x")))


def assert_user_error(res, named: str):
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert res.stderr.startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "\n\n" not in res.stderr.strip()  # one paragraph
    assert named in res.stderr


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_error(case, env, tmp_path):
    script, args, named = user_error_cases(tmp_path / "given")[case]
    cwd = tmp_path / "cwd"
    res, _ = run_script(script, args, env, cwd)
    assert_user_error(res, named)
    assert not (tmp_path / "given").exists()  # nothing made where the user pointed
    assert_nothing_written(cwd, Path(env["MILPF_CACHE"]))


def test_debug_shows_the_traceback(env, tmp_path):
    missing = tmp_path / "missing.zarr"
    res, _ = run_script("sweep", ["--store", str(missing)], dict(env, MILPF_DEBUG="1"),
                        tmp_path / "cwd")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback (most recent call last)" in res.stderr
    assert "FileNotFoundError" in res.stderr
    assert str(missing) in res.stderr


def test_hub_model_offline_is_one_short_message(env, tmp_path):
    """A gated hub model, offline and not cached: what to do, not a traceback. The phantom
    cohort is made first (a second or two), then loading the encoder stops; the torch and
    transformers imports before that make this the slowest case here (about 20 s)."""
    spec = "phantom:n_patients=4,rows=256,cols=208,pixel_spacing_mm=0.8"
    cwd = tmp_path / "cwd"
    res, _ = run_script("sweep", ["--cohort", spec, "--encoder", "medsiglip", "--quiet"], env,
                        cwd)
    err = res.stderr
    assert res.returncode == 1, err[-3000:]
    assert err.startswith("error: "), err[-3000:]
    assert "Traceback" not in err
    assert "google/medsiglip-448" in err
    assert "gated" in err and "licence" in err
    assert "HF_HUB_OFFLINE" in err
    assert len(err.strip().splitlines()) < 15, err
    assert sorted(p.name for p in cwd.iterdir()) == []  # no run folder
    stores = Path(env["MILPF_CACHE"]) / "stores"
    assert not stores.exists() or sorted(stores.iterdir()) == []  # no half-made store
