"""The local stream with latent-attention pooling, with its gradient written by hand.

`attention_stream` equals the head's StreamMLP on every tile followed by softmax(z K^T /
sqrt(8)) V within each bag (`milpf_jax.learning.head`), as a `jax.custom_vjp`: autodiff of the
segment softmax kept large per-tile intermediates and scattered over every tile. Both of its
passes walk the tiles in chunks (the forward one with an online softmax per bag), so only the
first layer's output spans every tile; the per-tile features are recomputed in the backward
pass rather than kept. When the trainer lays the tiles out in blocks (each bag's tiles padded
with invalid tiles to a multiple of the block, `block_bag` naming each block's bag), the softmax
and pooling reduce inside each block densely and only one value per block is scattered to its
bag.

Two layouts of the per-tile arrays: feature-major ([features, blocks, L], the default: tiles are
the contiguous axis, so the first layer's forward GEMM writes its output and the weight
gradient's GEMM reads its input with no transpose, and the elementwise work runs along tiles)
and tile-major ([blocks, L, features], the earlier code). The softmax gradient needs, per bag,
the sum of w * dw over its tiles; with `one_backward_pass` it comes from the forward's pooled
features (see `_bag_sum_w_dw`), so the backward pass walks the tiles once instead of twice. The
layout, the chunk sizes and the block are fields of `HeadImpl` (below; the head's config
carries it), so they are part of the compiled program's key; the README's performance section
measures each.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

from milpf_jax.config import check

ChunkTiles = int | None | Literal["auto"]


@dataclass(frozen=True)
class HeadImpl:
    """How a head computes, not what: the same values up to float rounding, other speed and
    memory (README, "Performance"). Re-exported by `milpf_jax.learning.head`.

    hand_written_gradient: the local attention stream through `attention_stream` (False:
    autodiff of StreamMLP + segment softmax, the slower gradient). tile_block: the trainer pads
    each bag's tiles to a multiple of this (1: packed tiles as they are).
    forward_chunk_tiles, backward_chunk_tiles: tiles per chunk of each pass of
    `attention_stream` (None: one pass over all tiles; "auto": chosen from this machine's CPU
    by `milpf_jax.runtime.default_chunk_tiles`, made concrete by `HeadConfig.resolved`).
    feature_major: `attention_stream`'s per-tile arrays laid out [features, tiles] (False: the
    earlier [tiles, features]). one_backward_pass: its backward pass walks the tiles once,
    taking the softmax gradient's per-bag sums from the forward's pooled features (False: a
    second pass recomputes them). convert_per_chunk: bf16 tiles converted to the bits the
    CPU slices chunk by chunk (False: the whole array once per call, a copy of every tile).
    second_layer_transposed: in the feature-major layout, the 16->8 kernel transposed once so
    XLA:CPU computes that layer with its fast dot (`_stream_tail_t`).
    """

    hand_written_gradient: bool = True
    tile_block: int = 16
    forward_chunk_tiles: ChunkTiles = "auto"
    backward_chunk_tiles: ChunkTiles = "auto"
    feature_major: bool = True
    one_backward_pass: bool = True
    convert_per_chunk: bool = True
    second_layer_transposed: bool = True

    def __post_init__(self):
        check(self, self.tile_block >= 1, "tile_block", f"{self.tile_block}; expected >= 1")
        for name in ("forward_chunk_tiles", "backward_chunk_tiles"):
            value = getattr(self, name)
            ok = value is None or value == "auto" or (
                isinstance(value, int) and not isinstance(value, bool) and value >= 1)
            check(self, ok, name, f"{value!r}; expected an int >= 1, None or 'auto'")

    def resolved(self) -> HeadImpl:
        """This impl with "auto" chunk sizes made concrete for this machine."""
        if "auto" not in (self.forward_chunk_tiles, self.backward_chunk_tiles):
            return self
        from milpf_jax.runtime import default_chunk_tiles

        tiles = default_chunk_tiles()
        return dataclasses.replace(self, **{
            name: tiles for name in ("forward_chunk_tiles", "backward_chunk_tiles")
            if getattr(self, name) == "auto"})


def first_layer(x, kernel, bias, dtype):
    """x @ kernel + bias in `dtype` (float32 or bfloat16), accumulated in float32."""
    if dtype == "bfloat16":
        y = jnp.dot(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)
    else:
        y = jnp.dot(x.astype(jnp.float32), kernel)
    return y + bias


def _stream_tail(a, proj, attn):
    """From the first layer's pre-activations a [K, L, 16] to the tiles' second-layer features
    q [K, L, 8] and attention scores s [K, L]. The key layer folds into one vector:
    (q Wk + bk) . z / sqrt(8) = q . (Wk z) / sqrt(8) + bk . z / sqrt(8)."""
    h = jax.nn.relu(a)
    pre2 = h @ proj["1"]["kernel"] + proj["1"]["bias"]
    q = jax.nn.relu(pre2)
    scale = jnp.sqrt(jnp.float32(attn["latent"].shape[0]))
    key_vec = attn["k"]["kernel"] @ attn["latent"] / scale
    s = q @ key_vec + attn["k"]["bias"] @ attn["latent"] / scale
    return h, pre2, q, key_vec, s


def first_layer_t(x, kernel, bias, dtype):
    """(x @ kernel + bias).T, [16, n], in `dtype` accumulated in float32: the same GEMM as
    `first_layer` with the output laid out feature-major (tiles the contiguous axis)."""
    dims = (((0,), (1,)), ((), ()))  # kernel [D, 16] . x [n, D] over D
    if dtype == "bfloat16":
        y = jax.lax.dot_general(kernel.astype(jnp.bfloat16), x.astype(jnp.bfloat16), dims,
                                preferred_element_type=jnp.float32)
    else:
        y = jax.lax.dot_general(kernel, x.astype(jnp.float32), dims)
    return y + bias[:, None]


def _stream_tail_t(a, proj, attn, second_layer_transposed=True):
    """`_stream_tail` feature-major: a [16, C, L] -> h [16, C, L], pre2 and q [8, C, L],
    key_vec [8], scores s [C, L]. second_layer_transposed: the 16->8 kernel transposed once
    behind an optimization barrier, so XLA:CPU takes the layer as a plain [8, 16] x [16, n]
    product for its fast (YNNPACK) dot; folded back into the dot, the transposed operand sent
    it to the generic one, three times slower there."""
    h = jax.nn.relu(a)
    w2, b2 = proj["1"]["kernel"], proj["1"]["bias"][:, None, None]
    if second_layer_transposed:
        pre2 = jnp.einsum("fh,hcl->fcl", jax.lax.optimization_barrier(w2.T), h) + b2
    else:
        pre2 = jnp.einsum("hf,hcl->fcl", w2, h) + b2
    q = jax.nn.relu(pre2)
    scale = jnp.sqrt(jnp.float32(attn["latent"].shape[0]))
    key_vec = attn["k"]["kernel"] @ attn["latent"] / scale
    s = jnp.einsum("f,fcl->cl", key_vec, q) + attn["k"]["bias"] @ attn["latent"] / scale
    return h, pre2, q, key_vec, s


def _block_softmax(s, block_bag, valid, num_bags):
    """Softmax of s [K, L] within each bag (blocks of L tiles, block_bag [K]) over valid tiles;
    invalid tiles and empty bags get weight 0."""
    masked = jnp.where(valid, s, -jnp.inf)
    m = jax.ops.segment_max(jnp.max(masked, axis=1), block_bag, num_bags)
    m = jnp.where(jnp.isfinite(m), m, 0.0)[block_bag]
    e = jnp.where(valid, jnp.exp(jnp.where(valid, s - m[:, None], 0.0)), 0.0)
    denom = jax.ops.segment_sum(jnp.sum(e, axis=1), block_bag, num_bags)
    return e / jnp.where(denom > 0, denom, 1.0)[block_bag][:, None]


def _chunk_blocks(k: int, length: int, chunk_tiles: int | None) -> int:
    """Blocks per chunk for k blocks of `length` tiles: as many chunks as chunk_tiles needs, of
    equal size (so the last one overlaps little); k (one pass) when chunk_tiles is None."""
    if not k or not chunk_tiles:
        return k
    chunk = max(1, min(k, chunk_tiles // length))
    return -(-k // -(-k // chunk))


def _blocks(x, start, chunk: int):
    return jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0)


def _tile_rows(tiles, start, n: int, convert_per_chunk: bool = True):
    """tiles[start:start + n] inside a loop. On CPU, bf16 tiles are sliced as their uint16 bits:
    XLA:CPU slices bf16 in f32, and hoisting that conversion out of the loop made a float32 copy
    of every tile (twice the bf16 embeddings' memory). Hoisted, the conversion to bits alone
    still copies every tile once per call; with convert_per_chunk an optimization barrier
    that depends on the loop's position keeps it in the loop, fused with the slice. Other
    platforms slice bf16 as it is."""

    def plain(x, start):
        return jax.lax.dynamic_slice_in_dim(x, start, n, axis=0)

    def as_bits(x, start):
        if convert_per_chunk:
            x, start = jax.lax.optimization_barrier((x, start))
        bits = plain(jax.lax.bitcast_convert_type(x, jnp.uint16), start)
        return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)

    if tiles.dtype != jnp.bfloat16:
        return plain(tiles, start)
    return jax.lax.platform_dependent(tiles, start, cpu=as_bits, default=plain)


def _chunk_loop(k: int, chunk: int, body, init):
    """carry = body(start, fresh, carry) over chunks of `chunk` blocks covering [0, k). The last
    chunk is moved back to end at k; `fresh` [chunk] marks the blocks no earlier chunk had."""
    n = -(-k // chunk)

    def step(i, carry):
        start = jnp.minimum(i * chunk, k - chunk)
        fresh = jnp.arange(chunk) + start >= i * chunk
        return body(start, fresh, carry)

    return jax.lax.fori_loop(0, n, step, init)


def _online_update(m, denom, acc, s_c, v_c, bb, num_bags, pool):
    """One chunk of the online softmax: each bag's running max m [B], denominator [B] and
    weighted feature sum acc [B, 8], rescaled where the chunk raises the max (exp(-inf) = 0
    while a bag has no tile yet). s_c, v_c [C, L]: the chunk's scores and which of its tiles
    count; pool(e) [C, 8]: each block's features summed with the weights e [C, L]."""
    m_new = jnp.maximum(m, jax.ops.segment_max(
        jnp.max(jnp.where(v_c, s_c, -jnp.inf), axis=1), bb, num_bags))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    rescale = jnp.exp(m - m_safe)
    e = jnp.where(v_c, jnp.exp(jnp.where(v_c, s_c - m_safe[bb][:, None], 0.0)), 0.0)
    denom = denom * rescale + jax.ops.segment_sum(jnp.sum(e, axis=1), bb, num_bags)
    acc = acc * rescale[:, None] + jax.ops.segment_sum(pool(e), bb, num_bags)
    return m_new, denom, acc


def _online_init(num_bags: int, proj_dim: int):
    return (jnp.full(num_bags, -jnp.inf, jnp.float32), jnp.zeros(num_bags, jnp.float32),
            jnp.zeros((num_bags, proj_dim), jnp.float32))


def _online_weights(s, valid, block_bag, m, denom, acc):
    """The tiles' softmax weights w [K, L] and the pooled features [B, 8] from the scores and
    the online softmax's final max, denominator and weighted sum."""
    m = jnp.where(jnp.isfinite(m), m, 0.0)[block_bag]
    inv = 1.0 / jnp.where(denom > 0, denom, 1.0)
    w = jnp.where(valid, jnp.exp(jnp.where(valid, s - m[:, None], 0.0)), 0.0)
    return w * inv[block_bag][:, None], acc * inv[:, None]


def _forward_one_pass(proj, attn, tiles, block_bag, valid, num_bags, dtype):
    """Tile-major over all tiles at once: a [K, L, 16], the weights w [K, L], pooled [B, 8]."""
    k, length = valid.shape
    a = first_layer(tiles, proj["0"]["kernel"], proj["0"]["bias"], dtype)
    a = a.reshape(k, length, proj["0"]["bias"].shape[0])  # [K, L, 16]
    _, _, q, _, s = _stream_tail(a, proj, attn)
    w = _block_softmax(s, block_bag, valid, num_bags)
    pooled = jax.ops.segment_sum(jnp.einsum("kl,klf->kf", w, q), block_bag, num_bags)
    return a, w, pooled


def _forward_in_chunks(proj, attn, tiles, block_bag, valid, num_bags, dtype, chunk,
                       impl: HeadImpl):
    """As `_forward_one_pass` in chunks of `chunk` blocks, with an online softmax per bag; a is
    [16, K, L] when impl.feature_major. Only the first layer's output (kept for the backward pass)
    and the scores span all tiles."""
    k, length = valid.shape
    hidden, proj_dim = proj["0"]["bias"].shape[0], proj["1"]["bias"].shape[0]
    feature_major = impl.feature_major
    axis = 1 if feature_major else 0  # the blocks' axis of a

    def features(x):  # a chunk's first-layer output, its tail, how to pool its features
        kernel, bias = proj["0"]["kernel"], proj["0"]["bias"]
        if feature_major:
            a_c = first_layer_t(x, kernel, bias, dtype).reshape(hidden, chunk, length)
            return (a_c, _stream_tail_t(a_c, proj, attn, impl.second_layer_transposed),
                    "kl,fkl->kf")
        a_c = first_layer(x, kernel, bias, dtype).reshape(chunk, length, hidden)
        return a_c, _stream_tail(a_c, proj, attn), "kl,klf->kf"

    def step(start, fresh, carry):
        a_buf, s_buf, *online = carry
        a_c, (_, _, q, _, s_c), pool = features(
            _tile_rows(tiles, start * length, chunk * length, impl.convert_per_chunk))
        v_c = _blocks(valid, start, chunk) & fresh[:, None]  # each block counted once
        online = _online_update(*online, s_c, v_c, _blocks(block_bag, start, chunk), num_bags,
                                lambda e: jnp.einsum(pool, e, q))
        return (jax.lax.dynamic_update_slice_in_dim(a_buf, a_c, start, axis=axis),
                jax.lax.dynamic_update_slice_in_dim(s_buf, s_c, start, axis=0), *online)

    a_shape = (hidden, k, length) if feature_major else (k, length, hidden)
    init = (jnp.zeros(a_shape, jnp.float32), jnp.zeros((k, length), jnp.float32),
            *_online_init(num_bags, proj_dim))
    a, s, *online = _chunk_loop(k, chunk, step, init)
    return (a, *_online_weights(s, valid, block_bag, *online))


def _attention_stream_forward(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype,
                              impl: HeadImpl):
    impl = impl.resolved()
    k = block_bag.shape[0]
    length = tiles.shape[0] // k if k else 1  # tiles per block
    valid = tile_valid.reshape(k, length)
    chunk = _chunk_blocks(k, length, impl.forward_chunk_tiles)
    if k and (impl.feature_major or chunk < k):  # feature-major always walks chunks
        a, w, pooled = _forward_in_chunks(proj, attn, tiles, block_bag, valid, num_bags, dtype,
                                          chunk, impl)
    else:
        a, w, pooled = _forward_one_pass(proj, attn, tiles, block_bag, valid, num_bags, dtype)
    weight_sum = jax.ops.segment_sum(jnp.sum(w, axis=1), block_bag, num_bags)  # 1, or 0 if empty
    local = pooled @ attn["v"]["kernel"] + weight_sum[:, None] * attn["v"]["bias"]
    residuals = (proj, attn, tiles, block_bag, a, w, pooled, weight_sum)
    return (local, w.reshape(-1)), residuals


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def attention_stream(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype,
                     impl: HeadImpl = HeadImpl()):
    """The local stream with latent-attention pooling: StreamMLP on every tile, then
    softmax(z K^T / sqrt(8)) V within each bag. Same values as `StreamMLP` + `_pool_segments`
    ("attn"), with a hand-written gradient.

    proj, attn: the `local_proj` and `local_attn` parameters. tiles [N, D]; block_bag [K] with
    N = K * L: tiles come in K blocks of L consecutive tiles that belong to one bag (L = 1: any
    packing, block_bag = tile_bag). tile_valid [N]. impl: how it computes (`HeadImpl`: chunk
    sizes, layout, passes; "auto" chunks resolved here). Returns (local [num_bags, 8], weights
    [N]). The tiles get no gradient (they are data).
    """
    return _attention_stream_forward(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype,
                                     impl)[0]


def _bag_sum_w_dw(pooled, weight_sum, w, d_weights, d_pooled, d_weight_sum, block_bag,
                  num_bags):
    """Per bag, the sum over its tiles of w * dw with dw = q . d_pooled + d_weight_sum +
    d_weights (how the loss moves with each tile's weight), without visiting the tiles'
    features: pooled = sum w q and weight_sum = sum w, so it is pooled . d_pooled +
    weight_sum * d_weight_sum + sum w * d_weights."""
    return (jnp.sum(pooled * d_pooled, axis=1) + weight_sum * d_weight_sum
            + jax.ops.segment_sum(jnp.sum(w * d_weights, axis=1), block_bag, num_bags))


def _zero_sums(hidden: int, dim: int, proj_dim: int) -> dict:
    """The backward pass's running sums over tiles (first-layer kernel [16, D] transposed)."""
    return dict(w1=jnp.zeros((hidden, dim), jnp.float32), b1=jnp.zeros(hidden, jnp.float32),
                w2=jnp.zeros((hidden, proj_dim), jnp.float32),
                b2=jnp.zeros(proj_dim, jnp.float32), key_vec=jnp.zeros(proj_dim, jnp.float32),
                shift=jnp.zeros((), jnp.float32))


def _first_layer_weight_grad(da, x, dtype):
    """da [16, n] x tiles [n, D]: the first layer's weight gradient (transposed), f32 sums."""
    if dtype == "bfloat16":
        return jnp.dot(da.astype(jnp.bfloat16), x.astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32)
    return jnp.dot(da, x.astype(jnp.float32))


def _tile_sums(block_bag, a, w, d_weights, d_pooled, d_weight_sum, w_dw, tiles, proj, attn,
               dtype, chunk, impl: HeadImpl):
    """The backward pass over the tiles, chunk by chunk: each tile's features are recomputed
    from the first layer's output a (cheap, and far less memory than keeping them), then the
    gradient flows through the softmax (ds = w * (dw - sum_bag(w * dw))), the 16->8 layer and
    both ReLUs into the sums of `_zero_sums`."""
    k, length = w.shape
    hidden, proj_dim = proj["0"]["bias"].shape[0], proj["1"]["bias"].shape[0]
    w2 = proj["1"]["kernel"]

    def body(start, fresh, sums):
        bb = _blocks(block_bag, start, chunk)
        w_c = _blocks(w, start, chunk) * fresh[:, None]  # a block seen earlier adds nothing
        other = d_weight_sum[bb][:, None] + _blocks(d_weights, start, chunk)
        if impl.feature_major:
            a_c = jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=1)  # [16, C, L]
            h, pre2, q, key_vec, _ = _stream_tail_t(a_c, proj, attn, impl.second_layer_transposed)
            dp = d_pooled[bb].T[:, :, None]  # [8, C, 1]
            ds = w_c * (jnp.sum(q * dp, axis=0) + other - w_dw[bb][:, None])
            dq = w_c[None] * dp + ds[None] * key_vec[:, None, None]
            d_pre2 = jnp.where(pre2 > 0, dq, 0.0)
            da = jnp.where(a_c > 0, jnp.einsum("hf,fcl->hcl", w2, d_pre2), 0.0)
            da = da.reshape(hidden, -1)
            d_w2 = jnp.einsum("hcl,fcl->hf", h, d_pre2)
            d_b2, d_key = jnp.sum(d_pre2, (1, 2)), jnp.einsum("cl,fcl->f", ds, q)
        else:
            a_c = _blocks(a, start, chunk)  # [C, L, 16]
            h, pre2, q, key_vec, _ = _stream_tail(a_c, proj, attn)
            dp = d_pooled[bb]  # [C, 8]
            ds = w_c * (jnp.einsum("klf,kf->kl", q, dp) + other - w_dw[bb][:, None])
            dq = w_c[..., None] * dp[:, None, :] + ds[..., None] * key_vec
            d_pre2 = jnp.where(pre2 > 0, dq, 0.0)
            da = jnp.where(a_c > 0, d_pre2 @ w2.T, 0.0).reshape(-1, hidden).T
            d_w2 = jnp.einsum("klh,klf->hf", h, d_pre2)
            d_b2, d_key = jnp.sum(d_pre2, (0, 1)), jnp.einsum("kl,klf->f", ds, q)
        x = _tile_rows(tiles, start * length, chunk * length, impl.convert_per_chunk)
        return dict(w1=sums["w1"] + _first_layer_weight_grad(da, x, dtype),
                    b1=sums["b1"] + jnp.sum(da, axis=1), w2=sums["w2"] + d_w2,
                    b2=sums["b2"] + d_b2, key_vec=sums["key_vec"] + d_key,
                    shift=sums["shift"] + jnp.sum(ds))

    return _chunk_loop(k, chunk, body, _zero_sums(hidden, tiles.shape[-1], proj_dim))


