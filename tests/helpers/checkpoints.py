"""Checkpoint tests' helpers: head parameters seeded from numpy and compared bit for bit, and a
saver process to SIGKILL (tests/learning/test_checkpoint.py, tests/test_fault_injection.py)."""

from __future__ import annotations

import time

import jax
import numpy as np


def seeded_params(cfg, seed):
    """Params of cfg's shapes filled from numpy's generator: cheap, even at D=100000."""
    import jax
    import numpy as np

    from milpf_jax.learning.head import init_params

    rng = np.random.default_rng(seed)
    template = jax.eval_shape(lambda: init_params(jax.random.key(0), cfg))
    return jax.tree_util.tree_map(
        lambda s: rng.standard_normal(s.shape, dtype=np.float32), template
    )


def assert_same_params(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.asarray(x).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


TMP_MARK = ".orbax-checkpoint-tmp"

SAVER = """
import sys
from milpf_jax.learning.checkpoint import save_head
from milpf_jax.learning.head import HeadConfig
from milpf_jax.learning.inference import Head

{helper}
cfg = HeadConfig(dim=int(sys.argv[2]))
for seed in range(int(sys.argv[3]), 10**6):
    save_head(sys.argv[1], Head(seeded_params(cfg, seed), cfg), {{"seed": seed}})
    print(seed, flush=True)  # only after save_head returned: this seed must survive a kill
"""


def wait_for_unfinished_save(directory, timeout_s=30.0):
    """Poll until a save is in progress (orbax's tmp folder exists)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if any(TMP_MARK in p.name for p in directory.iterdir()):
            return
        time.sleep(0.001)
    raise TimeoutError(f"no save started in {directory} within {timeout_s} s")
