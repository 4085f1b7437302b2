"""Breast mask, crop, tile grid and tissue selection for one view (paper, section 2).

`plan_view` turns a `MammoImage` (breast already on the left) into the working image the
encoder sees and a `ViewPlan`: tile boxes in working pixels and the same boxes in SOURCE pixels
(what the store keeps), plus the `ViewTransform` between the two. Boxes are int32
[y0, x0, y1, x1], half-open.

Default preset: optionally resample by pixel spacing, mask the breast (Otsu on a smoothed copy,
largest component), crop to the mask's bounding box, lay a grid of encoder-sized tiles spread
evenly so the first and last tiles meet the crop's edges, and keep a tile when its mean exceeds
`tissue_threshold` x the crop's maximum (0.05, as in the original code). The paper uses no
overlap for classification ("we observed no improvement") and 75% only for attention maps
(section 3.2), so overlap is a setting.

Preset "original" reproduces the preprocessing of the original MIL-PF code
(`milpf_jax.reading.tiling_original`); the geometry both share is `milpf_jax.reading.geometry`.

Example:
    plan, work = plan_view(read_image(path), TilingConfig(tile_size=224))
    tiles = cut_tiles(work, plan)      # [T, 224, 224] float32
    whole = global_view(work, 224)     # [224, 224] float32
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from milpf_jax.config import check, check_choices
from milpf_jax.reading.geometry import (
    EmptyViewWarning,
    ViewPlan,
    ViewTransform,
    area_resize,
    bbox,
    box_means,
    breast_mask,
    grid_boxes,
    pad_to_tile,
    tile_grid,
    warn_empty,
)
from milpf_jax.reading.imaging import MammoImage
from milpf_jax.reading.tiling_original import ORIGINAL_OVERLAP, ORIGINAL_SIDE, plan_original

__all__ = [
    "EmptyViewWarning",
    "TilingConfig",
    "ViewPlan",
    "ViewTransform",
    "area_resize",
    "breast_mask",
    "cut_tiles",
    "global_view",
    "original_config",
    "plan_view",
    "tile_grid",
]

Preset = Literal["default", "original"]
PRESETS = get_args(Preset)


@dataclass(frozen=True)
class TilingConfig:
    """How a view becomes tiles. Defaults follow the paper and the original code.

    tile_size: the encoder's input size in pixels; set by the caller from the encoder.
    overlap: minimum overlap of neighbouring tiles, a fraction in [0, 1). The paper uses 0 for
      classification and 0.75 for attention maps (section 3.2).
    tissue_threshold: keep a tile whose mean exceeds this x the crop's maximum (original: 0.05).
    pixel_spacing_mm: resample every view to this pixel spacing first, so a tile covers the same
      tissue on every scanner (a 224-px tile is 45 mm on 200-um film, 16 mm at 70 um);
      None keeps the file's pixels.
    preset: "default", or "original" to reproduce the original code's preprocessing.
    global_size: the encoder's input size for the global (whole-view) image.
    """

    tile_size: int = 224
    overlap: float = 0.0
    tissue_threshold: float = 0.05
    pixel_spacing_mm: float | None = None
    preset: Preset = "default"
    global_size: int = 224

    def __post_init__(self):
        check_choices(self)
        for name in ("tile_size", "global_size"):
            value = getattr(self, name)
            check(self, int(value) == value and value >= 1, name,
                  f"{value!r}; expected an int >= 1")
        check(self, 0.0 <= self.overlap < 1.0, "overlap",
              f"{self.overlap!r}; expected a fraction in [0, 1)")
        check(self, 0.0 <= self.tissue_threshold <= 1.0, "tissue_threshold",
              f"{self.tissue_threshold!r}; expected [0, 1]")
        check(self, self.pixel_spacing_mm is None or self.pixel_spacing_mm > 0, "pixel_spacing_mm",
              f"{self.pixel_spacing_mm!r}; expected > 0 or None")
        check(self, self.preset != "original" or self.pixel_spacing_mm is None,
              ("preset", "pixel_spacing_mm"),
              f"preset 'original' resizes every view to {ORIGINAL_SIDE} px and does not resample "
              f"by spacing; got pixel_spacing_mm={self.pixel_spacing_mm!r}, expected None")


def original_config(tile_size: int = 224, global_size: int | None = None) -> TilingConfig:
    """The original code's settings: 25% overlap, threshold 0.05, global view at tile size."""
    return TilingConfig(
        tile_size=tile_size,
        overlap=ORIGINAL_OVERLAP,
        tissue_threshold=0.05,
        preset="original",
        global_size=tile_size if global_size is None else global_size,
    )


