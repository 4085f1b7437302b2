"""Training over several devices equals one device: runs split, or tiles split (gradients
summed across devices). Four host devices are forced in a subprocess (XLA reads the flag once,
at start)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

CHILD = r"""
import json, sys
import jax, numpy as np
from milpf_jax.learning import batches as B
from milpf_jax.learning import train as T
from milpf_jax.learning.head import HeadConfig
from milpf_jax.data.packed import load_packed
from milpf_jax.synthetic.embeddings import SyntheticConfig, write_synthetic_store

assert jax.device_count() == 4, jax.devices()
write_synthetic_store(sys.argv[1], SyntheticConfig(n_bags=120, dim=24, max_tiles=40, seed=3))
packed = load_packed(sys.argv[1], split_seed=0)
cfg = T.TrainConfig(head=HeadConfig(dim=24), epochs=12, patience=100, chunk_epochs=6)
data = T.make_train_data(packed, cfg)
keys, hp, _ = T.hparam_grid(4, [2e-3, 1e-2], [1e-4])  # 8 runs
out = {}
for shard in ("none", "runs", "tiles"):
    res = T.fit(keys, hp, data, cfg, progress=False, shard=shard)
    leaf = jax.tree_util.tree_leaves(res.state.params)[0]
    out[shard] = dict(
        loss=np.asarray(res.history.loss).tolist(),
        val_auc=np.asarray(res.history.val_auc).tolist(),
        params=[np.asarray(x).ravel().tolist()
                for x in jax.tree_util.tree_leaves(res.state.params)],
        devices=len({s.device for s in leaf.addressable_shards}),
        sharded=str(leaf.sharding.spec) if hasattr(leaf.sharding, "spec") else "",
    )
from milpf_jax.learning.sharding import place
_, placed = place({"w": np.zeros((8, 2))}, data, None, "tiles")
tiles = placed.train.tiles
out["tiles_layout"] = dict(
    total=tiles.shape[0], real=int(np.asarray(data.train.tile_valid).sum()),
    shard_rows=sorted(s.data.shape[0] for s in tiles.addressable_shards),
    blocks=int(placed.train.block_bag.shape[0]), views_rows=sorted(
        s.data.shape[0] for s in placed.train.views.addressable_shards))
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    store = tmp_path_factory.mktemp("shard") / "s.zarr"
    r = subprocess.run([sys.executable, "-c", CHILD, str(store)], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("shard", ["runs", "tiles"])
def test_training_over_four_devices_equals_one(runs, shard):
    one, many = runs["none"], runs[shard]
    # The state really lives on the four devices (split by runs, or replicated).
    assert one["devices"] == 1 and many["devices"] == 4
    assert ("runs" in many["sharded"]) == (shard == "runs")
    np.testing.assert_allclose(many["loss"], one["loss"], rtol=1e-5)
    assert np.abs(np.subtract(many["val_auc"], one["val_auc"])).max() <= 1e-3
    for a, b in zip(many["params"], one["params"], strict=True):
        # Adam moves a parameter by ~lr per step whatever its gradient's size, so a rounding
        # flip of a near-zero gradient may move it by up to lr (1e-2) per epoch; most agree.
        diff = np.abs(np.subtract(a, b))
        assert np.median(diff) < 1e-5 and diff.max() <= 1e-2 * 12


def test_tiles_are_split_in_whole_blocks_and_bags_replicated(runs):
    t = runs["tiles_layout"]
    # Padded to a multiple of 4 blocks of 16, each device holds a quarter of the tiles.
    assert t["total"] == 16 * t["blocks"] and t["blocks"] % 4 == 0 and t["total"] >= t["real"]
    assert t["shard_rows"] == [t["total"] // 4] * 4
    assert len(set(t["views_rows"])) == 1 and len(t["views_rows"]) == 4  # whole on each


def test_fit_refuses_runs_that_do_not_split_and_unknown_axes():
    import jax

    from milpf_jax.learning import sharding

    with pytest.raises(ValueError, match="shard axis 'bags'"):
        sharding.place({}, (), [jax.devices()[0]], "bags")
    state = {"w": np.zeros((3, 2))}
    with pytest.raises(ValueError, match="3 runs do not split evenly over 2 devices"):
        sharding.place(state, (), [jax.devices()[0]] * 2, "runs")
