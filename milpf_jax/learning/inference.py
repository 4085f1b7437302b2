"""The public inference API: `Bag`, `Head` and `predict(head, bag)`.

    >>> head = milpf_jax.load_head("runs/phantom/best")
    >>> p = milpf_jax.predict(head, milpf_jax.Bag(views, views_mask, tiles, tiles_mask))

`predict` runs in float32 and pads the tile axis up to a multiple of 64, so new bag sizes rarely
trigger a new compilation.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from milpf_jax.learning.head import HeadConfig, MILPFHead, pad_to_packed

TILE_PAD = 64


class Bag(NamedTuple):
    """One bag (views [V, D], views_mask [V], tiles [T, D], tiles_mask [T]; T may be 0), or a
    batch of bags with a leading axis B on every field."""

    views: np.ndarray
    views_mask: np.ndarray
    tiles: np.ndarray
    tiles_mask: np.ndarray


@flax.struct.dataclass
class Head:
    """A trained head: its parameters (a pytree) with its config as static data.

    Max and mean pooling have the same parameter shapes, so the config must travel with them.
    """

    params: dict
    config: HeadConfig = flax.struct.field(pytree_node=False)

    @property
    def dim(self) -> int:
        return self.config.dim

    def apply(self, views, views_mask, tiles, tile_bag, tile_valid):
        """(logit [B], aux) on packed inputs; see head.MILPFHead."""
        return MILPFHead(self.config).apply(
            {"params": self.params}, views, views_mask, tiles, tile_bag, tile_valid
        )


@partial(jax.jit, static_argnames=("config",))
def _padded_forward(params, config: HeadConfig, views, views_mask, tiles, tiles_mask):
    flat, tile_bag, valid = pad_to_packed(tiles, tiles_mask)
    return MILPFHead(config).apply({"params": params}, views, views_mask, flat, tile_bag, valid)


def _pad_tiles(tiles: np.ndarray, mask: np.ndarray, multiple: int):
    t = tiles.shape[1]
    target = max(multiple, -(-t // multiple) * multiple)
    if target == t:
        return tiles, mask
    pad = target - t
    return (np.pad(tiles, ((0, 0), (0, pad), (0, 0))), np.pad(mask, ((0, 0), (0, pad))))


def as_batch(bag: Bag, dim: int) -> tuple[Bag, bool]:
    """Validate a bag and give it a leading batch axis; returns (batched bag, was_single)."""
    views = np.asarray(bag.views, np.float32)
    single = views.ndim == 2
    if views.ndim not in (2, 3):
        raise ValueError(f"Bag.views must be [V, D] or [B, V, D], got shape {views.shape}")
    lead = (1,) if single else ()
    views = views.reshape(lead + views.shape)
    b = views.shape[0]
    views_mask = np.asarray(bag.views_mask, bool).reshape(lead + np.shape(bag.views_mask))
    tiles = np.asarray(bag.tiles, np.float32)
    if tiles.size == 0:  # T = 0: any empty shape will do
        tiles = tiles.reshape(b, 0, views.shape[-1])
    elif single:
        tiles = tiles[None]
    tiles_mask = np.asarray(bag.tiles_mask, bool).reshape(tiles.shape[:2])
    for name, d in (("views", views.shape[-1]), ("tiles", tiles.shape[-1])):
        if d != dim:
            raise ValueError(f"Bag.{name} has D={d}, but the head was trained on D={dim} "
                             "(embeddings of another encoder?)")
    if views_mask.shape != views.shape[:2] or tiles.shape[0] != b:
        raise ValueError(
            f"inconsistent bag shapes: views {views.shape}, views_mask {views_mask.shape}, "
            f"tiles {tiles.shape}, tiles_mask {tiles_mask.shape}"
        )
    views = _finite_rows("views", views, views_mask, single)
    tiles = _finite_rows("tiles", tiles, tiles_mask, single)
    return Bag(views, views_mask, tiles, tiles_mask), single


def _finite_rows(name: str, x: np.ndarray, mask: np.ndarray, single: bool) -> np.ndarray:
    """Refuse NaN or inf in a real row (it would make the probability NaN); zero it in a
    masked-out row, which is padding and must not leak through the pooling."""
    finite = np.isfinite(x).all(axis=-1)  # [B, V] or [B, T]
    bad = np.argwhere(mask & ~finite)
    if len(bad):
        where = f"row {bad[0][1]}" if single else f"bag {bad[0][0]}, row {bad[0][1]}"
        raise ValueError(f"Bag.{name} holds NaN or inf at {where} ({len(bad)} row(s) in all)")
    return x if finite.all() else np.where(finite[..., None], x, np.float32(0))


def predict_logits(head: Head, bag: Bag):
    """(logit, aux) in float32 for a bag or a batch, tiles padded to a multiple of 64."""
    batch, single = as_batch(bag, head.dim)
    t = batch.tiles.shape[1]
    tiles, tiles_mask = _pad_tiles(batch.tiles, batch.tiles_mask, TILE_PAD)
    config = head.config.replace(first_layer_dtype="float32")
    logit, aux = _padded_forward(head.params, config, batch.views, batch.views_mask,
                                 tiles, tiles_mask)
    b = batch.views.shape[0]
    if "attn" in aux:
        aux = dict(aux, attn=aux["attn"].reshape(b, -1)[:, :t])
    if single:
        logit = logit[0]
        aux = jax.tree_util.tree_map(lambda a: a[0], aux)
    return logit, aux


def predict(head: Head, bag: Bag) -> jax.Array:
    """Malignancy probability, float32: shape [] for one bag, [B] for a batch."""
    logit, _ = predict_logits(head, bag)
    return jax.nn.sigmoid(logit).astype(jnp.float32)
