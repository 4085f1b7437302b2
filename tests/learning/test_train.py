import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from milpf_jax.data.packed import load_packed
from milpf_jax.learning import batches as B
from milpf_jax.learning import train as T
from milpf_jax.learning.head import HeadConfig
from milpf_jax.synthetic.embeddings import SyntheticConfig, write_synthetic_store


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "s.zarr"
    write_synthetic_store(path, SyntheticConfig(n_bags=240, dim=24, max_tiles=48, seed=1))
    return load_packed(path, split_seed=0)


def small_cfg(**kw):
    return T.TrainConfig(head=HeadConfig(dim=24), epochs=40, patience=8, chunk_epochs=10, **kw)


# One jitted program shared by the tests below: the same cfg and shapes compile once.
RUN_GRID = jax.jit(jax.vmap(T.train, in_axes=(0, 0, None, None)), static_argnames="cfg")


@pytest.fixture(scope="module")
def grid(packed):
    """2 seeds x lr {2e-3, 2e-2}: run 0 is seed 0 at 2e-3, run 3 is seed 1 at 2e-2."""
    cfg = small_cfg()
    data = T.make_train_data(packed, cfg)
    keys, hp, table = T.hparam_grid(2, [2e-3, 2e-2], [1e-4])
    return cfg, data, keys, hp, table, RUN_GRID(keys, hp, data, cfg)


def test_class_weights_balance_the_classes():
    w = B.class_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(w, [4 / 6, 4 / 6, 4 / 6, 2.0])
    with pytest.raises(ValueError, match="needs both classes"):
        B.class_weights(np.array([1, 1]))


def test_optimizer_is_torch_adam_with_coupled_weight_decay():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5).astype(np.float32)
    grads = rng.standard_normal((4, 5)).astype(np.float32)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.Adam([p], lr=2e-3, weight_decay=1e-2)
    tx = T.adam_l2(2e-3, 1e-2)
    params = jnp.asarray(w0)
    state = tx.init(params)
    for g in grads:
        opt.zero_grad()
        p.grad = torch.tensor(g)
        opt.step()
        upd, state = tx.update(jnp.asarray(g), state, params)
        params = params + upd
    np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_vmapped_run_equals_lone_runs(grid):
    cfg, data, keys, hp, table, res = grid
    assert len(table) == 4 and table[3] == dict(seed=1, lr=2e-2, weight_decay=1e-4)
    lone = jax.jit(T.train, static_argnames="cfg")
    for r in (0, 3):
        one = lone(keys[r], jax.tree_util.tree_map(lambda a: a[r], hp), data, cfg)
        np.testing.assert_allclose(res.history.loss[r, :3], one.history.loss[:3], rtol=1e-5)
        np.testing.assert_allclose(res.history.val_auc[r], one.history.val_auc, atol=1e-3)
    # Gradients at initialisation: vmapped equals lone.
    init = jax.vmap(T.init_state, in_axes=(0, 0, None, None))(keys, hp, data, cfg)
    gv = jax.vmap(jax.grad(T.loss_fn), in_axes=(0, None, None))(init.params, data.train,
                                                                 cfg.head)
    g0 = jax.grad(T.loss_fn)(jax.tree_util.tree_map(lambda a: a[2], init.params), data.train,
                             cfg.head)
    for a, b in zip(jax.tree_util.tree_leaves(gv), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a[2], b, rtol=1e-5, atol=1e-7)
    # Different seeds start from different parameters (the original code set no seed).
    k = np.asarray(init.params["local_proj"]["0"]["kernel"])
    assert not np.allclose(k[0], k[1]) and np.array_equal(k[0], k[2])  # seed 0 at both lrs


def test_grid_compiles_once(packed):
    cfg = small_cfg()
    data = T.make_train_data(packed, cfg)
    traced = chex.assert_max_traces(T.train, n=1)
    run = jax.jit(jax.vmap(traced, in_axes=(0, 0, None, None)), static_argnames="cfg")
    keys, hp, _ = T.hparam_grid(2, [1e-3, 2e-3], [0.0, 1e-4])
    run(keys, hp, data, cfg)
    keys2, hp2, _ = T.hparam_grid(2, [3e-3, 4e-3], [1e-3, 1e-2], seed=5)
    run(keys2, hp2, data, cfg)  # new values, same program


def test_best_parameters_and_patience(grid):
    cfg, data, keys, hp, table, out = grid
    auc = np.asarray(out.history.val_auc)
    active = np.asarray(out.history.active)
    for r in range(len(table)):
        hist = auc[r][active[r]]
        assert float(out.state.best_val_auc[r]) == pytest.approx(hist.max(), abs=1e-7)
        assert int(out.state.best_epoch[r]) == int(np.argmax(hist)) + 1
        p = jax.tree_util.tree_map(lambda a: a[r], out.state.best_params)
        logits, _ = T.forward(p, data.val, cfg.head)
        assert roc_auc_score(np.asarray(data.val.labels), np.asarray(logits)) == pytest.approx(
            float(out.state.best_val_auc[r]), abs=1e-6)
        if not active[r].all():  # stopped by patience: patience epochs without a 1e-3 gain
            stop = int(active[r].sum())
            assert stop >= cfg.patience
            best_before = np.maximum.accumulate(hist)
            assert np.all(hist[stop - cfg.patience:] <= best_before[stop - cfg.patience - 1]
                          + cfg.min_delta)
    assert not active.all(), "with lr 2e-2 some run should stop early"


