"""The MIL-PF head (paper, section 2; Table 4 for the pooling variants).

Per stream: Dense(D->16), ReLU, Dense(16->8), ReLU. The global stream pools a bag's views (max
by default), the local stream pools its tiles with a single learned latent query over 8-dim
keys and values (Perceiver-style cross-attention). Concat -> Dense(16->1) -> logit.

Tiles are packed: `tiles` [N, D] holds the real tiles of every bag, `tile_bag` [N] says which
bag each belongs to, so the heavy first layer runs on real tiles only and pooling is a segment
operation. A padded batch [B, T, D] goes through the same code after `pad_to_packed`.

The model returns `(logit, aux)`: aux["attn"] [N] is each tile's attention weight (zero for
padding), so explanation needs no second forward path.

Speed (issue 6, measured in benchmarks/benchmark.py): the local attention stream, where almost
all the work is, runs through `attention_stream`, whose gradient is written by hand
(`jax.custom_vjp`): autodiff of the segment softmax kept large per-tile intermediates and
scattered over every tile. Both of its passes walk the tiles in chunks (the forward one with an
online softmax per bag), so only the first layer's output spans every tile. When the trainer
lays the tiles out in blocks of TILE_BLOCK (each bag's tiles padded with invalid tiles to a
multiple of it, `block_bag` naming each block's bag), the softmax and pooling reduce inside each
block densely and only one value per block is scattered to its bag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

GLOBAL_POOLS = ("max", "mean", "attn", "none")
LOCAL_POOLS = ("attn", "max", "mean", "none")


@dataclass(frozen=True)
class HeadConfig:
    """Shape and pooling of a head; the defaults are the paper's full MIL-PF (Table 4, last row).

    dim: the encoder's embedding size D. hidden, proj: the stream MLP widths (section 3.1:
    "projecting from embedding size to 16, and second from 16 to 8"). first_layer_dtype: the
    compute dtype of the D->16 layer (float32 or bfloat16, always accumulated in float32).
    """

    dim: int = 1152
    global_pool: str = "max"
    local_pool: str = "attn"
    hidden: int = 16
    proj: int = 8
    first_layer_dtype: str = "float32"

    def __post_init__(self):
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool {self.global_pool!r}: choose one of {GLOBAL_POOLS}")
        if self.local_pool not in LOCAL_POOLS:
            raise ValueError(f"local_pool {self.local_pool!r}: choose one of {LOCAL_POOLS}")
        if self.global_pool == "none" and self.local_pool == "none":
            raise ValueError("a head needs at least one stream: global_pool and local_pool "
                             "are both 'none'")
        if self.first_layer_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"first_layer_dtype {self.first_layer_dtype!r}: float32|bfloat16")

    def replace(self, **changes) -> HeadConfig:
        return dataclasses.replace(self, **changes)


def torch_linear_init(fan_in: int):
    """PyTorch nn.Linear's default: weights and biases uniform in +-1/sqrt(fan_in).

    (kaiming_uniform with a=sqrt(5) gives exactly this bound for the weights.) Matching it keeps
    results comparable with the original code.
    """
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    """Dense with PyTorch's default init; `compute_dtype` with float32 accumulation."""

    features: int
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_linear_init(fan_in), (fan_in, self.features))
        bias = self.param("bias", torch_linear_init(fan_in), (self.features,))
        return _first_layer(x, kernel, bias, self.compute_dtype)


class StreamMLP(nn.Module):
    """Dense(D->hidden), ReLU, Dense(hidden->proj), ReLU: where the task-specific work happens."""

    hidden: int
    proj: int
    first_layer_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        x = nn.relu(Linear(self.hidden, self.first_layer_dtype, name="0")(x))
        return nn.relu(Linear(self.proj, name="1")(x))


def segment_softmax(scores, segment_ids, valid, num_segments):
    """Softmax of `scores` [N] within each segment over the valid entries only.

    Invalid entries and empty segments get weight 0 (never NaN, also in the gradient).
    """
    masked = jnp.where(valid, scores, -jnp.inf)
    seg_max = jax.ops.segment_max(masked, segment_ids, num_segments)  # [B], -inf when empty
    seg_max = jnp.where(jnp.isfinite(seg_max), seg_max, 0.0)
    shifted = jnp.where(valid, scores - seg_max[segment_ids], 0.0)
    e = jnp.where(valid, jnp.exp(shifted), 0.0)
    denom = jax.ops.segment_sum(e, segment_ids, num_segments)
    return e / jnp.where(denom > 0, denom, 1.0)[segment_ids]


