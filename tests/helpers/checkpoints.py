"""Head parameters for checkpoint tests: seeded from numpy, compared bit for bit."""

from __future__ import annotations

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

