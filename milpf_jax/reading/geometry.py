"""The geometry of a tiled view: working and source pixels, tile grids, resampling, masks.

Shared by both presets (`tiling`, `tiling_original`). A view is tiled in WORKING pixels (the
reader's breast-left image, resampled and cropped); every box is also kept in SOURCE pixels
(the file's own rows and columns), where stores, maps and ground truth live. Boxes are int32
[y0, x0, y1, x1], half-open.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from milpf_jax.reading.imaging import MammoImage

# The breast mask is computed on a copy whose longer side is about this many pixels: a mask
# needs no fine detail, and Otsu + labelling on a full 4096 x 3328 image costs seconds.
MASK_SIDE = 512
MASK_SIGMA = 2.0  # Gaussian smoothing, in pixels of that copy


class EmptyViewWarning(UserWarning):
    """A view whose breast mask is empty (blank image): it gets zero tiles."""


def as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes)
    if b.size == 0:
        return np.zeros((0, 4), np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes have shape {b.shape}; expected [T, 4] (y0, x0, y1, x1)")
    return b.astype(np.float64)


@dataclass(frozen=True)
class ViewTransform:
    """Working pixels -> source pixels: source = unflip((working + crop) * scale).

    flipped: the reader mirrored the file (the breast was on the right).
    source_shape: (rows, cols) of the file's pixel array.
    scale: source pixels per working pixel (> 1 when resampled to a coarser spacing).
    crop_y0, crop_x0: the crop's offset in the flipped, resampled image, in working pixels.
      Whole numbers for the default preset; the original preset crops before it resizes, so
      there the offset is source pixels / scale and may be fractional.
    """

    flipped: bool
    source_shape: tuple[int, int]
    scale: float
    crop_y0: float
    crop_x0: float

    def to_source(self, boxes_yxyx) -> np.ndarray:
        """[T, 4] working boxes -> [T, 4] int32 half-open source boxes, clipped to the image."""
        b = as_boxes(boxes_yxyx)
        rows, cols = self.source_shape
        y0 = (b[:, 0] + self.crop_y0) * self.scale
        y1 = (b[:, 2] + self.crop_y0) * self.scale
        x0 = (b[:, 1] + self.crop_x0) * self.scale
        x1 = (b[:, 3] + self.crop_x0) * self.scale
        if self.flipped:  # half-open [x0, x1) mirrors to [cols - x1, cols - x0)
            x0, x1 = cols - x1, cols - x0
        out = np.rint(np.stack([y0, x0, y1, x1], axis=1))  # [T, 4]
        out[:, 0::2] = np.clip(out[:, 0::2], 0, rows)
        out[:, 1::2] = np.clip(out[:, 1::2], 0, cols)
        return out.astype(np.int32)

    def to_working(self, boxes_yxyx) -> np.ndarray:
        """[T, 4] source boxes -> [T, 4] int32 working boxes (the inverse, not clipped)."""
        b = as_boxes(boxes_yxyx)
        cols = self.source_shape[1]
        x0, x1 = (cols - b[:, 3], cols - b[:, 1]) if self.flipped else (b[:, 1], b[:, 3])
        out = np.stack(
            [
                b[:, 0] / self.scale - self.crop_y0,
                x0 / self.scale - self.crop_x0,
                b[:, 2] / self.scale - self.crop_y0,
                x1 / self.scale - self.crop_x0,
            ],
            axis=1,
        )  # [T, 4]
        return np.rint(out).astype(np.int32)


@dataclass(frozen=True, eq=False)
class ViewPlan:
    """The tiles of one view.

    tile_boxes: [T, 4] int32 y0, x0, y1, x1 half-open, in WORKING (crop) pixels.
    source_boxes: [T, 4] int32, the same tiles in SOURCE pixels, clipped to the image.
    tile_size: edge of every tile in working pixels.
    """

    transform: ViewTransform
    tile_boxes: np.ndarray
    source_boxes: np.ndarray
    tile_size: int | None = None

    @property
    def n_tiles(self) -> int:
        return int(self.tile_boxes.shape[0])


def tile_grid(length: int, tile: int, overlap: float) -> np.ndarray:
    """Start offsets [n] int32 of tiles along one axis of `length` pixels.

    The first tile starts at 0 and the last ends at `length`; starts are spread evenly, so
    neighbours overlap by at least `overlap` x tile and by no more than covering the length
    needs. A length up to one tile gets one tile at 0 (the caller pads).
    """
    if int(tile) != tile or tile < 1:
        raise ValueError(f"tile={tile!r}; expected an int >= 1")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap!r}; expected a fraction in [0, 1)")
    if length < 0:
        raise ValueError(f"length={length!r}; expected >= 0")
    if length <= tile:
        return np.zeros(1, np.int32)
    max_step = tile * (1.0 - overlap)
    # The 1e-9 keeps an exact multiple (e.g. 448 / 224) from rounding up to one tile more.
    n = int(np.ceil((length - tile) / max_step - 1e-9)) + 1
    return np.rint(np.linspace(0, length - tile, n)).astype(np.int32)


def grid_boxes(shape: tuple[int, int], tile: int, overlap: float) -> np.ndarray:
    ys = tile_grid(shape[0], tile, overlap)
    xs = tile_grid(shape[1], tile, overlap)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = y0.ravel(), x0.ravel()
    return np.stack([y0, x0, y0 + tile, x0 + tile], axis=1).astype(np.int32)  # [T, 4]


def box_means(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of `image` inside each box [T, 4], by a summed-area table (float64)."""
    table = np.zeros((image.shape[0] + 1, image.shape[1] + 1), np.float64)
    table[1:, 1:] = image.astype(np.float64).cumsum(0).cumsum(1)
    y0, x0, y1, x1 = boxes.T
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return sums / ((y1 - y0) * (x1 - x0))


