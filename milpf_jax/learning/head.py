"""The MIL-PF head (paper, section 2; Table 4 for the pooling variants).

Per stream: Dense(D->16), ReLU, Dense(16->8), ReLU. The global stream pools a bag's views (max
by default), the local stream pools its tiles with a single learned latent query over 8-dim
keys and values (Perceiver-style cross-attention). Concat -> Dense(16->1) -> logit.

Tiles are packed: `tiles` [N, D] holds the real tiles of every bag, `tile_bag` [N] says which
bag each belongs to, so the heavy first layer runs on real tiles only and pooling is a segment
operation. A padded batch [B, T, D] goes through the same code after `pad_to_packed`.

The model returns `(logit, aux)`: aux["attn"] [N] is each tile's attention weight (zero for
padding), so explanation needs no second forward path.

The local attention stream, where almost all the work is, runs through
`milpf_jax.learning.attention.attention_stream` (a hand-written gradient, chunked passes, tiles
in blocks). How it runs is a `HeadImpl`, carried in the config: it is part of the jit cache key
and of every checkpoint, so changing it always compiles a new program.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from milpf_jax.config import check, check_choices, option
from milpf_jax.learning.attention import HeadImpl, attention_stream, first_layer

GlobalPool = Literal["max", "mean", "attn", "none"]
LocalPool = Literal["attn", "max", "mean", "none"]
FirstLayerDtype = Literal["auto", "float32", "bfloat16"]
GLOBAL_POOLS, LOCAL_POOLS = get_args(GlobalPool), get_args(LocalPool)


@dataclass(frozen=True)
class HeadConfig:
    """Shape and pooling of a head; the defaults are the paper's full MIL-PF (Table 4, last row).

    dim: the encoder's embedding size D (set from the store). hidden, proj: the stream MLP
    widths (section 3.1: "projecting from embedding size to 16, and second from 16 to 8").
    first_layer_dtype: the compute dtype of the D->16 layer, always accumulated in float32;
    "auto" is bfloat16 where the CPU or GPU computes it natively, else float32 (`resolved`).
    impl: how it computes (`HeadImpl`).
    """

    dim: int = option(1152, cli=False)
    global_pool: GlobalPool = option("max", "global stream pooling over views (none: no global "
                                            "stream)")
    local_pool: LocalPool = option("attn", "local stream pooling over tiles (none: no local "
                                           "stream)")
    hidden: int = option(16, cli=False)
    proj: int = option(8, cli=False)
    first_layer_dtype: FirstLayerDtype = option(
        "auto", "first layer's compute dtype (f32 accumulation); auto: bfloat16 where native")
    impl: HeadImpl = option(HeadImpl(), cli=False)

    def __post_init__(self):
        check_choices(self)
        check(self, not (self.global_pool == "none" and self.local_pool == "none"),
              ("global_pool", "local_pool"), "a head needs at least one stream: both are 'none'")

    def replace(self, **changes) -> HeadConfig:
        return dataclasses.replace(self, **changes)

    def resolved(self) -> HeadConfig:
        """This config with first_layer_dtype and the impl's chunk sizes "auto" made concrete
        for this machine (what results.json and checkpoints record)."""
        dtype = self.first_layer_dtype
        if dtype == "auto":
            from milpf_jax.runtime import default_first_layer_dtype

            dtype = default_first_layer_dtype()
        impl = self.impl.resolved()
        if dtype == self.first_layer_dtype and impl is self.impl:
            return self
        return self.replace(first_layer_dtype=dtype, impl=impl)


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
        return first_layer(x, kernel, bias, self.compute_dtype)


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
        cfg = self.config.resolved()
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
        if (cfg.local_pool == "attn" and cfg.impl.hand_written_gradient
                and not self.is_initializing()):
            # The parameters are the ones StreamMLP and LatentAttention declare below (at init).
            params = self.variables["params"]
            loc, w = attention_stream(
                params["local_proj"], params["local_attn"], tiles,
                tile_bag if block_bag is None else block_bag, tile_valid, b,
                cfg.first_layer_dtype, cfg.impl,
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
