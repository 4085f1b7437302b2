import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from milpf_jax.learning.head import HeadConfig, MILPFHead, count_params, init_params, pad_to_packed


@pytest.mark.parametrize("dim,expected", [(1152, 37_337), (1536, 49_625)])
def test_parameter_count_matches_the_paper(dim, expected):
    shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), HeadConfig(dim=dim)))
    assert count_params(shapes) == expected


def test_init_is_pytorch_linear_default():
    params = init_params(jax.random.key(1), HeadConfig(dim=4096))
    w = np.asarray(params["local_proj"]["0"]["kernel"])
    bound = 1 / np.sqrt(4096)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)  # uniform, not normal
    b = np.asarray(params["linear_out"]["bias"])
    assert np.abs(b).max() <= 1 / np.sqrt(16)
    latent = np.asarray(params["local_attn"]["latent"])
    assert latent.shape == (8,) and np.abs(latent).max() > 1 / np.sqrt(8)  # N(0, 1), not tiny
    other = init_params(jax.random.key(2), HeadConfig(dim=4096))
    assert not np.allclose(other["local_proj"]["0"]["kernel"], w)


def reference_logits(params, cfg, views, views_mask, tiles, tiles_mask):
    """Padded-and-masked numpy forward, written from the paper's equations."""
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    lin = lambda p, x: x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])  # noqa: E731

    def mlp(p, x):
        return relu(lin(p["1"], relu(lin(p["0"], x))))

    def attend(p, h, mask):
        s = lin(p["k"], h) @ np.asarray(p["latent"]) / np.sqrt(8)
        s = np.where(mask, s, -np.inf)
        if not mask.any():
            return np.zeros(8), np.zeros(len(s))
        w = np.exp(s - s.max()) * mask
        w /= w.sum()
        return w @ lin(p["v"], h), w

    out, attn = [], []
    for b in range(len(views)):
        feats = []
        if cfg.global_pool != "none":
            hv = mlp(params["global_proj"], views[b])[views_mask[b]]
            if cfg.global_pool == "max":
                feats.append(hv.max(0) if len(hv) else np.zeros(8))
            elif cfg.global_pool == "mean":
                feats.append(hv.mean(0) if len(hv) else np.zeros(8))
            else:
                feats.append(attend(params["global_attn"], mlp(params["global_proj"], views[b]),
                                    views_mask[b])[0])
        if cfg.local_pool != "none":
            ht = mlp(params["local_proj"], tiles[b])
            m = tiles_mask[b]
            if cfg.local_pool == "attn":
                f, w = attend(params["local_attn"], ht, m)
                attn.append(w)
            elif cfg.local_pool == "max":
                f = ht[m].max(0) if m.any() else np.zeros(8)
            else:
                f = ht[m].mean(0) if m.any() else np.zeros(8)
            feats.append(f)
        out.append(lin(params["linear_out"], np.concatenate(feats))[0])
    return np.array(out), attn


def padded_batch(seed=0, d=12):
    rng = np.random.default_rng(seed)
    views = rng.standard_normal((4, 3, d)).astype(np.float32)
    views_mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], bool)
    tiles = rng.standard_normal((4, 7, d)).astype(np.float32)
    tiles_mask = np.zeros((4, 7), bool)
    for b, t in enumerate([7, 0, 1, 4]):  # bag 1 has no tiles
        tiles_mask[b, :t] = True
    return views, views_mask, tiles, tiles_mask


@pytest.mark.parametrize("gp,lp", [p for p in itertools.product(
    ("max", "mean", "attn", "none"), ("attn", "max", "mean", "none")) if p != ("none", "none")])
def test_packed_head_equals_padded_reference(gp, lp):
    cfg = HeadConfig(dim=12, global_pool=gp, local_pool=lp)
    params = init_params(jax.random.key(3), cfg)
    views, views_mask, tiles, tiles_mask = padded_batch()
    # Packed: real tiles only, as training feeds them.
    packed = tiles[tiles_mask]
    tile_bag = np.nonzero(tiles_mask)[0].astype(np.int32)
    logit, aux = MILPFHead(cfg).apply({"params": params}, views, views_mask, packed, tile_bag,
                                      np.ones(len(packed), bool))
    ref, ref_attn = reference_logits(jax.device_get(params), cfg, views, views_mask, tiles,
                                     tiles_mask)
    np.testing.assert_allclose(logit, ref, rtol=1e-5, atol=1e-6)
    # Padded input through pad_to_packed gives the same logits.
    flat, bag, valid = pad_to_packed(jnp.asarray(tiles), jnp.asarray(tiles_mask))
    logit_pad, aux_pad = MILPFHead(cfg).apply({"params": params}, views, views_mask, flat, bag,
                                              valid)
    np.testing.assert_allclose(logit_pad, ref, rtol=1e-5, atol=1e-6)
    if lp == "attn":
        w = np.asarray(aux_pad["attn"]).reshape(4, 7)
        for b in range(4):
            np.testing.assert_allclose(w[b], ref_attn[b], atol=1e-6)
        assert np.all(w[~tiles_mask] == 0)
        np.testing.assert_allclose(np.asarray(aux["attn"]), w[tiles_mask], atol=1e-6)


