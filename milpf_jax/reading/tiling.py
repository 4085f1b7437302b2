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
(nikolaJovisic/mil-pf-core, preprocessing/utils.py: preprocess_single + tile_single); see
`_plan_original` for what is reproduced exactly and what only approximately.

Example:
    plan, work = plan_view(read_image(path), TilingConfig(tile_size=224))
    tiles = cut_tiles(work, plan)      # [T, 224, 224] float32
    whole = global_view(work, 224)     # [224, 224] float32
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from milpf_jax.reading.imaging import MammoImage

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

PRESETS = ("default", "original")
# The breast mask is computed on a copy whose longer side is about this many pixels: a mask
# needs no fine detail, and Otsu + labelling on a full 4096 x 3328 image costs seconds.
MASK_SIDE = 512
MASK_SIGMA = 2.0  # Gaussian smoothing, in pixels of that copy
# Settings fixed inside the original code (mil-pf-core MammoPreprocessingConfig defaults).
ORIGINAL_SIDE = 4096  # every view is padded square and resized to 4096 x 4096
ORIGINAL_OVERLAP = 0.25
ORIGINAL_TILE_GROWTH = 0.1  # tile_increase_tolerance
ORIGINAL_DILATION_FACTOR = 10


class EmptyViewWarning(UserWarning):
    """A view whose breast mask is empty (blank image): it gets zero tiles."""


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
    preset: str = "default"
    global_size: int = 224

    def __post_init__(self):
        if int(self.tile_size) != self.tile_size or self.tile_size < 1:
            raise ValueError(f"TilingConfig.tile_size={self.tile_size!r}; expected an int >= 1")
        if int(self.global_size) != self.global_size or self.global_size < 1:
            raise ValueError(f"TilingConfig.global_size={self.global_size!r}; expected an int >= 1")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(
                f"TilingConfig.overlap={self.overlap!r}; expected a fraction in [0, 1)"
            )
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ValueError(
                f"TilingConfig.tissue_threshold={self.tissue_threshold!r}; expected [0, 1]"
            )
        if self.pixel_spacing_mm is not None and not self.pixel_spacing_mm > 0:
            raise ValueError(
                f"TilingConfig.pixel_spacing_mm={self.pixel_spacing_mm!r}; expected > 0 or None"
            )
        if self.preset not in PRESETS:
            raise ValueError(f"TilingConfig.preset={self.preset!r}; expected one of {PRESETS}")
        if self.preset == "original" and self.pixel_spacing_mm is not None:
            raise ValueError(
                "TilingConfig.preset='original' resizes every view to "
                f"{ORIGINAL_SIDE} px and does not resample by spacing; "
                f"got pixel_spacing_mm={self.pixel_spacing_mm!r}, expected None"
            )


def original_config(tile_size: int = 224, global_size: int | None = None) -> TilingConfig:
    """The original code's settings: 25% overlap, threshold 0.05, global view at tile size."""
    return TilingConfig(
        tile_size=tile_size,
        overlap=ORIGINAL_OVERLAP,
        tissue_threshold=0.05,
        preset="original",
        global_size=tile_size if global_size is None else global_size,
    )


def _as_boxes(boxes) -> np.ndarray:
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
        b = _as_boxes(boxes_yxyx)
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
        b = _as_boxes(boxes_yxyx)
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


def _grid_boxes(shape: tuple[int, int], tile: int, overlap: float) -> np.ndarray:
    ys = tile_grid(shape[0], tile, overlap)
    xs = tile_grid(shape[1], tile, overlap)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = y0.ravel(), x0.ravel()
    return np.stack([y0, x0, y0 + tile, x0 + tile], axis=1).astype(np.int32)  # [T, 4]