def test_fit_host_loop_equals_pure_train(grid):
    cfg, data, keys, hp, table, pure = grid
    fitted = T.fit(keys, hp, data, cfg, progress=False)
    np.testing.assert_array_equal(fitted.state.best_epoch, pure.state.best_epoch)
    np.testing.assert_allclose(fitted.state.best_val_auc, pure.state.best_val_auc, atol=1e-6)
    e = fitted.epochs_run
    np.testing.assert_allclose(fitted.history.val_auc, pure.history.val_auc[:, :e], atol=1e-6)
    assert fitted.compile_seconds > 0 and fitted.train_seconds > 0


def test_attention_beats_mean_pooling_on_planted_signal(tmp_path):
    # 1-3 lesion tiles among 16-64: mean pooling dilutes them, attention finds them.
    write_synthetic_store(tmp_path / "s.zarr", SyntheticConfig(
        n_bags=300, dim=32, min_tiles=16, max_tiles=64, tile_signal=0.7, seed=2))
    packed = load_packed(tmp_path / "s.zarr")
    test = packed.split("test")
    aucs = {}
    for lp in ("attn", "mean"):
        cfg = T.TrainConfig(head=HeadConfig(dim=32, global_pool="none", local_pool=lp),
                            epochs=150, patience=30, chunk_epochs=50)
        data = T.make_train_data(packed, cfg)
        keys, hp, _ = T.hparam_grid(6, [1e-2], [1e-4])
        res = T.fit(keys, hp, data, cfg, progress=False)
        best = int(np.argmax(res.state.best_val_auc))  # selected on validation
        probs = T.predict_runs(res.state.best_params, B.bag_batch(test), cfg.head)
        aucs[lp] = roc_auc_score(test.labels, probs[best])
    assert aucs["attn"] > 0.9
    assert aucs["attn"] > aucs["mean"] + 0.15, aucs


def test_instance_mode_trains_per_view(packed):
    head = HeadConfig(dim=24, local_pool="none", global_pool="mean")
    cfg = T.TrainConfig(head=head, epochs=5, mode="instance")
    data = T.make_train_data(packed, cfg)
    tr = packed.split("train")
    assert data.train.n_bags == tr.n_bags * 2  # two views per bag, each its own sample
    assert data.val.n_bags == packed.split("val").n_bags  # validation stays at bag level
    keys, hp, _ = T.hparam_grid(2, [2e-3], [1e-4])
    res = T.fit(keys, hp, data, cfg, progress=False)
    assert res.history.loss.shape == (2, 5) and np.isfinite(res.history.loss).all()
    with pytest.raises(ValueError, match="one stream"):
        T.TrainConfig(head=HeadConfig(dim=24), mode="instance")


def test_bad_splits_are_refused(packed):
    cfg = small_cfg()
    one_class_val = packed.subset(~((packed.splits == 1) & (packed.labels == 1)))
    with pytest.raises(ValueError, match="validation split has .* needs both classes"):
        T.make_train_data(one_class_val, cfg)
    with pytest.raises(ValueError, match="training split is empty"):
        T.make_train_data(packed.subset(packed.splits != 0), cfg)
    with pytest.raises(ValueError, match="D=24 but the head expects dim=32"):
        T.make_train_data(packed, T.TrainConfig(head=HeadConfig(dim=32)))


def test_bag_batch_lays_tiles_out_in_blocks_of_16(packed):
    batch = B.bag_batch(packed)
    counts = np.bincount(packed.tile_bag, minlength=packed.n_bags)
    blocks = -(-counts // 16)
    assert batch.block_bag.shape == (blocks.sum(),) and batch.tiles.shape[0] == 16 * blocks.sum()
    np.testing.assert_array_equal(batch.block_bag, np.repeat(np.arange(packed.n_bags), blocks))
    np.testing.assert_array_equal(batch.tile_bag, np.repeat(np.asarray(batch.block_bag), 16))
    valid = np.asarray(batch.tile_valid)
    # Each bag's real tiles come first in its blocks, in their order; padding is zeros.
    np.testing.assert_array_equal(np.asarray(batch.tiles)[valid], packed.tiles)
    assert not np.asarray(batch.tiles)[~valid].any()
    np.testing.assert_array_equal(np.asarray(batch.tile_bag)[valid], packed.tile_bag)
    plain = B.bag_batch(packed, block=1)
    assert plain.block_bag is None and plain.tiles.shape == packed.tiles.shape
    with pytest.raises(ValueError, match="bag after bag"):
        B._in_blocks(packed.tiles[::-1], packed.tile_bag[::-1], packed.n_bags, 16)


def test_bf16_first_layer_keeps_embeddings_in_bf16_and_instances_drop_padding(packed):
    bf16 = T.make_train_data(packed, small_cfg().replace(
        head=HeadConfig(dim=24, first_layer_dtype="bfloat16")))
    assert bf16.train.tiles.dtype == jnp.bfloat16 and bf16.val.views.dtype == jnp.bfloat16
    assert T.make_train_data(packed, small_cfg()).train.tiles.dtype == jnp.float32
    head = HeadConfig(dim=24, global_pool="none")
    inst = T.make_train_data(packed, T.TrainConfig(head=head, mode="instance")).train
    tr = packed.split("train")
    assert inst.n_bags == len(tr.tile_bag) and inst.block_bag is None
    np.testing.assert_array_equal(inst.labels, tr.labels[tr.tile_bag])
    np.testing.assert_array_equal(inst.tiles, tr.tiles)
