import os
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture
def plans():
    return make_plans()


REPO = Path(__file__).resolve().parents[1]
# mini-MIAS is never copied into the repository: tests read it from beside the checkout.
MIAS_DIR = Path(os.environ.get("MILPF_MIAS_DIR", REPO.parent / "shared" / "data" / "mias-dev"))
needs_mias = pytest.mark.skipif(
    not ((MIAS_DIR / "images").is_dir() and (MIAS_DIR / "Info.txt").is_file()),
    reason=f"mini-MIAS folder not found at {MIAS_DIR}; set MILPF_MIAS_DIR to a folder holding "
    "Info.txt and images/mdbNNN.png",
)


def load_script(name: str):
    """experiments/<name>.py as a module, so tests call its main() as the README's commands do."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "experiments" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