def _area_weights(n_out: int, n_in: int, scale: float):
    """Sparse [n_out, n_in] area-averaging weights at an exact `scale` (input px per output px).

    Output cell i covers input [i * scale, (i + 1) * scale); each input pixel weighs its overlap
    / scale. Input past n_in counts as 0, i.e. background padding. For enlargement this is the
    same piecewise rule as OpenCV's INTER_AREA.
    """
    from scipy.sparse import csr_matrix

    lo = np.arange(n_out, dtype=np.float64) * scale
    hi = lo + scale
    span = int(np.ceil(scale)) + 1
    cols = np.floor(lo).astype(np.int64)[:, None] + np.arange(span)[None, :]  # [n_out, span]
    overlap = np.minimum(hi[:, None], cols + 1) - np.maximum(lo[:, None], cols)
    keep = (overlap > 1e-12) & (cols < n_in)
    rows = np.broadcast_to(np.arange(n_out)[:, None], cols.shape)
    return csr_matrix((overlap[keep] / scale, (rows[keep], cols[keep])), shape=(n_out, n_in))


def area_resize(image: np.ndarray, out_shape: tuple[int, int], scale: float) -> np.ndarray:
    """Resample [H, W] to `out_shape` by area averaging, `scale` input px per output px.

    Output pixel (i, j) averages input [i*s, (i+1)*s) x [j*s, (j+1)*s) exactly, so boxes map by
    multiplying with `scale`; anything past the input's bottom/right edge is 0.
    """
    a = _area_weights(int(out_shape[0]), image.shape[0], scale)  # [oh, H]
    b = _area_weights(int(out_shape[1]), image.shape[1], scale)  # [ow, W]
    rows_done = (b @ image.astype(np.float64).T).T  # [H, ow]
    return np.asarray(a @ rows_done, dtype=np.float32)  # [oh, ow]


def breast_mask(pixels: np.ndarray) -> np.ndarray:
    """[H, W] bool: the largest bright region of a smoothed copy, holes filled.

    Otsu's threshold on a block-averaged, Gaussian-smoothed copy separates breast from film or
    detector background; keeping the largest 8-connected component drops labels and markers.
    A blank image gives an empty mask; a uniform non-blank one is all breast.
    """
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label
    from skimage.transform import downscale_local_mean

    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"pixels have shape {img.shape}; expected [H, W]")
    rows, cols = img.shape
    if img.size == 0 or not img.max() > 0:
        return np.zeros(img.shape, bool)
    factor = max(1, int(np.ceil(max(rows, cols) / MASK_SIDE)))
    small = downscale_local_mean(img, (factor, factor)) if factor > 1 else img  # [h, w]
    smooth = gaussian(small, sigma=MASK_SIGMA, preserve_range=True)
    if smooth.max() - smooth.min() < 1e-6:
        return np.ones(img.shape, bool)
    labels = label(smooth > threshold_otsu(smooth), connectivity=2)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    region = ndimage.binary_fill_holes(labels == int(np.argmax(counts)))  # [h, w]
    # Back to full size: full pixel (r, c) belongs to block (r // factor, c // factor).
    return region[np.arange(rows) // factor][:, np.arange(cols) // factor]


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def pad_to_tile(crop: np.ndarray, tile: int) -> np.ndarray:
    """Pad bottom/right with 0 (background) so every axis is at least one tile long."""
    pad_y, pad_x = max(0, tile - crop.shape[0]), max(0, tile - crop.shape[1])
    if pad_y == 0 and pad_x == 0:
        return crop
    return np.pad(crop, ((0, pad_y), (0, pad_x)))


def warn_empty(image: MammoImage) -> None:
    warnings.warn(
        f"{image.path}: breast mask is empty (blank image?); the view gets zero tiles",
        EmptyViewWarning,
        stacklevel=3,
    )

