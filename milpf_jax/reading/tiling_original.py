"""Preset "original": the original MIL-PF code's preprocessing, re-expressed without OpenCV.

The source is nikolaJovisic/mil-pf-core, preprocessing/utils.py (preprocess_single +
tile_single); `plan_original` says what is reproduced exactly and what only approximately.
`milpf_jax.reading.tiling.plan_view` calls it for `TilingConfig(preset="original")`; `cfg`
below is that TilingConfig (its tile size, overlap and tissue threshold).
"""

from __future__ import annotations

import numpy as np

from milpf_jax.reading.geometry import (
    ViewPlan,
    ViewTransform,
    area_resize,
    bbox,
    warn_empty,
)
from milpf_jax.reading.imaging import MammoImage

# Settings fixed inside the original code (mil-pf-core MammoPreprocessingConfig defaults).
ORIGINAL_SIDE = 4096  # every view is padded square and resized to 4096 x 4096
ORIGINAL_OVERLAP = 0.25
ORIGINAL_TILE_GROWTH = 0.1  # tile_increase_tolerance
ORIGINAL_DILATION_FACTOR = 10


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
    return bbox(fg)


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


def _original_tile_boxes(work: np.ndarray, cfg) -> np.ndarray:
    """tile_single + center_crop_or_pad: [T, 4] boxes of the tile_size centre of each tile."""
    rows, cols = work.shape
    mask = _original_breast_mask(work, ORIGINAL_DILATION_FACTOR)
    y_min, x_min, y_max, x_max = bbox(mask)
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


def plan_original(image: MammoImage, cfg) -> tuple[ViewPlan, np.ndarray]:
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
        warn_empty(image)
        boxes = np.zeros((0, 4), np.int32)
    else:
        boxes = _original_tile_boxes(work, cfg)
    return ViewPlan(transform, boxes, transform.to_source(boxes), cfg.tile_size), work