@pytest.mark.parametrize("lp", ["attn", "max", "mean"])
def test_zero_tile_bags_give_finite_values_and_gradients(lp):
    cfg = HeadConfig(dim=5, local_pool=lp)
    params = init_params(jax.random.key(0), cfg)
    views = jnp.ones((2, 1, 5))
    vm = jnp.ones((2, 1), bool)
    tiles = jnp.full((3, 5), 1e3)  # extreme values on padding must not leak
    tile_bag = jnp.array([1, 1, 1], jnp.int32)
    valid = jnp.array([False, False, False])  # both bags empty

    def loss(p):
        logit, aux = MILPFHead(cfg).apply({"params": p}, views, vm, tiles, tile_bag, valid)
        return jnp.sum(logit ** 2), (logit, aux)

    grads, (logit, aux) = jax.grad(loss, has_aux=True)(params)
    assert np.all(np.isfinite(logit))
    assert np.all(np.asarray(aux["local"]) == 0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_bfloat16_first_layer_stays_close_to_float32():
    views, views_mask, tiles, tiles_mask = padded_batch(d=256)
    flat, bag, valid = pad_to_packed(jnp.asarray(tiles), jnp.asarray(tiles_mask))
    cfg = HeadConfig(dim=256)
    params = init_params(jax.random.key(0), cfg)
    f32, _ = MILPFHead(cfg).apply({"params": params}, views, views_mask, flat, bag, valid)
    bf16, _ = MILPFHead(cfg.replace(first_layer_dtype="bfloat16")).apply(
        {"params": params}, views, views_mask, flat, bag, valid)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, atol=2e-2)
    assert not np.array_equal(bf16, f32)


def test_config_refuses_bad_settings():
    with pytest.raises(ValueError, match="HeadConfig.global_pool: 'sum': choose one of max"):
        HeadConfig(global_pool="sum")
    with pytest.raises(ValueError, match="at least one stream"):
        HeadConfig(global_pool="none", local_pool="none")


# --- the hand-written gradient of the attention stream ------------------------------------------


def autodiff_attention_stream(proj, attn, tiles, tile_bag, tile_valid, num_bags, dtype):
    """The same stream through flax modules and autodiff: the reference for the custom VJP."""
    from milpf_jax.learning.head import LatentAttention, StreamMLP, _pool_segments

    h = StreamMLP(16, 8, dtype).apply({"params": proj}, tiles)
    attention = LatentAttention(8).bind({"params": attn})
    return _pool_segments("attn", h, tile_bag, tile_valid, num_bags, attention)


def ragged_bags(seed, counts, d=24):
    """Packed tiles of bags with the given tile counts (0 and 1 included), values spread wide
    enough that ReLUs and the softmax both matter."""
    rng = np.random.default_rng(seed)
    tile_bag = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    tiles = (3 * rng.standard_normal((len(tile_bag), d))).astype(np.float32)
    return tiles, tile_bag


@pytest.mark.parametrize("feature_major,one_backward_pass,second_layer_transposed", [
    (True, True, True), (True, False, True), (True, True, False), (False, True, False),
    (False, False, False)])
