"""Numerics: no NaN or inf in the loss, its gradients or the parameters.

Edge cases a real cohort produces: bags whose tissue gave no tile (and a batch with no tile at
all), a bag with a single tile, identical embeddings (all tiles of a bag alike; all bags alike),
and float16 stores holding large values (near float16's maximum, 6e4, and ~1e3). Gradients are
taken with `jax.grad(milpf_jax.learning.train.loss_fn)` for every pooling kind and both first-layer
dtypes; 700 epochs (patience off) on a small float16 store mixing all the cases must keep the
loss, every parameter and the optimizer state finite. Few compiled programs: each costs seconds.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from milpf_jax.data.packed import load_packed
from milpf_jax.data.store import BagPlan, Store
from milpf_jax.learning import batches as LB
from milpf_jax.learning import train as T
from milpf_jax.learning.head import HeadConfig, init_params

D = 8
B, V, NMAX = 4, 2, 12  # every case padded to one shape, so each head compiles once
F16_MAX = float(np.finfo(np.float16).max)  # 65504
LABELS = [1, 0, 1, 0]
# (global_pool, local_pool, first_layer_dtype): every pooling kind of each stream, both dtypes.
HEADS = [("max", "attn", "float32"), ("mean", "max", "bfloat16"), ("attn", "mean", "float32")]


def batch(views, tiles_per_bag, labels=LABELS, *, pad_to=None) -> LB.BagBatch:
    """A BagBatch from views [B, V, D] and one [T_b, D] tile array per bag (T_b may be 0).

    Tiles are packed as load_packed packs them (a zero-tile bag has no row at all); with
    `pad_to`, invalid rows (tile_valid False) of the first bag that has tiles fill up to N.
    """
    views = np.asarray(views, np.float32)
    tiles = [np.asarray(t, np.float32).reshape(-1, D) for t in tiles_per_bag]
    counts = [len(t) for t in tiles]
    packed = np.concatenate(tiles)
    tile_bag = np.repeat(np.arange(len(views)), counts)
    valid = np.ones(len(packed), bool)
    if pad_to is not None and pad_to > len(packed):
        host = next(i for i, c in enumerate(counts) if c)
        extra = pad_to - len(packed)
        at = sum(counts[: host + 1])  # after the host bag's tiles: tile_bag stays sorted
        packed = np.concatenate([packed[:at], np.full((extra, D), 7.0, np.float32), packed[at:]])
        tile_bag = np.concatenate([tile_bag[:at], np.full(extra, host), tile_bag[at:]])
        valid = np.concatenate([valid[:at], np.zeros(extra, bool), valid[at:]])
    y = np.asarray(labels, np.float32)
    weights = np.where(
        y == 1, len(y) / (2 * max(y.sum(), 1)), len(y) / (2 * max(len(y) - y.sum(), 1))
    )
    return LB.BagBatch(  # numpy leaves: jit takes them as they are; nothing runs at import
        views=views,
        views_mask=np.ones(views.shape[:2], bool),
        tiles=packed,
        tile_bag=tile_bag.astype(np.int32),
        tile_valid=valid,
        labels=y,
        weights=weights.astype(np.float32),
    )


def _unit(rng, *shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _f16(x):
    """As a store holds it: float16 on disk, float32 when loaded."""
    return np.asarray(x, np.float16).astype(np.float32)


def _cases() -> dict[str, LB.BagBatch]:
    """The edge cases, each [B=4, V=2] bags and N=12 packed tile rows (some invalid padding)."""
    rng = np.random.default_rng(0)
    views = _unit(rng, B, V, D)
    same = _unit(rng, D)
    big = np.sign(rng.standard_normal((B, V, D))) * rng.uniform(0.9, 1.0, (B, V, D)) * F16_MAX
    cases = {
        "zero-tile bags": (views, [_unit(rng, 3, D), [], _unit(rng, 2, D), []]),
        "one bag with one tile, the rest none": (views, [_unit(rng, 1, D), [], [], []]),
        "one tile per bag": (views, [_unit(rng, 1, D) for _ in range(B)]),
        "tiles of a bag identical": (views, [np.tile(_unit(rng, D), (t, 1)) for t in (4, 1, 6, 1)]),
        "all bags identical": (np.broadcast_to(same, (B, V, D)), [np.tile(same, (3, 1))] * B),
        "all zero": (np.zeros((B, V, D)), [np.zeros((3, D))] * B),
        "float16 near max": (
            _f16(big),
            [_f16(np.sign(rng.standard_normal((t, D))) * F16_MAX) for t in (3, 1, 0, 5)],
        ),
        "float16 near max, one sign": (
            _f16(np.full((B, V, D), F16_MAX)),
            [_f16(np.full((t, D), -F16_MAX)) for t in (2, 0, 1, 3)],
        ),
        "float16 ~1e3": (
            _f16(1e3 * rng.standard_normal((B, V, D))),
            [_f16(1e3 * rng.standard_normal((t, D))) for t in (2, 7, 1, 0)],
        ),
    }
    return {name: batch(v, t, pad_to=NMAX) for name, (v, t) in cases.items()}


CASES = _cases()
NAMES = list(CASES)
STACKED = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *CASES.values())  # case axis first
NO_TILES = batch(_unit(np.random.default_rng(1), B, V, D), [[], [], [], []])  # N = 0


def _finite(tree) -> np.ndarray:
    """Per leading index (case or run), whether every leaf is finite there."""
    leaves = jax.tree_util.tree_leaves(tree)
    return np.all([np.isfinite(np.asarray(x)).reshape(len(x), -1).all(1) for x in leaves], 0)


def _bad(ok: np.ndarray) -> list[str]:
    return [NAMES[i] for i in np.flatnonzero(~ok)]


@partial(jax.jit, static_argnames="head")
def _loss_and_grad(params, data, head):
    return jax.value_and_grad(T.loss_fn)(params, data, head)


@partial(jax.jit, static_argnames="head")
def _loss_and_grad_per_case(params, stacked, head):
    return jax.vmap(jax.value_and_grad(T.loss_fn), in_axes=(None, 0, None))(params, stacked, head)


@pytest.mark.parametrize("pools", HEADS, ids=["-".join(h) for h in HEADS])
def test_loss_and_gradients_are_finite_on_edge_cases(pools):
    g, l, dtype = pools
    head = HeadConfig(dim=D, global_pool=g, local_pool=l, first_layer_dtype=dtype)
    for seed in (0, 1):
        params = init_params(jax.random.key(seed), head)
        loss, grads = _loss_and_grad_per_case(params, STACKED, head)
        assert not _bad(np.isfinite(np.asarray(loss))), (
            f"non-finite loss: {_bad(np.isfinite(loss))}"
        )
        assert not _bad(_finite(grads)), f"non-finite gradient: {_bad(_finite(grads))}"


@pytest.mark.parametrize("pools", HEADS, ids=["-".join(h) for h in HEADS])
def test_a_batch_without_any_tile(pools):
    """N = 0 tile rows (every bag's tissue gave no tile): loss and jax.grad finite, the local
    feature exactly zero and the tile stream's gradient zero (nothing leaks in through an empty
    softmax or max)."""
    g, l, dtype = pools
    head = HeadConfig(dim=D, global_pool=g, local_pool=l, first_layer_dtype=dtype)
    params = init_params(jax.random.key(0), head)
    # As given (no tile row), and as the trainer lays tiles out (`bag_batch`: no block either).
    packed = SimpleNamespace(**NO_TILES._asdict(), n_bags=B)
    for data in (NO_TILES, LB.bag_batch(packed, weights=NO_TILES.weights)):
        loss, grads = _loss_and_grad(params, data, head)
        assert np.isfinite(float(loss))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(grads))
        local = [v for k, v in grads.items() if k.startswith("local_")]
        for leaf in jax.tree_util.tree_leaves(local):
            np.testing.assert_array_equal(np.asarray(leaf), 0.0)
        logits, aux = jax.jit(T.forward, static_argnames="head")(params, data, head)
        np.testing.assert_array_equal(np.asarray(aux["local"]), 0.0)
        assert np.all(np.isfinite(np.asarray(logits)))


def _hard_store(path) -> Store:
    """24 bags (16 train, 4 val, 4 test; labels alternate) of 0, 1, 3 or 6 tiles, in six kinds:
    plain unit vectors, a bag whose tiles are identical, values near float16's maximum, values
    ~1e3, bags identical to each other, all zeros."""
    rng = np.random.default_rng(3)
    shared = _unit(rng, D)
    plans, embeddings = [], []
    for b in range(24):
        t = (0, 1, 3, 6)[b % 4]
        kind = b % 6
        views, tiles = _unit(rng, V, D), _unit(rng, t, D)
        if kind == 1:
            tiles = np.tile(_unit(rng, D), (t, 1))
        elif kind == 2:
            views = np.sign(rng.standard_normal((V, D))) * F16_MAX
            tiles = np.sign(rng.standard_normal((t, D))) * F16_MAX
        elif kind == 3:
            views, tiles = 1e3 * rng.standard_normal((V, D)), 1e3 * rng.standard_normal((t, D))
        elif kind == 4:
            views, tiles = np.tile(shared, (V, 1)), np.tile(shared, (t, 1))
        elif kind == 5:
            views, tiles = np.zeros((V, D)), np.zeros((t, D))
        plans.append(
            BagPlan(
                bag_id=f"B{b:02d}",
                patient_id=f"P{b:02d}",
                raw_label=str(b % 2),
                split_given=0 if b < 16 else 1 if b < 20 else 2,
                view_paths=("a", "b"),
                view_names=("CC", "MLO"),
                view_flipped=(False, False),
                view_shapes=((64, 64),) * V,
                tile_boxes=np.array([[k % V, 0, 0, 8, 8] for k in range(t)], np.int32).reshape(
                    t, 5
                ),
            )
        )
        embeddings.append((views, tiles))
    store = Store.create(path, plans, dim=D, attrs={"label_kind": "binary"})
    for b, (views, tiles) in enumerate(embeddings):
        store.write_bag(b, views, tiles)
    return store


def test_700_epochs_on_a_store_of_edge_cases_stay_finite(tmp_path):
    """The original code's maximum epoch count, patience off, on a float16 store that mixes the
    edge cases (empty and one-tile bags, identical tiles, values near 6e4 and ~1e3, identical
    bags, zeros): every run really runs 700 epochs, also at a large learning rate, and the loss,
    validation AUC, parameters, optimizer state and final gradients stay finite."""
    _hard_store(tmp_path / "s.zarr")
    packed = load_packed(tmp_path / "s.zarr")
    assert np.abs(packed.tiles).max() == F16_MAX and np.abs(packed.views).max() == F16_MAX
    assert set(packed.tiles_per_bag()) == {0, 1, 3, 6}
    head = HeadConfig(dim=D, first_layer_dtype="bfloat16")
    tcfg = T.TrainConfig(head=head, epochs=700, patience=701, chunk_epochs=350)
    data = T.make_train_data(packed, tcfg)
    loss, grads = _loss_and_grad(init_params(jax.random.key(0), head), data.train, head)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(grads))
    keys, hp, _ = T.hparam_grid(1, (2e-3, 1e-1), (1e-4,))
    res = T.fit(keys, hp, data, tcfg, progress=False)  # raises if a loss goes non-finite
    assert res.epochs_run == 700 and res.history.loss.shape == (2, 700)
    assert res.history.active.all()  # no run stopped early
    assert np.all(np.asarray(res.state.epoch) == 700)
    for what, tree in [
        ("loss", res.history.loss),
        ("val AUC", res.history.val_auc),
        ("params", res.state.params),
        ("best params", res.state.best_params),
        ("optimizer state", res.state.opt_state),
    ]:
        assert _finite(tree).all(), f"non-finite {what}"
    for r in range(2):
        final = jax.tree_util.tree_map(lambda a, r=r: a[r], res.state.params)
        loss, grads = _loss_and_grad(final, data.train, head)
        assert np.isfinite(float(loss))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(grads))
