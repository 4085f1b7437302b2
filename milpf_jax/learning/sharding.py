"""Training over several devices (DESIGN.md, "Scale beyond one machine").

Two ways to split the one compiled program, both with `jax.sharding` (a 1-D `Mesh`) and XLA's
automatic partitioning, so `train`/`epoch_step` stay as they are:

- "runs" (the default when there are several devices): the runs (seeds x grid) are split over
  the devices, each device holds all the data. Nothing crosses devices during training.
- "tiles": for cohorts whose embeddings do not fit one device. The tiles (the big array) are
  split over the devices, every run is on every device; each device computes its tiles' part of
  the first layer, of the pooling sums and of the weight gradient, and XLA sums the parts
  across devices. Views and per-bag arrays are small and stay whole on each device.

Both give the single-device results up to float rounding (tests/learning/test_sharding.py checks
it on
forced host devices: XLA_FLAGS=--xla_force_host_platform_device_count=4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("runs", "tiles")


def mesh(devices=None, name: str = "runs") -> Mesh:
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (name,))


def split_leading_axis(tree, devices, name: str = "runs"):
    """Place a tree's arrays split along their first axis over `devices`."""
    return jax.device_put(tree, NamedSharding(mesh(devices, name), PartitionSpec(name)))


def replicate(tree, devices):
    """Place a tree whole on every device of `devices`."""
    return jax.device_put(tree, NamedSharding(mesh(devices), PartitionSpec()))


def pad_tiles(batch, multiple: int):
    """A BagBatch whose tile axis (and block axis) is a multiple of `multiple`, padded with
    invalid zero tiles attributed to bag 0 (they get weight 0 in every pooling)."""
    n_blocks = len(batch.tile_bag if batch.block_bag is None else batch.block_bag)
    block = batch.tiles.shape[0] // n_blocks if n_blocks else 1
    extra = -n_blocks % multiple
    if extra == 0:
        return batch

    def grow(a, n, fill):
        return jnp.concatenate([a, jnp.full((n, *a.shape[1:]), fill, a.dtype)])

    return batch._replace(
        tiles=grow(batch.tiles, extra * block, 0),
        tile_bag=grow(batch.tile_bag, extra * block, 0),
        tile_valid=grow(batch.tile_valid, extra * block, False),
        block_bag=None if batch.block_bag is None else grow(batch.block_bag, extra, 0),
    )


def shard_tiles(batch, devices):
    """A BagBatch with its tiles, tile_bag, tile_valid and block_bag split over `devices` (after
    padding to a multiple of them) and the per-bag arrays replicated."""
    batch = pad_tiles(batch, len(devices))
    per_tile = ("tiles", "tile_bag", "tile_valid", "block_bag")
    placed = {}
    for field in batch._fields:
        value = getattr(batch, field)
        if value is None:
            placed[field] = None
        elif field in per_tile:
            placed[field] = split_leading_axis(value, devices, "tiles")
        else:
            placed[field] = replicate(value, devices)
    return type(batch)(**placed)


def place(state, data, devices=None, axis: str = "runs"):
    """(state, data) placed for training over `devices` (default: all) along `axis`.

    "runs": the state's leading (run) axis split, the data replicated; the number of runs must
    be a multiple of the number of devices. "tiles": the state replicated, every batch's tiles
    split (see `shard_tiles`).
    """
    devices = jax.devices() if devices is None else list(devices)
    if axis not in AXES:
        raise ValueError(f"shard axis {axis!r}: choose one of {AXES}")
    if axis == "runs":
        runs = len(jax.tree_util.tree_leaves(state)[0])
        if runs % len(devices):
            raise ValueError(f"{runs} runs do not split evenly over {len(devices)} devices: "
                             "use a multiple of the device count (seeds x grid), or shard the "
                             "tiles instead")
        return split_leading_axis(state, devices), replicate(data, devices)
    return replicate(state, devices), type(data)(*(shard_tiles(b, devices) for b in data))
