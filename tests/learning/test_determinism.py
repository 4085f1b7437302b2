"""Determinism: the same seeds give bit-identical parameters and metrics on
CPU, within one process and across two processes; different seeds start from different
parameters.

The original code set no seed, so its "36 runs" could share an initialisation (or differ from
one invocation to the next); here every run's key is fold_in(key(init_seed), seed index), so all
36 runs start apart, and the whole sweep reproduces bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from milpf_jax.data.packed import load_packed
from milpf_jax.learning import train as T
from milpf_jax.learning.checkpoint import load_head
from milpf_jax.learning.head import HeadConfig
from milpf_jax.sweep import SweepConfig
from milpf_jax.synthetic.embeddings import SyntheticConfig, write_synthetic_store

REPO = Path(__file__).resolve().parents[2]
D = 8
# The parts of results.json that are metrics or selections (not timings, paths or versions).
METRIC_KEYS = ("config", "head", "data", "runs", "summary", "summary_val", "best")


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_bitwise_equal(a, b, what: str) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb), what
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert x.tobytes() == y.tobytes(), f"{what}: not bit-identical"


@jax.jit
def _init_runs(keys, hp):
    cfg = T.TrainConfig(head=HeadConfig(dim=D))
    # init_state needs only the key and the head's shapes, not the data.
    return jax.vmap(lambda k, h: T.init_state(k, h, None, cfg).params)(keys, hp)


def _init_params(seeds: int, *, init_seed: int = 0, lrs=(2e-3,), wds=(1e-4,)):
    """Initial parameters of every run as `run_sweep` makes them (hparam_grid + init_state)."""
    keys, hp, table = T.hparam_grid(seeds, lrs, wds, seed=init_seed)
    return jax.device_get(_init_runs(keys, hp)), table


def _pairwise_equal(leaf: np.ndarray) -> np.ndarray:
    """[R, R] bool: runs i and j hold the same values in this leaf."""
    flat = leaf.reshape(len(leaf), -1)
    return (flat[:, None, :] == flat[None, :, :]).all(-1)


def test_every_pair_of_the_36_runs_starts_from_different_parameters():
    seeds = SweepConfig().seeds
    assert seeds == 36
    params, _ = _init_params(seeds)
    off_diagonal = ~np.eye(seeds, dtype=bool)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        same = _pairwise_equal(np.asarray(leaf))
        pairs = np.argwhere(same & off_diagonal)
        assert not len(pairs), f"{jax.tree_util.keystr(path)}: runs {pairs[:3].tolist()} equal"
    # Another init seed moves every run; a grid point repeats its seed's start (a fair grid).
    other, _ = _init_params(seeds, init_seed=1)
    for a, b in zip(_leaves(params), _leaves(other), strict=True):
        assert not np.any((a.reshape(seeds, -1) == b.reshape(seeds, -1)).all(-1))
    grid, table = _init_params(seeds // 2, lrs=(2e-3, 1e-2))  # 36 runs again: compiled once
    assert [t["seed"] for t in table] == [*range(seeds // 2)] * 2
    for a, b in zip(_leaves(grid), _leaves(params), strict=True):
        np.testing.assert_array_equal(a[: seeds // 2], b[: seeds // 2])
        np.testing.assert_array_equal(a[seeds // 2 :], b[: seeds // 2])


def test_same_seeds_give_bit_identical_runs_in_one_process(tmp_path):
    write_synthetic_store(tmp_path / "s.zarr", SyntheticConfig(n_bags=48, dim=D, max_tiles=6))
    packed = load_packed(tmp_path / "s.zarr", split_seed=0)
    cfg = T.TrainConfig(head=HeadConfig(dim=D), epochs=15, patience=5)
    data = T.make_train_data(packed, cfg)
    keys, hp, _ = T.hparam_grid(3, (2e-3, 2e-2), (1e-4,))
    run = jax.jit(jax.vmap(T.train, in_axes=(0, 0, None, None)), static_argnames="cfg")
    first = jax.device_get(run(keys, hp, data, cfg))
    # The same seeds again, from freshly made keys and data: the same bits.
    data2 = T.make_train_data(load_packed(tmp_path / "s.zarr", split_seed=0), cfg)
    keys2, hp2, _ = T.hparam_grid(3, (2e-3, 2e-2), (1e-4,))
    second = jax.device_get(run(keys2, hp2, data2, cfg))
    assert_bitwise_equal(first.state.params, second.state.params, "params")
    assert_bitwise_equal(first.state.best_params, second.state.best_params, "best params")
    assert_bitwise_equal(first.history, second.history, "loss and validation AUC history")
    assert_bitwise_equal(
        (first.state.best_val_auc, first.state.best_epoch),
        (second.state.best_val_auc, second.state.best_epoch),
        "selection",
    )
    # Not trivially equal: the runs differ from each other.
    kernels = np.asarray(first.state.params["linear_out"]["kernel"])  # [6, 16, 1]
    assert len({k.tobytes() for k in kernels}) == 6
    assert len({row.tobytes() for row in np.asarray(first.history.loss)}) == 6


def _sweep_process(store: Path, out: Path, cache: Path) -> subprocess.Popen:
    """experiments/sweep.py on a store, as a user runs it (its process settings included)."""
    env = dict(os.environ, MILPF_CACHE=str(cache), JAX_PLATFORMS="cpu")
    env.pop("MILPF_TUNED", None)
    argv = [
        sys.executable,
        str(REPO / "experiments" / "sweep.py"),
        "--store",
        str(store),
        "--seeds",
        "3",
        "--lr",
        "2e-3,2e-2",
        "--epochs",
        "12",
        "--bootstrap",
        "20",
        "--quiet",
        "--out",
        str(out),
    ]
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_same_seeds_give_bit_identical_sweeps_in_two_processes(tmp_path):
    store = tmp_path / "s.zarr"
    write_synthetic_store(store, SyntheticConfig(n_bags=60, dim=D, max_tiles=6, seed=2))
    runs = [tmp_path / "run1", tmp_path / "run2"]
    procs = [_sweep_process(store, out, tmp_path / f"cache{i}") for i, out in enumerate(runs)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output
    a, b = (json.loads((r / "results.json").read_text()) for r in runs)
    for key in METRIC_KEYS:
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True), key
    assert (runs[0] / "predictions.csv").read_bytes() == (runs[1] / "predictions.csv").read_bytes()
    head1, head2 = load_head(runs[0] / "best"), load_head(runs[1] / "best")
    assert head1.config == head2.config
    assert_bitwise_equal(head1.params, head2.params, "best head's params")
    # Not trivially equal: six runs, six different sets of predictions.
    with open(runs[0] / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [k for k in rows[0] if k.startswith("p_run")]
    assert len(columns) == 6
    assert len({tuple(r[c] for r in rows) for c in columns}) == 6