def _box_means(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
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


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _pad_to_tile(crop: np.ndarray, tile: int) -> np.ndarray:
    """Pad bottom/right with 0 (background) so every axis is at least one tile long."""
    pad_y, pad_x = max(0, tile - crop.shape[0]), max(0, tile - crop.shape[1])
    if pad_y == 0 and pad_x == 0:
        return crop
    return np.pad(crop, ((0, pad_y), (0, pad_x)))


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


def _warn_empty(image: MammoImage) -> None:
    warnings.warn(
        f"{image.path}: breast mask is empty (blank image?); the view gets zero tiles",
        EmptyViewWarning,
        stacklevel=3,
    )


def _plan_default(image: MammoImage, cfg: TilingConfig) -> tuple[ViewPlan, np.ndarray]:
    scale = _spacing_scale(image, cfg)
    pixels = image.pixels
    if scale != 1.0:
        shape = (max(1, round(pixels.shape[0] / scale)), max(1, round(pixels.shape[1] / scale)))
        pixels = area_resize(pixels, shape, scale)  # [H', W']
    mask = breast_mask(pixels)
    if not mask.any():
        _warn_empty(image)
        transform = ViewTransform(image.flipped, image.source_shape, scale, 0, 0)
        empty = np.zeros((0, 4), np.int32)
        return ViewPlan(transform, empty, empty.copy(), cfg.tile_size), pixels
    y0, x0, y1, x1 = _bbox(mask)
    crop = pixels[y0:y1, x0:x1]
    work = _pad_to_tile(crop, cfg.tile_size)  # [max(h, tile), max(w, tile)]
    boxes = _grid_boxes(crop.shape, cfg.tile_size, cfg.overlap)
    peak = float(work.max())
    keep = _box_means(work, boxes) > cfg.tissue_threshold * peak
    boxes = boxes[keep]
    transform = ViewTransform(image.flipped, image.source_shape, scale, y0, x0)
    return ViewPlan(transform, boxes, transform.to_source(boxes), cfg.tile_size), work


# --- preset "original": mil-pf-core preprocessing/utils.py, re-expressed without OpenCV ---


def _odd(n: int) -> int:
    return n + 1 if n % 2 == 0 else n


def _kernel_extent(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """(rows, cols) extent of the original's kernels.

    Its `_create_kernel` returns (h // f, w // f) and OpenCV reads a size as (width, height),
    so the kernel's width comes from the image's height and vice versa; kept as it was.
    """
    h, w = shape
    return _odd(max(1, w // factor)), _odd(max(1, h // factor))


def _scale_to_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return (255.0 * (img - lo) / (hi - lo)).astype(np.uint8)


def _cv2_gaussian_kernel(size: int) -> np.ndarray:
    """OpenCV's getGaussianKernel(size, sigma=0): its fixed tables up to 7, else sampled."""
    tables = {
        1: [1.0],
        3: [0.25, 0.5, 0.25],
        5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
        7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
    }
    if size in tables:
        return np.asarray(tables[size])
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _original_breast_mask(image: np.ndarray, dilation_factor: int) -> np.ndarray:
    """get_breast_mask: blur, Otsu, erode, dilate, largest blob filled (all ones if none)."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    u8 = _scale_to_uint8(image)
    ky, kx = _kernel_extent(u8.shape, 100)
    # OpenCV's default border is BORDER_REFLECT_101, scipy's "mirror".
    blurred = ndimage.correlate1d(u8.astype(np.float32), _cv2_gaussian_kernel(ky), 0, mode="mirror")
    blurred = ndimage.correlate1d(blurred, _cv2_gaussian_kernel(kx), 1, mode="mirror")
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    fg = (blurred > threshold_otsu(blurred)).astype(np.uint8)
    # OpenCV erodes/dilates with the border ignored, the same as replicating the edge.
    fg = ndimage.minimum_filter(fg, size=_kernel_extent(fg.shape, 500), mode="nearest")
    fg = ndimage.maximum_filter(fg, size=_kernel_extent(fg.shape, dilation_factor), mode="nearest")
    labels = label(fg, connectivity=2)
    if labels.max() == 0:
        return np.ones(image.shape, bool)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(counts)))


def _original_negate_if_should(image: np.ndarray) -> np.ndarray:
    """Invert when the most common of 20 intensity bins lies in the upper half."""
    hist, _ = np.histogram(image.ravel(), bins=20, range=[image.min(), image.max()])
    return image if int(np.argmax(hist)) < 10 else image.max() - image


def _original_should_flip(image: np.ndarray) -> bool:
    col_sum = image.sum(axis=0)
    half = image.shape[1] // 2
    return bool(col_sum[:half].sum() < col_sum[half:].sum())


def _original_otsu_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """otsu_cut: bounding box of the pixels above Otsu's threshold (whole image if none)."""
    from skimage.filters import threshold_otsu

    u8 = _scale_to_uint8(image)
    fg = u8 > threshold_otsu(u8)
    if not fg.any():
        return 0, 0, image.shape[0], image.shape[1]
    return _bbox(fg)


def _original_tile_span(base: int, region: int, overlap: float) -> int:
    """tile_single's search over tile sizes up to (1 + tolerance) x base.

    Its test (floor of the stride >= 0) always passes, so it returns the largest size,
    int(1.1 x base); the loop is kept as written so the preset follows the code, not a reading
    of it.
    """
    best = base
    for factor in np.linspace(1.0, 1.0 + ORIGINAL_TILE_GROWTH, 10):
        size = int(base * factor)
        n = max(1, int(np.ceil((region - size * overlap) / (size * (1 - overlap)))))
        stride = (region - size) / max(1, n - 1) if n > 1 else 0
        if int(np.floor(stride)) >= 0:
            best = size
    return best


def _original_starts(lo: int, region: int, length: int, size: int, overlap: float) -> list[int]:
    n = max(1, int(np.ceil((region - size * overlap) / (size * (1 - overlap)))))
    stride = int(np.floor((region - size) / max(1, n - 1))) if n > 1 else 0
    # A tile running off the image is pulled back inside.
    return [min(lo + i * stride, length - size) for i in range(n)]


def _original_tile_boxes(work: np.ndarray, cfg: TilingConfig) -> np.ndarray:
    """tile_single + center_crop_or_pad: [T, 4] boxes of the tile_size centre of each tile."""
    rows, cols = work.shape
    mask = _original_breast_mask(work, ORIGINAL_DILATION_FACTOR)
    y_min, x_min, y_max, x_max = _bbox(mask)
    region_h, region_w = y_max - y_min, x_max - x_min
    size_h = _original_tile_span(cfg.tile_size, region_h, cfg.overlap)
    size_w = _original_tile_span(cfg.tile_size, region_w, cfg.overlap)
    peak = float(work.max())
    # The encoder sees the centre tile_size x tile_size of each enlarged tile.
    off_y, off_x = (size_h - cfg.tile_size) // 2, (size_w - cfg.tile_size) // 2
    boxes = []
    for y in _original_starts(y_min, region_h, rows, size_h, cfg.overlap):
        for x in _original_starts(x_min, region_w, cols, size_w, cfg.overlap):
            # Selection uses the whole enlarged tile, as the original does.
            if work[y : y + size_h, x : x + size_w].mean() > cfg.tissue_threshold * peak:
                y0, x0 = y + off_y, x + off_x
                boxes.append((y0, x0, y0 + cfg.tile_size, x0 + cfg.tile_size))
    return np.asarray(boxes, np.int32).reshape(-1, 4)


def _plan_original(image: MammoImage, cfg: TilingConfig) -> tuple[ViewPlan, np.ndarray]:
    """The original code's preprocess_single, then tile_single, with boxes tracked.

    Reproduced step for step (mil-pf-core preprocessing/utils.py): invert when the histogram's
    mode is bright; mirror when the right half's column sums are larger; zero everything outside
    the breast mask (uint8 Gaussian blur with kernels of image size / 100, Otsu, erosion / 500,
    dilation / 10, largest blob filled); crop to the Otsu bounding box; pad bottom/right to a
    square; resize to 4096 x 4096 by area averaging; min-max normalise; tiles of int(1.1 x
    tile_size) spread over the mask's bounding box of that image, kept when their mean exceeds
    threshold x max, each centre-cropped to tile_size.

    Known differences, all from running without OpenCV and from our reader: the input is the
    reader's float [0, 1] image (MONOCHROME1 and VOI already applied, breast already mirrored
    left by the reader's own test; the original's flip test runs again on top); no
    intermediate rounding to the input's integer dtype; the blur is float then rounded, where
    OpenCV's 8-bit blur is fixed-point (a level may differ by 1); the largest blob is counted in
    pixels where OpenCV uses the contour's polygon area; a blank view gets zero tiles and a
    warning, where the original kept every tile of it.

    Checked against the original functions run with OpenCV 5.0 on the same float input (five
    mini-MIAS views at tile 224, a mirrored 1024 x 700 and a 600 x 1024 crop at tile 518): the
    same flip decisions and identical tile boxes; working images equal to 2e-7 except along mask
    edges, where blur rounding moved at most 13 of about a million mask pixels.
    """
    img = _original_negate_if_should(image.pixels.astype(np.float32))
    extra_flip = _original_should_flip(img)
    if extra_flip:
        img = img[:, ::-1]
    img = img * _original_breast_mask(img, ORIGINAL_DILATION_FACTOR)
    y0, x0, y1, x1 = _original_otsu_box(img)
    crop = img[y0:y1, x0:x1]
    scale = max(crop.shape) / ORIGINAL_SIDE  # pad_to_aspect_ratio(1.0) then resize
    work = area_resize(crop, (ORIGINAL_SIDE, ORIGINAL_SIDE), scale)
    lo, hi = float(work.min()), float(work.max())
    work = (work - lo) / (hi - lo) if hi > lo else np.zeros_like(work)
    transform = ViewTransform(
        flipped=image.flipped != extra_flip,
        source_shape=image.source_shape,
        scale=scale,
        crop_y0=y0 / scale,
        crop_x0=x0 / scale,
    )
    if not image.pixels.max() > 0:
        _warn_empty(image)
        boxes = np.zeros((0, 4), np.int32)
    else:
        boxes = _original_tile_boxes(work, cfg)
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
        plan, work = _plan_original(image, cfg)
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
