"""Synthetic embeddings stores with a planted signal, for tests and benchmarks.

A few "lesion" tiles in each positive bag share one direction; negative bags have none. Tiles
are otherwise isotropic noise, so mean pooling dilutes the signal with the bag's many
background tiles while attention can pick the lesion tiles out (paper, section 2: "Mean pooling
fails, as the signal from a few important tiles is suppressed"). The global views carry a weaker
copy of the signal, as a whole-view embedding of a small lesion would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
