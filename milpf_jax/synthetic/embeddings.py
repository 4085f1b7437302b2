"""Synthetic embeddings stores with a planted signal, for tests and benchmarks.

A few "lesion" tiles in each positive bag share one direction; negative bags have none. Tiles
are otherwise isotropic noise, so mean pooling dilutes the signal with the bag's many
background tiles while attention can pick the lesion tiles out (paper, section 2: "Mean pooling
fails, as the signal from a few important tiles is suppressed"). The global views carry a weaker
copy of the signal, as a whole-view embedding of a small lesion would.

`write_synthetic_store` writes them to a store; `synthetic_packed` gives the same bags as
`load_packed` would, in memory, without a store (benchmarks at 50,000 bags, machines without
zarr).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from milpf_jax.data import labels
from milpf_jax.data.packed import PackedBags, numpy_dtype
from milpf_jax.data.store import BagPlan, Store


@dataclass(frozen=True)
class SyntheticConfig:
    n_bags: int = 200
    dim: int = 64
    min_tiles: int = 0
    max_tiles: int = 64            # tiles per bag drawn uniformly from [min_tiles, max_tiles]
    n_views: int = 2
    positive_fraction: float = 0.5
    lesion_tiles: tuple[int, int] = (1, 3)   # range of lesion tiles in a positive bag
    tile_signal: float = 0.6       # lesion tile = noise + tile_signal * direction, then L2-normed
    global_signal: float = 0.05
    bags_per_patient: int = 2
    seed: int = 0                  # draws the bags
    signal_seed: int = 0           # draws the lesion direction: stores that share it share a task
    # None: one random stream draws every bag in turn. N: each block of N bags has its own
    # stream, seeded (seed, block), so blocks can be drawn in parallel (`synthetic_bags` start).
    block_bags: int | None = None


def synthetic_bags(cfg: SyntheticConfig, start: int = 0, stop: int | None = None):
    """Yield (BagPlan, global [V, D], tiles [T, D]) with the planted signal; deterministic.

    start, stop: only bags [start, stop); start must begin a block (cfg.block_bags), or be 0.
    """
    stop = cfg.n_bags if stop is None else min(stop, cfg.n_bags)
    if start and not (cfg.block_bags and start % cfg.block_bags == 0):
        raise ValueError(f"synthetic bags from {start}: a start other than 0 must begin a block "
                         f"(block_bags={cfg.block_bags})")
    rng = np.random.default_rng(cfg.seed)
    direction = np.random.default_rng(cfg.signal_seed).standard_normal(cfg.dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    for b in range(start, stop):
        if cfg.block_bags and b % cfg.block_bags == 0:
            rng = np.random.default_rng([cfg.seed, b // cfg.block_bags])
        positive = rng.random() < cfg.positive_fraction
        t = int(rng.integers(cfg.min_tiles, cfg.max_tiles + 1))
        tiles = rng.standard_normal((t, cfg.dim)).astype(np.float32) / np.sqrt(cfg.dim)
        if positive and t:
            k = min(t, int(rng.integers(cfg.lesion_tiles[0], cfg.lesion_tiles[1] + 1)))
            tiles[rng.choice(t, k, replace=False)] += cfg.tile_signal * direction
        views = rng.standard_normal((cfg.n_views, cfg.dim)).astype(np.float32) / np.sqrt(cfg.dim)
        if positive:
            views += cfg.global_signal * direction
        tiles /= np.maximum(np.linalg.norm(tiles, axis=1, keepdims=True), 1e-12)
        views /= np.linalg.norm(views, axis=1, keepdims=True)
        view_of_tile = np.sort(rng.integers(0, cfg.n_views, t)).astype(np.int32)
        y0 = (np.arange(t) * 224 % 2048).astype(np.int32)
        boxes = np.stack([view_of_tile, y0, np.zeros(t, np.int32), y0 + 224,
                          np.full(t, 224, np.int32)], axis=1).astype(np.int32)
        plan = BagPlan(
            bag_id=f"S{b:05d}",
            patient_id=f"P{b // cfg.bags_per_patient:05d}",
            raw_label="1" if positive else "0",
            view_paths=tuple(f"synthetic/{b:05d}_{v}.dcm" for v in range(cfg.n_views)),
            view_names=tuple(("CC", "MLO", "ML", "LM")[v % 4] for v in range(cfg.n_views)),
            view_flipped=(False,) * cfg.n_views,
            view_shapes=((2048, 1024),) * cfg.n_views,
            tile_boxes=boxes,
        )
        yield plan, views, tiles


def write_synthetic_store(path, cfg: SyntheticConfig = SyntheticConfig()) -> Store:
    """Plan and fill a store at `path` with `synthetic_bags(cfg)`; label_kind is binary."""
    items = list(synthetic_bags(cfg))
    attrs = dict(label_kind="binary", cohort=f"synthetic-{cfg.seed}", encoder="synthetic",
                 model_id="synthetic", synthetic=_config_dict(cfg))
    store = Store.create(path, [p for p, _, _ in items], dim=cfg.dim, attrs=attrs)
    for b, (_, views, tiles) in enumerate(items):
        store.write_bag(b, views, tiles)
    return store


def _config_dict(cfg: SyntheticConfig) -> dict:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def synthetic_packed(cfg: SyntheticConfig, *, split_seed: int = 0,
                     dtype: str = "float32") -> PackedBags:
    """The bags of `write_synthetic_store(path, cfg)` loaded by `load_packed`, without a store.

    Same bags, labels, patient-grouped splits and float16 rounding (the store's disk format),
    then cast to `dtype` ("float32" or "bfloat16"). For machines without zarr and for cohorts
    too big to be worth writing. Tiles [N, D] are packed bag after bag.
    """
    np_dtype = numpy_dtype(dtype)
    threads = 1
    if cfg.block_bags:  # blocks drawn by threads (numpy releases the GIL while it draws)
        starts = range(0, cfg.n_bags, cfg.block_bags)
        threads = max(1, min(len(starts), os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda s: _draw(cfg, s, s + cfg.block_bags), starts))
    else:
        parts = [_draw(cfg, 0, cfg.n_bags)]
    plans, views, tiles, tile_view, boxes = ([x for part in parts for x in part[i]]
                                             for i in range(5))
    del parts
    tile_bag = [np.full(len(t), b, np.int32) for b, t in enumerate(tiles)]
    raw = np.array([p.raw_label for p in plans])
    patients = np.array([p.patient_id for p in plans])
    mapping, table = labels.resolve_mapping(None, "binary")
    splits = labels.make_splits(patients, raw, np.full(len(plans), -1, np.int8), seed=split_seed)
    d = cfg.dim
    return PackedBags(
        tiles=_concatenate_as(tiles, np_dtype, d, threads),
        tile_bag=np.concatenate(tile_bag),
        tile_view=np.concatenate(tile_view).astype(np.int32),
        tile_boxes=np.concatenate(boxes).astype(np.int32).reshape(-1, 4),
        views=np.stack(views).astype(np_dtype),
        views_mask=np.ones((len(plans), cfg.n_views), bool),
        labels=labels.map_labels(raw, table),
        splits=splits,
        bag_ids=np.array([p.bag_id for p in plans]),
        patient_ids=patients,
        exam_ids=np.array([p.exam_id for p in plans]),
        lateralities=np.array([p.laterality for p in plans]),
        raw_labels=raw,
        store_index=np.arange(len(plans), dtype=np.int32),
        info=dict(task="label", mapping=mapping, split_seed=int(split_seed), excluded={}, skipped=0,
                  store=None, synthetic=dataclasses.asdict(cfg)),
    )


def _draw(cfg: SyntheticConfig, start: int, stop: int) -> tuple[list, ...]:
    """Bags [start, stop) of the synthetic cohort: plans, views, tiles (float16, the store's disk
    format: also half the memory of float32 until the one concatenation), tile views, boxes."""
    plans, views, tiles, tile_view, boxes = [], [], [], [], []
    for plan, v, t in synthetic_bags(cfg, start, stop):
        plans.append(plan)
        views.append(v.astype(np.float16))
        tiles.append(t.astype(np.float16))
        tile_view.append(plan.tile_boxes[:, 0])
        boxes.append(plan.tile_boxes[:, 1:])
    return plans, views, tiles, tile_view, boxes


def _concatenate_as(parts: list, dtype, dim: int, threads: int = 1) -> np.ndarray:
    """Concatenate [n_i, dim] arrays into one new array of `dtype`, without a temporary; with
    threads > 1, contiguous runs of parts are copied (and cast) by that many threads."""
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
    out = np.empty((int(offsets[-1]), dim), dtype)

    def copy(run: range) -> None:
        for i in run:
            out[offsets[i]:offsets[i + 1]] = parts[i]

    bounds = np.linspace(0, len(parts), max(1, threads) + 1).astype(int)
    runs = [range(a, b) for a, b in itertools.pairwise(bounds)]
    if len(runs) == 1:
        copy(runs[0])
    else:
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(copy, runs))
    return out

