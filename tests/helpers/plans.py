"""Small hand-made store plans and embeddings for store tests."""

from __future__ import annotations

import numpy as np

from milpf_jax.data.store import BagPlan


def make_plans(n_bags=10, n_tiles=(0, 5, 3), n_views=2, labels=("1", "4", "2")):
    """Small hand-made plans: bag i has n_tiles[i % len] tiles and label labels[i % len]."""
    plans = []
    for i in range(n_bags):
        t = n_tiles[i % len(n_tiles)]
        boxes = np.array([[k % n_views, 10 * k, 0, 10 * k + 10, 10] for k in range(t)], np.int32)
        plans.append(BagPlan(
            bag_id=f"B{i:03d}", patient_id=f"P{i // 2:03d}", raw_label=labels[i % len(labels)],
            view_paths=tuple(f"img/{i}_{v}.dcm" for v in range(n_views)),
            view_names=("CC", "MLO")[:n_views], view_flipped=(bool(i % 2),) * n_views,
            view_shapes=((100, 80),) * n_views, tile_boxes=boxes.reshape(t, 5),
        ))
    return plans


def embeddings_for(plan, dim, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((plan.n_views, dim)).astype(np.float32),
            rng.standard_normal((plan.n_tiles, dim)).astype(np.float32))