def _spacing_scale(image: MammoImage, cfg: TilingConfig) -> float:
    if cfg.pixel_spacing_mm is None:
        return 1.0
    if image.pixel_spacing_mm is None:
        raise ValueError(
            f"{image.path}: TilingConfig.pixel_spacing_mm={cfg.pixel_spacing_mm} resamples by "
            "pixel spacing, but the image has no (Imager) Pixel Spacing; give one or use None"
        )
    scale = cfg.pixel_spacing_mm / image.pixel_spacing_mm
    return 1.0 if abs(scale - 1.0) < 1e-9 else float(scale)


def _plan_default(image: MammoImage, cfg: TilingConfig) -> tuple[ViewPlan, np.ndarray]:
    scale = _spacing_scale(image, cfg)
    pixels = image.pixels
    if scale != 1.0:
        shape = (max(1, round(pixels.shape[0] / scale)), max(1, round(pixels.shape[1] / scale)))
        pixels = area_resize(pixels, shape, scale)  # [H', W']
    mask = breast_mask(pixels)
    if not mask.any():
        warn_empty(image)
        transform = ViewTransform(image.flipped, image.source_shape, scale, 0, 0)
        empty = np.zeros((0, 4), np.int32)
        return ViewPlan(transform, empty, empty.copy(), cfg.tile_size), pixels
    y0, x0, y1, x1 = bbox(mask)
    crop = pixels[y0:y1, x0:x1]
    work = pad_to_tile(crop, cfg.tile_size)  # [max(h, tile), max(w, tile)]
    boxes = grid_boxes(crop.shape, cfg.tile_size, cfg.overlap)
    peak = float(work.max())
    keep = box_means(work, boxes) > cfg.tissue_threshold * peak
    boxes = boxes[keep]
    transform = ViewTransform(image.flipped, image.source_shape, scale, y0, x0)
    return ViewPlan(transform, boxes, transform.to_source(boxes), cfg.tile_size), work


def plan_view(image: MammoImage, cfg: TilingConfig) -> tuple[ViewPlan, np.ndarray]:
    """Plan the tiles of one view.

    Returns:
      plan: ViewPlan with [T, 4] working and source boxes (T may be 0).
      work: the working image, float32 [h, w]: flipped, resampled, cropped (default preset:
        padded with 0 to at least one tile per axis; original preset: 4096 x 4096). A view
        with an empty breast mask gets zero tiles, an EmptyViewWarning, and the whole image.
    """
    if cfg.preset == "original":
        plan, work = plan_original(image, cfg)
    else:
        plan, work = _plan_default(image, cfg)
    return plan, np.asarray(work, dtype=np.float32)


def cut_tiles(work: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """[T, tile, tile] float32 tiles of `work` at the plan's working boxes."""
    boxes = np.asarray(plan.tile_boxes, np.int64).reshape(-1, 4)
    size = plan.tile_size or (int(boxes[0, 2] - boxes[0, 0]) if len(boxes) else 0)
    if len(boxes) == 0:
        return np.zeros((0, size, size), np.float32)
    tiles = np.stack([work[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])  # [T, tile, tile]
    if tiles.shape[1:] != (size, size):
        raise ValueError(
            f"tiles cut from a {work.shape} image have shape {tiles.shape[1:]}; expected "
            f"({size}, {size}): the plan's boxes do not fit this working image"
        )
    return tiles.astype(np.float32, copy=False)


def global_view(work: np.ndarray, size: int) -> np.ndarray:
    """[size, size] float32: `work` padded bottom/right with 0 to a square, area-averaged."""
    side = max(work.shape)
    if side == 0:
        return np.zeros((size, size), np.float32)
    return area_resize(np.asarray(work, np.float32), (size, size), side / size)

