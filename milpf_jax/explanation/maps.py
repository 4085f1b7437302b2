"""Attention maps and lesion boxes from tile attention: pure functions of boxes and weights.

  attention map   per view, in the SOURCE image's pixel frame (the file's rows and columns, not
                  the reader's mirrored copy): each pixel is the MEAN attention weight of the tiles
                  covering it (0 where no tile does). With overlapping tiles the mean is a smooth
                  map whose level does not depend on how many tiles happen to cover a pixel.
  predicted boxes connected components (8-connected) of map >= `threshold` x the bag's peak
                  (over all its views); each box is its component's bounding box, scored
                  probability x component peak / bag peak, so the bag's strongest region scores
                  the bag's probability and boxes rank across bags by how sure the head is.
"""

from __future__ import annotations

import numpy as np

BOX_THRESHOLD = 0.5  # a component is the region within half of the bag's peak attention


def attention_map(shape, boxes, weights) -> np.ndarray:
    """[H, W] float32: each pixel the mean weight of the boxes covering it, 0 where none does.

    Args:
      shape: (H, W) of the source image.
      boxes: [T, 4] half-open (y0, x0, y1, x1) in the same pixels; clipped to the image.
      weights: [T] one value per box (a tile's attention weight).

    Summed-area bookkeeping (+w at two corners, -w at the other two, then cumulative sums) makes
    it O(H W + T) however many tiles overlap.
    """
    rows, cols = int(shape[0]), int(shape[1])
    b = np.asarray(boxes, np.int64).reshape(-1, 4)
    w = np.asarray(weights, np.float64).reshape(-1)
    if len(b) != len(w):
        raise ValueError(f"attention_map: {len(b)} boxes but {len(w)} weights")
    b = np.clip(b, 0, [rows, cols, rows, cols])
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b, w = b[keep], w[keep]
    total = np.zeros((rows + 1, cols + 1), np.float64)
    count = np.zeros((rows + 1, cols + 1), np.float64)
    y0, x0, y1, x1 = b.T
    for grid, value in ((total, w), (count, np.ones_like(w))):
        np.add.at(grid, (y0, x0), value)
        np.add.at(grid, (y0, x1), -value)
        np.add.at(grid, (y1, x0), -value)
        np.add.at(grid, (y1, x1), value)
    total = total.cumsum(0).cumsum(1)[:rows, :cols]
    count = np.rint(count.cumsum(0).cumsum(1)[:rows, :cols])
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def box_means(pixels, boxes) -> np.ndarray:
    """[T] float64: the mean of `pixels` [H, W] over each half-open box [T, 4] (clipped to the
    image; 0 for a box that lies outside it), from one summed-area table."""
    p = np.asarray(pixels, np.float64)
    rows, cols = p.shape
    b = np.clip(np.asarray(boxes, np.int64).reshape(-1, 4), 0, [rows, cols, rows, cols])
    table = np.zeros((rows + 1, cols + 1))
    table[1:, 1:] = p.cumsum(0).cumsum(1)
    y0, x0, y1, x1 = b.T
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = (y1 - y0) * (x1 - x0)
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)


def boxes_from_map(
    attention, *, threshold: float = BOX_THRESHOLD, reference: float | None = None,
    probability: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Boxes around the high-attention regions of one map, with scores, best first.

    A region is an 8-connected component of `attention >= threshold * reference`; its box is
    the component's bounding box (half-open source pixels) and its score is
    `probability * component peak / reference`.

    Args:
      attention: [H, W] map (`attention_map`).
      threshold: fraction of `reference` a pixel must reach.
      reference: the peak the threshold and scores are relative to; pass the bag's peak over
        all its views so a view with only weak attention yields no box. Default: this map's max.
      probability: the bag's malignancy probability.

    Returns:
      boxes [K, 4] int32 and scores [K] float64, sorted by score (K = 0 for an all-zero map).
    """
    from scipy import ndimage

    a = np.asarray(attention, np.float64)
    peak = float(a.max(initial=0.0)) if reference is None else float(reference)
    if not peak > 0:
        return np.zeros((0, 4), np.int32), np.zeros(0)
    labels, n = ndimage.label((a >= threshold * peak) & (a > 0), structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros((0, 4), np.int32), np.zeros(0)
    slices = ndimage.find_objects(labels)  # [n] (row slice, col slice)
    boxes = np.array([[r.start, c.start, r.stop, c.stop] for r, c in slices], np.int32)
    peaks = np.asarray(ndimage.maximum(a, labels, np.arange(1, n + 1)), np.float64)  # [n]
    scores = probability * peaks / peak
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]

