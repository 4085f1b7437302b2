"""The local stream with latent-attention pooling, with its gradient written by hand.

`attention_stream` equals the head's StreamMLP on every tile followed by softmax(z K^T /
sqrt(8)) V within each bag (`milpf_jax.learning.head`), as a `jax.custom_vjp`: autodiff of the
segment softmax kept large per-tile intermediates and scattered over every tile. Both of its
passes walk the tiles in chunks (the forward one with an online softmax per bag), so only the
first layer's output spans every tile; the per-tile features are recomputed in the backward
pass rather than kept. When the trainer lays the tiles out in blocks (each bag's tiles padded
with invalid tiles to a multiple of the block, `block_bag` naming each block's bag), the softmax
and pooling reduce inside each block densely and only one value per block is scattered to its
bag. The chunk sizes and the block are `HeadImpl` fields (`milpf_jax.learning.head`), so they
are part of the compiled program's key; the README's performance section measures each.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

DEFAULT_CHUNK_TILES = 8192  # tiles per chunk of each pass (HeadImpl's default)


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


def _tile_rows(tiles, start, n: int):
    """tiles[start:start + n] inside a loop. On CPU, bf16 tiles are sliced as their uint16 bits:
    XLA:CPU slices bf16 in f32, and hoisting that conversion out of the loop made a float32 copy
    of every tile (twice the bf16 embeddings' memory). Other platforms slice bf16 as it is."""

    def plain(x, start):
        return jax.lax.dynamic_slice_in_dim(x, start, n, axis=0)

    def as_bits(x, start):
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


def _attention_stream_forward(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype,
                              forward_chunk, backward_chunk):
    k = block_bag.shape[0]
    length = tiles.shape[0] // k if k else 1  # tiles per block
    valid = tile_valid.reshape(k, length)
    hidden, proj_dim = proj["0"]["bias"].shape[0], proj["1"]["bias"].shape[0]
    chunk = _chunk_blocks(k, length, forward_chunk)
    if chunk == k:  # one pass over all tiles
        a = first_layer(tiles, proj["0"]["kernel"], proj["0"]["bias"], dtype)
        a = a.reshape(k, length, hidden)  # [K, L, 16]
        _, _, q, _, s = _stream_tail(a, proj, attn)
        w = _block_softmax(s, block_bag, valid, num_bags)
        pooled = jax.ops.segment_sum(jnp.einsum("kl,klf->kf", w, q), block_bag, num_bags)
    else:
        # In chunks, one pass, with an online softmax per bag (running max, denominator and
        # weighted sum, rescaled when a later chunk raises the max). Only the first layer's
        # output (kept for the backward pass) and the scores span all tiles.
        def step(start, fresh, carry):
            a_buf, s_buf, m, denom, acc = carry
            x = _tile_rows(tiles, start * length, chunk * length)
            a_c = first_layer(x, proj["0"]["kernel"], proj["0"]["bias"], dtype)
            a_c = a_c.reshape(chunk, length, hidden)
            _, _, q, _, s_c = _stream_tail(a_c, proj, attn)
            bb = _blocks(block_bag, start, chunk)
            v_c = _blocks(valid, start, chunk) & fresh[:, None]  # each block counted once
            m_new = jnp.maximum(m, jax.ops.segment_max(
                jnp.max(jnp.where(v_c, s_c, -jnp.inf), axis=1), bb, num_bags))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            rescale = jnp.exp(m - m_safe)  # 0 while a bag has no tile yet (m = -inf)
            e = jnp.where(v_c, jnp.exp(jnp.where(v_c, s_c - m_safe[bb][:, None], 0.0)), 0.0)
            denom = denom * rescale + jax.ops.segment_sum(jnp.sum(e, axis=1), bb, num_bags)
            acc = acc * rescale[:, None] + jax.ops.segment_sum(
                jnp.einsum("kl,klf->kf", e, q), bb, num_bags)
            return (jax.lax.dynamic_update_slice_in_dim(a_buf, a_c, start, axis=0),
                    jax.lax.dynamic_update_slice_in_dim(s_buf, s_c, start, axis=0),
                    m_new, denom, acc)

        init = (jnp.zeros((k, length, hidden), jnp.float32), jnp.zeros((k, length), jnp.float32),
                jnp.full(num_bags, -jnp.inf, jnp.float32), jnp.zeros(num_bags, jnp.float32),
                jnp.zeros((num_bags, proj_dim), jnp.float32))
        a, s, m, denom, acc = _chunk_loop(k, chunk, step, init)
        m = jnp.where(jnp.isfinite(m), m, 0.0)[block_bag]
        inv = 1.0 / jnp.where(denom > 0, denom, 1.0)
        w = jnp.where(valid, jnp.exp(jnp.where(valid, s - m[:, None], 0.0)), 0.0)
        w = w * inv[block_bag][:, None]
        pooled = acc * inv[:, None]
    weight_sum = jax.ops.segment_sum(jnp.sum(w, axis=1), block_bag, num_bags)  # 1, or 0 if empty
    local = pooled @ attn["v"]["kernel"] + weight_sum[:, None] * attn["v"]["bias"]
    residuals = (proj, attn, tiles, block_bag, a, w, pooled, weight_sum)
    return (local, w.reshape(-1)), residuals


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def attention_stream(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype,
                     forward_chunk=DEFAULT_CHUNK_TILES, backward_chunk=DEFAULT_CHUNK_TILES):
    """The local stream with latent-attention pooling: StreamMLP on every tile, then
    softmax(z K^T / sqrt(8)) V within each bag. Same values as `StreamMLP` + `_pool_segments`
    ("attn"), with a hand-written gradient.

    proj, attn: the `local_proj` and `local_attn` parameters. tiles [N, D]; block_bag [K] with
    N = K * L: tiles come in K blocks of L consecutive tiles that belong to one bag (L = 1: any
    packing, block_bag = tile_bag). tile_valid [N]. forward_chunk, backward_chunk: tiles per
    chunk of each pass (None: one pass over all tiles). Returns (local [num_bags, 8], weights
    [N]). The tiles get no gradient (they are data).
    """
    return _attention_stream_forward(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype,
                                     forward_chunk, backward_chunk)[0]


def _attention_stream_bwd(num_bags, dtype, forward_chunk, backward_chunk, residuals, cotangents):
    proj, attn, tiles, block_bag, a, w, pooled, weight_sum = residuals
    d_local, d_weights = cotangents
    k, length = w.shape
    hidden, dim = a.shape[-1], tiles.shape[-1]
    wv, bv = attn["v"]["kernel"], attn["v"]["bias"]
    d_pooled_bag = d_local @ wv.T  # [B, 8]
    d_weight_sum_bag = d_local @ bv  # [B]
    d_weights = d_weights.reshape(k, length)
    chunk = _chunk_blocks(k, length, backward_chunk)

    def blocks(x, start):
        return _blocks(x, start, chunk)

    # The per-tile features are recomputed from the first layer's output, chunk by chunk,
    # rather than kept: cheap, and far less memory.
    def tile_dw(start, fresh, dw):  # dw: how the loss moves with each tile's weight
        bb = blocks(block_bag, start)
        _, _, q, _, _ = _stream_tail(blocks(a, start), proj, attn)
        dw_c = (jnp.einsum("klf,kf->kl", q, d_pooled_bag[bb]) + d_weight_sum_bag[bb][:, None]
                + blocks(d_weights, start))
        return jax.lax.dynamic_update_slice_in_dim(dw, dw_c, start, axis=0)

    dw = _chunk_loop(k, chunk, tile_dw, jnp.zeros((k, length), jnp.float32)) if k else d_weights
    # Through the softmax: ds = w * (dw - sum_bag(w * dw)).
    w_dw = jax.ops.segment_sum(jnp.sum(w * dw, axis=1), block_bag, num_bags)

    def tile_grads(start, fresh, sums):
        bb, a_c = blocks(block_bag, start), blocks(a, start)
        w_c = blocks(w, start) * fresh[:, None]  # a block seen by an earlier chunk adds nothing
        h, pre2, q, key_vec, _ = _stream_tail(a_c, proj, attn)
        ds = w_c * (blocks(dw, start) - w_dw[bb][:, None])
        dq = w_c[..., None] * d_pooled_bag[bb][:, None, :] + ds[..., None] * key_vec
        d_pre2 = jnp.where(pre2 > 0, dq, 0.0)
        da = jnp.where(a_c > 0, d_pre2 @ proj["1"]["kernel"].T, 0.0).reshape(-1, hidden)
        x = _tile_rows(tiles, start * length, chunk * length)
        if dtype == "bfloat16":  # the first layer's weight gradient, [16, chunk] x [chunk, D]
            d_w1 = jnp.dot(da.T.astype(jnp.bfloat16), x.astype(jnp.bfloat16),
                           preferred_element_type=jnp.float32)
        else:
            d_w1 = jnp.dot(da.T, x.astype(jnp.float32))
        return dict(
            w1=sums["w1"] + d_w1, b1=sums["b1"] + jnp.sum(da, axis=0),
            w2=sums["w2"] + jnp.einsum("klh,klf->hf", h, d_pre2),
            b2=sums["b2"] + jnp.sum(d_pre2, (0, 1)),
            key_vec=sums["key_vec"] + jnp.einsum("kl,klf->f", ds, q),
            shift=sums["shift"] + jnp.sum(ds),
        )

    proj_dim = proj["1"]["bias"].shape[0]
    sums = dict(w1=jnp.zeros((hidden, dim), jnp.float32), b1=jnp.zeros(hidden, jnp.float32),
                w2=jnp.zeros((hidden, proj_dim), jnp.float32),
                b2=jnp.zeros(proj_dim, jnp.float32), key_vec=jnp.zeros(proj_dim, jnp.float32),
                shift=jnp.zeros((), jnp.float32))
    if k:
        sums = _chunk_loop(k, chunk, tile_grads, sums)
    z, wk, bk = attn["latent"], attn["k"]["kernel"], attn["k"]["bias"]
    scale = jnp.sqrt(jnp.float32(z.shape[0]))
    d_proj = {
        "0": {"kernel": sums["w1"].T, "bias": sums["b1"]},
        "1": {"kernel": sums["w2"], "bias": sums["b2"]},
    }
    d_attn = {
        "latent": (wk.T @ sums["key_vec"] + sums["shift"] * bk) / scale,
        "k": {"kernel": jnp.outer(sums["key_vec"], z) / scale, "bias": sums["shift"] * z / scale},
        "v": {"kernel": pooled.T @ d_local, "bias": weight_sum @ d_local},
    }
    return d_proj, d_attn, None, None, None


attention_stream.defvjp(_attention_stream_forward, _attention_stream_bwd)