def masked_softmax(scores, mask, axis=-1):
    """Softmax over the entries where `mask` is True; all-masked rows give zeros."""
    masked = jnp.where(mask, scores, -jnp.inf)
    m = jnp.max(masked, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.where(mask, jnp.exp(jnp.where(mask, scores - m, 0.0)), 0.0)
    denom = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


class LatentAttention(nn.Module):
    """One learned latent query z over keys/values Dense(8->8): softmax(z K^T / sqrt(8)) V.

    The sqrt(8) scaling follows the original code's forward pass.
    """

    proj: int

    def setup(self):
        # The original initialises the latent from a standard normal (torch.randn).
        self.latent = self.param("latent", nn.initializers.normal(1.0), (self.proj,))
        self.k = Linear(self.proj, name="k")
        self.v = Linear(self.proj, name="v")

    def scores(self, h):
        return self.k(h) @ self.latent / jnp.sqrt(jnp.float32(self.proj))

    def __call__(self, h):
        return self.scores(h), self.v(h)


def _pool_segments(kind, h, seg, valid, num_segments, attention=None):
    """Pool per-item features h [N, F] into [num_segments, F]; returns (pooled, weights [N])."""
    valid_f = valid.astype(h.dtype)
    if kind == "attn":
        scores, values = attention(h)
        weights = segment_softmax(scores, seg, valid, num_segments)
        return jax.ops.segment_sum(weights[:, None] * values, seg, num_segments), weights
    if kind == "max":
        # Stream features are ReLU outputs (>= 0), so 0 is a safe fill for padding and for
        # empty bags.
        pooled = jax.ops.segment_max(h * valid_f[:, None], seg, num_segments)
        pooled = jnp.maximum(pooled, 0.0)
        return pooled, valid_f * 0.0
    if kind == "mean":
        counts = jax.ops.segment_sum(valid_f, seg, num_segments)
        weights = valid_f / jnp.maximum(counts, 1.0)[seg]
        return jax.ops.segment_sum(weights[:, None] * h, seg, num_segments), weights
    raise ValueError(kind)


TILE_BLOCK = 16  # tiles per block in the trainer's layout (see `attention_stream`)
# False routes the attention pooling through autodiff of StreamMLP + `_pool_segments` instead of
# `attention_stream`: same values, the slower gradient. For the benchmark's comparison; read when
# a head is traced.
HAND_WRITTEN_GRADIENT = True


def _first_layer(x, kernel, bias, dtype):
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


# The forward and backward passes walk the tiles in chunks of about this many (whole blocks):
# their per-tile intermediates ([runs, chunk, 16] arrays) stay small and in cache whatever the
# cohort, and the first layer's weight gradient is summed chunk by chunk. None: one pass over
# all tiles. 8192 was the fastest of 2,048-16,384 on the 2-core CPU (benchmarks/benchmark.py,
# "step's code"). Read when a head is traced.
FORWARD_CHUNK_TILES: int | None = 8192
BACKWARD_CHUNK_TILES: int | None = 8192


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


def _attention_stream_forward(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype):
    k = block_bag.shape[0]
    length = tiles.shape[0] // k if k else 1  # tiles per block
    valid = tile_valid.reshape(k, length)
    hidden, proj_dim = proj["0"]["bias"].shape[0], proj["1"]["bias"].shape[0]
    chunk = _chunk_blocks(k, length, FORWARD_CHUNK_TILES)
    if chunk == k:  # one pass over all tiles
        a = _first_layer(tiles, proj["0"]["kernel"], proj["0"]["bias"], dtype)
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
            a_c = _first_layer(x, proj["0"]["kernel"], proj["0"]["bias"], dtype)
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


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def attention_stream(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype):
    """The local stream with latent-attention pooling: StreamMLP on every tile, then
    softmax(z K^T / sqrt(8)) V within each bag. Same values as `StreamMLP` + `_pool_segments`
    ("attn"), with a hand-written gradient.

    proj, attn: the `local_proj` and `local_attn` parameters. tiles [N, D]; block_bag [K] with
    N = K * L: tiles come in K blocks of L consecutive tiles that belong to one bag (L = 1: any
    packing, block_bag = tile_bag). tile_valid [N]. Returns (local [num_bags, 8], weights [N]).
    The tiles get no gradient (they are data).
    """
    return _attention_stream_forward(proj, attn, tiles, block_bag, tile_valid, num_bags, dtype)[0]


def _attention_stream_bwd(num_bags, dtype, residuals, cotangents):
    proj, attn, tiles, block_bag, a, w, pooled, weight_sum = residuals
    d_local, d_weights = cotangents
    k, length = w.shape
    hidden, dim = a.shape[-1], tiles.shape[-1]
    wv, bv = attn["v"]["kernel"], attn["v"]["bias"]
    d_pooled_bag = d_local @ wv.T  # [B, 8]
    d_weight_sum_bag = d_local @ bv  # [B]
    d_weights = d_weights.reshape(k, length)
    chunk = _chunk_blocks(k, length, BACKWARD_CHUNK_TILES)

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


class MILPFHead(nn.Module):
    """MIL-PF head over a batch of B bags.

    Call with views [B, V, D], views_mask [B, V], tiles [N, D], tile_bag [N] int32 (bag of each
    tile), tile_valid [N] bool; optionally block_bag [K] (N = K * L: blocks of L consecutive
    tiles of one bag, see `attention_stream`). Returns (logit [B] float32, aux) with
    aux["attn"] [N] (tile weights; zeros unless local_pool is attn or mean), aux["view_attn"]
    [B, V], aux["global"] [B, 8], aux["local"] [B, 8].
    """

    config: HeadConfig

    @nn.compact
    def __call__(self, views, views_mask, tiles, tile_bag, tile_valid, block_bag=None):
        cfg = self.config
        b = views.shape[0]
        feats, aux = [], {}
        if cfg.global_pool != "none":
            mlp = StreamMLP(cfg.hidden, cfg.proj, cfg.first_layer_dtype, name="global_proj")
            hv = mlp(views)  # [B, V, 8]
            if cfg.global_pool == "max":
                g = jnp.max(jnp.where(views_mask[..., None], hv, 0.0), axis=1)
                w = jnp.zeros(views_mask.shape, jnp.float32)
            elif cfg.global_pool == "mean":
                m = views_mask.astype(jnp.float32)
                w = m / jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
                g = jnp.einsum("bv,bvf->bf", w, hv)
            else:
                att = LatentAttention(cfg.proj, name="global_attn")
                s, vals = att(hv)
                w = masked_softmax(s, views_mask)
                g = jnp.einsum("bv,bvf->bf", w, vals)
            feats.append(g)
            aux["global"], aux["view_attn"] = g, w
        if cfg.local_pool == "attn" and HAND_WRITTEN_GRADIENT and not self.is_initializing():
            # The parameters are the ones StreamMLP and LatentAttention declare below (at init).
            params = self.variables["params"]
            loc, w = attention_stream(
                params["local_proj"], params["local_attn"], tiles,
                tile_bag if block_bag is None else block_bag, tile_valid, b,
                cfg.first_layer_dtype,
            )
            feats.append(loc)
            aux["local"], aux["attn"] = loc, w
        elif cfg.local_pool != "none":
            mlp = StreamMLP(cfg.hidden, cfg.proj, cfg.first_layer_dtype, name="local_proj")
            ht = mlp(tiles)  # [N, 8]: the first layer sees real (packed) tiles only
            attention = LatentAttention(cfg.proj, name="local_attn") \
                if cfg.local_pool == "attn" else None
            loc, w = _pool_segments(cfg.local_pool, ht, tile_bag, tile_valid, b, attention)
            feats.append(loc)
            aux["local"], aux["attn"] = loc, w
        z = jnp.concatenate(feats, axis=-1)
        logit = Linear(1, name="linear_out")(z)[:, 0]
        return logit, aux


def pad_to_packed(tiles, tiles_mask):
    """[B, T, D] + [B, T] -> packed (tiles [B*T, D], tile_bag [B*T], tile_valid [B*T])."""
    b, t, d = tiles.shape
    tile_bag = jnp.repeat(jnp.arange(b, dtype=jnp.int32), t)
    return tiles.reshape(b * t, d), tile_bag, tiles_mask.reshape(b * t)


def shape_differences(found: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
    """Human-readable differences between two {parameter name: shape} maps (a checkpoint's or
    an imported state dict's against a head's); empty when they agree."""
    diffs = [f"missing {k} (expected shape {expected[k]})" for k in expected if k not in found]
    diffs += [f"unexpected {k} (shape {found[k]})" for k in found if k not in expected]
    diffs += [
        f"{k}: shape {found[k]}, expected {expected[k]}"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    return diffs


def count_params(params) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def init_params(key, cfg: HeadConfig):
    """Initialise a head's parameters (no data needed: shapes come from cfg.dim)."""
    d = cfg.dim
    dummy = (jnp.zeros((1, 1, d)), jnp.ones((1, 1), bool), jnp.zeros((1, d)),
             jnp.zeros((1,), jnp.int32), jnp.ones((1,), bool))
    return MILPFHead(cfg).init(key, *dummy)["params"]