def _bag_sum_w_dw_by_pass(block_bag, a, w, d_weights, d_pooled, d_weight_sum, proj, attn,
                          num_bags, chunk, impl: HeadImpl):
    """`_bag_sum_w_dw` the long way: a pass over the tiles recomputing their features (the
    earlier code; `one_backward_pass=False`)."""
    k, _ = w.shape

    def body(start, fresh, acc):
        bb = _blocks(block_bag, start, chunk)
        if impl.feature_major:
            q = _stream_tail_t(jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=1), proj,
                               attn, impl.second_layer_transposed)[2]
            q_dp = jnp.einsum("fkl,kf->kl", q, d_pooled[bb])
        else:
            q_dp = jnp.einsum("klf,kf->kl", _stream_tail(_blocks(a, start, chunk), proj,
                                                         attn)[2], d_pooled[bb])
        dw = q_dp + d_weight_sum[bb][:, None] + _blocks(d_weights, start, chunk)
        w_c = _blocks(w, start, chunk) * fresh[:, None]
        return acc + jax.ops.segment_sum(jnp.sum(w_c * dw, axis=1), bb, num_bags)

    return _chunk_loop(k, chunk, body, jnp.zeros(num_bags, jnp.float32))


def _attention_stream_bwd(num_bags, dtype, impl: HeadImpl, residuals, cotangents):
    impl = impl.resolved()
    proj, attn, tiles, block_bag, a, w, pooled, weight_sum = residuals
    d_local, d_weights = cotangents
    k, length = w.shape
    wv, bv = attn["v"]["kernel"], attn["v"]["bias"]
    d_pooled = d_local @ wv.T  # [B, 8]
    d_weight_sum = d_local @ bv  # [B]
    d_weights = d_weights.reshape(k, length)
    chunk = _chunk_blocks(k, length, impl.backward_chunk_tiles)
    if impl.one_backward_pass or not k:
        w_dw = _bag_sum_w_dw(pooled, weight_sum, w, d_weights, d_pooled, d_weight_sum,
                             block_bag, num_bags)
    else:
        w_dw = _bag_sum_w_dw_by_pass(block_bag, a, w, d_weights, d_pooled, d_weight_sum, proj,
                                     attn, num_bags, chunk, impl)
    hidden, proj_dim = proj["0"]["bias"].shape[0], proj["1"]["bias"].shape[0]
    sums = _zero_sums(hidden, tiles.shape[-1], proj_dim)
    if k:
        sums = _tile_sums(block_bag, a, w, d_weights, d_pooled, d_weight_sum, w_dw, tiles,
                          proj, attn, dtype, chunk, impl)
    # The barrier keeps XLA from folding the transpose below into the weight gradient's dot:
    # folded, a one-chunk pass's bf16 dot took a form XLA:CPU computes only in its fallback,
    # which has no bf16 (UNIMPLEMENTED: DotThunk BF16 x BF16 = F32).
    w1 = jax.lax.optimization_barrier(sums["w1"])
    z, wk, bk = attn["latent"], attn["k"]["kernel"], attn["k"]["bias"]
    scale = jnp.sqrt(jnp.float32(z.shape[0]))
    d_proj = {
        "0": {"kernel": w1.T, "bias": sums["b1"]},
        "1": {"kernel": sums["w2"], "bias": sums["b2"]},
    }
    d_attn = {
        "latent": (wk.T @ sums["key_vec"] + sums["shift"] * bk) / scale,
        "k": {"kernel": jnp.outer(sums["key_vec"], z) / scale, "bias": sums["shift"] * z / scale},
        "v": {"kernel": pooled.T @ d_local, "bias": weight_sum @ d_local},
    }
    return d_proj, d_attn, None, None, None


attention_stream.defvjp(_attention_stream_forward, _attention_stream_bwd)