@pytest.mark.parametrize("block,dtype,chunk_tiles", [
    (1, "float32", None), (16, "float32", None), (16, "bfloat16", None),
    # Both passes in chunks. 9 blocks: at most 2 a chunk gives 5 chunks of 2, the last
    # moved back over one block of the fourth; at most 4 gives 3 whole chunks of 3. 82 single
    # tiles, at most 20 a chunk: 5 chunks of 17, the last overlapping by 3.
    (16, "float32", 32), (16, "float32", 64), (1, "float32", 20),
])
def test_attention_stream_gradient_equals_autodiff(block, dtype, chunk_tiles, feature_major,
                                                    one_backward_pass, second_layer_transposed):
    from milpf_jax.learning.attention import HeadImpl, attention_stream
    from milpf_jax.learning.batches import _in_blocks

    counts = [0, 1, 5, 16, 17, 40, 0, 3]
    tiles, tile_bag = ragged_bags(0, counts)
    params = init_params(jax.random.key(3), HeadConfig(dim=tiles.shape[1]))
    proj, attn = params["local_proj"], params["local_attn"]
    nb = len(counts)
    ref_inputs = (jnp.asarray(tiles), jnp.asarray(tile_bag), jnp.ones(len(tile_bag), bool))
    if block == 1:
        x, tb, valid, block_bag = tiles, tile_bag, np.ones(len(tile_bag), bool), tile_bag
    else:
        x, tb, valid, block_bag = _in_blocks(tiles, tile_bag, nb, block)
        assert len(x) == 16 * sum(-(-c // 16) for c in counts) and valid.sum() == len(tiles)
    # A loss that uses both outputs, so both cotangents flow.
    cot = jnp.asarray(np.random.default_rng(1).standard_normal((nb, 8)), jnp.float32)

    def loss_ours(proj, attn):
        impl = HeadImpl(forward_chunk_tiles=chunk_tiles, backward_chunk_tiles=chunk_tiles,
                        feature_major=feature_major, one_backward_pass=one_backward_pass,
                        second_layer_transposed=second_layer_transposed)
        local, w = attention_stream(proj, attn, jnp.asarray(x), jnp.asarray(block_bag),
                                    jnp.asarray(valid), nb, dtype, impl)
        return jnp.sum(jnp.tanh(local) * cot) + jnp.sum(w[jnp.asarray(valid)] ** 2)

    def loss_ref(proj, attn):
        local, w = autodiff_attention_stream(proj, attn, *ref_inputs, nb, dtype)
        return jnp.sum(jnp.tanh(local) * cot) + jnp.sum(w ** 2)

    v_ours, g_ours = jax.value_and_grad(loss_ours, argnums=(0, 1))(proj, attn)
    v_ref, g_ref = jax.value_and_grad(loss_ref, argnums=(0, 1))(proj, attn)
    # bf16: both round the tiles and the first layer's weights alike, but autodiff rounds the
    # first layer's weight gradient to bf16 (ours stays f32): compare within 1% of its scale.
    rtol, atol_share = (2e-4, 1e-6) if dtype == "float32" else (2e-2, 1e-2)
    np.testing.assert_allclose(v_ours, v_ref, rtol=1e-5)  # float32 sums: a few ulp
    flat_ours = jax.tree_util.tree_leaves_with_path(g_ours)
    flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
    assert [p for p, _ in flat_ours] == [p for p, _ in flat_ref] and len(flat_ref) == 9
    for (path, g), (_, ref) in zip(flat_ours, flat_ref, strict=True):
        ref = np.asarray(ref)
        if jax.tree_util.keystr(path).endswith("['k']['bias']"):
            # A shift of every score of a bag leaves its softmax unchanged: zero up to rounding.
            assert np.abs(g).max() < 1e-6 and np.abs(ref).max() < 1e-6
            continue
        assert np.abs(ref).max() > 1e-4
        np.testing.assert_allclose(g, ref, rtol=rtol, atol=atol_share * np.abs(ref).max(),
                                   err_msg=jax.tree_util.keystr(path))


def test_blocked_and_packed_batches_give_the_same_head_and_gradient():
    from milpf_jax.learning.batches import BagBatch
    from milpf_jax.learning.train import loss_fn

    counts = [3, 0, 20, 1, 33, 8]
    tiles, tile_bag = ragged_bags(2, counts, d=12)
    nb = len(counts)
    rng = np.random.default_rng(5)
    views = jnp.asarray(rng.standard_normal((nb, 2, 12)), jnp.float32)
    common = dict(views=views, views_mask=jnp.ones((nb, 2), bool),
                  labels=jnp.asarray([0, 1, 1, 0, 1, 0], jnp.float32), weights=jnp.ones(nb))
    packed = BagBatch(tiles=jnp.asarray(tiles), tile_bag=jnp.asarray(tile_bag),
                      tile_valid=jnp.ones(len(tiles), bool), **common)
    from milpf_jax.learning.batches import _in_blocks

    x, tb, valid, block_bag = _in_blocks(tiles, tile_bag, nb, 16)
    blocked = BagBatch(tiles=jnp.asarray(x), tile_bag=jnp.asarray(tb),
                       tile_valid=jnp.asarray(valid), block_bag=jnp.asarray(block_bag), **common)
    cfg = HeadConfig(dim=12)
    params = init_params(jax.random.key(0), cfg)
    l_packed, g_packed = jax.value_and_grad(loss_fn)(params, packed, cfg)
    l_blocked, g_blocked = jax.value_and_grad(loss_fn)(params, blocked, cfg)
    np.testing.assert_allclose(l_blocked, l_packed, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                           g_blocked, g_packed)
    # The attention weights come back per slot: the real tiles' weights, zeros for padding.
    _, aux_p = MILPFHead(cfg).apply({"params": params}, views, common["views_mask"],
                                    packed.tiles, packed.tile_bag, packed.tile_valid)
    _, aux_b = MILPFHead(cfg).apply({"params": params}, views, common["views_mask"],
                                    blocked.tiles, blocked.tile_bag, blocked.tile_valid,
                                    blocked.block_bag)
    np.testing.assert_allclose(np.asarray(aux_b["attn"])[valid], aux_p["attn"], rtol=1e-5)
    assert not np.asarray(aux_b["attn"])[~valid].any()
