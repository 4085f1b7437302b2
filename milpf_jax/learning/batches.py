"""Packed bags on the device: the batches the trainer and inference compute on.

`bag_batch` turns `milpf_jax.data.packed.PackedBags` into a `BagBatch` of device arrays, each
bag's tiles padded to a multiple of the head's tile block; `as_instances` is the "inference
only" ablation's per-image layout. `milpf_jax.learning.train.make_train_data` builds the
training and validation batches from them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from milpf_jax.data.labels import class_weights
from milpf_jax.data.packed import COPY_ROWS
from milpf_jax.learning.head import HeadConfig, HeadImpl


class BagBatch(NamedTuple):
    """B bags, tiles packed: views [B, V, D], views_mask [B, V], tiles [N, D], tile_bag [N],
    tile_valid [N], labels [B] float32, weights [B] float32 (loss weight; 0 = not a sample).

    block_bag [K] (optional): the tiles come in K blocks of N / K consecutive tiles of one bag
    (`bag_batch` pads each bag with invalid tiles to a multiple of HeadImpl.tile_block), which
    the head's attention pooling uses to reduce densely inside blocks. None: any packing."""

    views: jax.Array
    views_mask: jax.Array
    tiles: jax.Array
    tile_bag: jax.Array
    tile_valid: jax.Array
    labels: jax.Array
    weights: jax.Array
    block_bag: jax.Array | None = None

    @property
    def n_bags(self) -> int:
        return self.views.shape[0]


class TrainData(NamedTuple):
    train: BagBatch
    val: BagBatch


def bag_batch(packed, *, weights=None, dtype=jnp.float32,
              block: int = HeadImpl().tile_block) -> BagBatch:
    """A BagBatch (device arrays) from PackedBags; weights default to 1 per bag.

    With block > 1 each bag's tiles are padded with invalid (zero) tiles to a multiple of
    `block` and the batch says which bag each block belongs to (`block_bag`): the layout the
    head's attention pooling is fastest on. block=1 keeps the real tiles only.
    """
    w = np.ones(packed.n_bags, np.float32) if weights is None else weights
    tile_bag = np.asarray(packed.tile_bag, np.int32)
    tiles, tile_valid, block_bag = packed.tiles, np.ones(len(tile_bag), bool), None
    if block > 1:
        tiles, tile_bag, tile_valid, block_bag = _in_blocks(tiles, tile_bag, packed.n_bags, block,
                                                            dtype=dtype)
    return BagBatch(
        views=jnp.asarray(packed.views, dtype),
        views_mask=jnp.asarray(packed.views_mask),
        tiles=jnp.asarray(tiles, dtype),
        tile_bag=jnp.asarray(tile_bag),
        tile_valid=jnp.asarray(tile_valid),
        labels=jnp.asarray(packed.labels, jnp.float32),
        weights=jnp.asarray(w, jnp.float32),
        block_bag=None if block_bag is None else jnp.asarray(block_bag),
    )


def _in_blocks(tiles, tile_bag, n_bags: int, block: int, dtype=None):
    """Tiles packed bag after bag (tile_bag sorted) -> each bag padded to a multiple of `block`
    with zero tiles, in `dtype` (default: the tiles'). Returns (tiles, tile_bag, tile_valid,
    block_bag)."""
    if len(tile_bag) and np.any(np.diff(tile_bag) < 0):
        raise ValueError("tiles must be packed bag after bag (tile_bag sorted) to form blocks")
    counts = np.bincount(tile_bag, minlength=n_bags)
    blocks = -(-counts // block)  # per bag
    first_tile = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_slot = np.concatenate([[0], np.cumsum(blocks)[:-1]]) * block
    slot = first_slot[tile_bag] + np.arange(len(tile_bag)) - first_tile[tile_bag]
    n_slots = int(blocks.sum()) * block
    out = np.zeros((n_slots, tiles.shape[1]), tiles.dtype if dtype is None else dtype)
    for i in range(0, len(slot), COPY_ROWS):  # cast a slice at a time
        out[slot[i:i + COPY_ROWS]] = tiles[i:i + COPY_ROWS]
    valid = np.zeros(n_slots, bool)
    valid[slot] = True
    block_bag = np.repeat(np.arange(n_bags, dtype=np.int32), blocks)
    return out, np.repeat(block_bag, block), valid, block_bag


def as_instances(batch: BagBatch, head: HeadConfig) -> BagBatch:
    """Each view (global-only head) or tile (local-only head) as its own bag, with its bag's
    label: the "inference only" ablation trains on these and pools only at inference."""
    views, vmask = np.asarray(batch.views), np.asarray(batch.views_mask)
    labels = np.asarray(batch.labels)
    if head.local_pool == "none":
        b, v, d = views.shape
        inst_labels = np.repeat(labels, v)
        inst_mask = vmask.reshape(b * v)
        return BagBatch(
            views=jnp.asarray(views.reshape(b * v, 1, d)),
            views_mask=jnp.asarray(inst_mask[:, None]),
            tiles=jnp.zeros((0, d), batch.tiles.dtype),
            tile_bag=jnp.zeros((0,), jnp.int32),
            tile_valid=jnp.zeros((0,), bool),
            labels=jnp.asarray(inst_labels),
            weights=jnp.asarray(_instance_weights(inst_labels, inst_mask)),
        )
    valid = np.asarray(batch.tile_valid)
    inst_labels = labels[np.asarray(batch.tile_bag)[valid]]
    n, d = len(inst_labels), batch.tiles.shape[1]
    return BagBatch(  # real tiles only (no padding blocks); no views: the global stream is off
        views=jnp.zeros((n, 0, d), batch.views.dtype),
        views_mask=jnp.zeros((n, 0), bool),
        tiles=batch.tiles[np.flatnonzero(valid)],
        tile_bag=jnp.arange(n, dtype=jnp.int32),
        tile_valid=jnp.ones(n, bool),
        labels=jnp.asarray(inst_labels),
        weights=jnp.asarray(class_weights(inst_labels)),
    )


def _instance_weights(labels, present):
    w = np.zeros(len(labels), np.float32)
    w[present] = class_weights(labels[present])
    return w


