"""Detection metrics for attention boxes (pure functions; milpf_jax.explanation makes the boxes).

  detection       AP at IoU >= 0.25 (paper, section 3.2), all-point interpolated (VOC 2010+:
                  the area under the precision envelope, no 11- or 101-point sampling), over all
                  evaluated views. Detections are class-agnostic; matching is greedy by score,
                  each truth matched once, so a duplicate box on a found lesion is a false
                  positive, and every box in a view without ground truth is a false positive.
                  Per lesion kind and per size bucket, truths of other groups are ignored (a box
                  on them counts neither way, as COCO does for area ranges); for size buckets an
                  unmatched box counts only in its own bucket.
  FROC            in the LUNA16 convention (Setio et al., 2017): a box is a hit at IoU >= 0.25
                  (as for AP), a second box on a lesion already found is ignored (neither hit
                  nor false positive), false positives are counted per image over every
                  evaluated view (negatives included); sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and
                  8 false positives per image and their mean (LUNA16's CPM). Each rate reads
                  the highest sensitivity of an operating point (all boxes scoring >= a
                  threshold) with at most that many false positives per image: a step curve,
                  no interpolation between operating points.
  localisation    per bag with ground truth, whether the bag's attention peak (the centre of
                  the top cell of its maps) lies inside a lesion box, or within half a tile of
                  one: a "pointing game" that, unlike AP, does not depend on box sizes.
  size buckets    by the longer side of the ground-truth box in millimetres (pixel spacing from
                  the DICOM): small < 10 mm, medium 10-20 mm, large >= 20 mm (the T1a-b / T1c /
                  T2+ cut points of breast-tumour staging). The paper takes its buckets from
                  Mourao et al. without restating them; these are ours. A view without a pixel
                  spacing falls in no bucket unless a default spacing is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

IOU_THRESHOLD = 0.25  # paper, section 3.2
SIZE_EDGES_MM = (10.0, 20.0)  # small < 10 mm <= medium < 20 mm <= large (longer box side)
SIZE_NAMES = ("small", "medium", "large")
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # false positives per image (LUNA16)
IOU_TOLERANCE = 1e-9  # IoU >= threshold - this, so an IoU of exactly 0.25 is not lost to rounding


class Detection(NamedTuple):
    """A predicted box: image (view name), (y0, x0, y1, x1) half-open source pixels, score."""

    image: str
    box: tuple
    score: float


class Truth(NamedTuple):
    """A ground-truth box: image (view name), (y0, x0, y1, x1) half-open source pixels, kind."""

    image: str
    box: tuple
    kind: str = "lesion"


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a, b) -> np.ndarray:
    """[N, M] intersection over union of half-open boxes a [N, 4] and b [M, 4]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None]  # [N, 1, 4]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None]  # [1, M, 4]
    h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = h * w
    union = _area(a) + _area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# --- detection metrics (pure) ----------------------------------------------------------------


def _match(detections, truths, iou_threshold, truth_ignored, unmatched_ignored,
           duplicates_ignored=False):
    """Greedy matching by descending score. Returns (scores [N], outcome [N]) in score order:
    outcome 1 true positive, 0 false positive, -1 ignored. duplicates_ignored: a box that hits
    only lesions already found is ignored (FROC) rather than a false positive (AP)."""
    dets = [Detection(*d) for d in detections]
    gts = [Truth(*t) for t in truths]
    ignored = np.zeros(len(gts), bool) if truth_ignored is None else np.asarray(truth_ignored)
    skip = np.zeros(len(dets), bool) if unmatched_ignored is None else np.asarray(unmatched_ignored)
    by_image: dict[str, list[int]] = {}
    for g, t in enumerate(gts):
        by_image.setdefault(t.image, []).append(g)
    order = sorted(range(len(dets)), key=lambda i: -float(dets[i].score))  # stable for ties
    matched = np.zeros(len(gts), bool)
    outcome = np.zeros(len(dets), np.int8)
    for rank, i in enumerate(order):
        cands = [g for g in by_image.get(dets[i].image, []) if not matched[g]]
        ious = box_iou([dets[i].box], [gts[g].box for g in cands])[0] if cands else []
        # Prefer a truth that counts over an ignored one, then the larger IoU (COCO's rule).
        best = max(
            ((not ignored[g], iou, g) for g, iou in zip(cands, ious)
             if iou >= iou_threshold - IOU_TOLERANCE),
            default=None,
        )  # fmt: skip
        if best is None and duplicates_ignored:
            found = [g for g in by_image.get(dets[i].image, []) if matched[g]]
            ious = box_iou([dets[i].box], [gts[g].box for g in found])[0] if found else []
            if any(iou >= iou_threshold - IOU_TOLERANCE for iou in ious):
                outcome[rank] = -1
                continue
        if best is None:
            outcome[rank] = -1 if skip[i] else 0
        else:
            matched[best[2]] = True
            outcome[rank] = -1 if ignored[best[2]] else 1
    scores = np.array([float(dets[i].score) for i in order])
    return scores, outcome


def _interpolated_ap(hits: np.ndarray, n_truths: int) -> float:
    """All-point interpolated AP from hits [N] (True = TP) in score order; NaN without truths."""
    if n_truths == 0:
        return float("nan")
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    recall = np.concatenate([[0.0], tp / n_truths, [1.0]])
    precision = np.concatenate([[0.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    step = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[step + 1] - recall[step]) * precision[step + 1]))


def evaluate_detections(
    detections: Sequence, truths: Sequence, *, iou_threshold: float = IOU_THRESHOLD,
    truth_ignored=None, unmatched_ignored=None,
) -> dict:  # fmt: skip
    """AP and counts of one group: {"ap" (None without truths), "truths", "detections", "tp"}.

    detections: (image, box, score) triples; truths: (image, box[, kind]). truth_ignored [G]
    marks truths outside the group (a box matching one is ignored); unmatched_ignored [N] marks
    boxes outside the group that count only when they match a truth of it.
    """
    _, outcome = _match(detections, truths, iou_threshold, truth_ignored, unmatched_ignored)
    n_truths = len(truths) - (0 if truth_ignored is None else int(np.sum(truth_ignored)))
    hits = outcome[outcome >= 0] == 1
    ap = _interpolated_ap(hits, n_truths)
    return {"ap": None if np.isnan(ap) else ap, "truths": int(n_truths),
            "detections": len(hits), "tp": int(hits.sum())}


def average_precision(
    detections: Sequence, truths: Sequence, *, iou_threshold: float = IOU_THRESHOLD,
    truth_ignored=None, unmatched_ignored=None,
) -> float:  # fmt: skip
    """AP at IoU >= iou_threshold, all-point interpolated, over a set of images.

    Args:
      detections: (image, (y0, x0, y1, x1), score) for every predicted box of every image
        evaluated; a box in an image without truths is a false positive.
      truths: (image, (y0, x0, y1, x1)[, kind]) ground-truth boxes.
      truth_ignored / unmatched_ignored: see `evaluate_detections`.

    Returns:
      AP in [0, 1]; NaN when there is no (counted) truth; 0 when there are truths and no boxes.

    Example:
      >>> average_precision([("a", (0, 0, 10, 10), 0.9)], [("a", (0, 0, 10, 10))])
      1.0
    """
    out = evaluate_detections(detections, truths, iou_threshold=iou_threshold,
                              truth_ignored=truth_ignored, unmatched_ignored=unmatched_ignored)
    return float("nan") if out["ap"] is None else out["ap"]


def froc_curve(
    detections: Sequence, truths: Sequence, n_images: int, *,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The FROC operating points (LUNA16 convention; see the module docstring).

    Args:
      detections: (image, box, score) for every box of every evaluated image.
      truths: (image, box[, kind]) ground-truth boxes of those images.
      n_images: how many images were evaluated, those without boxes or truths included.

    Returns:
      (fp_per_image [K], sensitivity [K], threshold [K]): one point per distinct score, from
      the highest threshold down, after a first point (0, 0, inf) where no box is kept. Boxes of
      equal score enter together (no threshold separates them).
    """
    if n_images < 1:
        raise ValueError(f"froc_curve: n_images={n_images}; expected >= 1")
    scores, outcome = _match(detections, truths, iou_threshold, None, None,
                             duplicates_ignored=True)
    if len(scores) == 0:
        return np.zeros(1), np.zeros(1), np.full(1, np.inf)
    tp = np.cumsum(outcome == 1)  # [N]
    fp = np.cumsum(outcome == 0)
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # end of each tie group
    n_truths = max(len(truths), 1)
    return (np.concatenate([[0.0], fp[last] / n_images]),
            np.concatenate([[0.0], tp[last] / n_truths]),
            np.concatenate([[np.inf], scores[last]]))  # fmt: skip


def froc(
    detections: Sequence, truths: Sequence, n_images: int, *,
    iou_threshold: float = IOU_THRESHOLD, rates=FROC_RATES,
) -> dict:  # fmt: skip
    """Sensitivity at each false-positive rate per image, and their mean (LUNA16's CPM).

    Returns {"rates": [R] false positives per image, "sensitivity": [R], "mean_sensitivity",
    "truths", "images", "curve": {"fp_per_image", "sensitivity"}} (plain JSON; sensitivities
    None without truths). At each rate: the highest sensitivity of an operating point with at
    most that many false positives per image (a step curve, no interpolation).

    Example:
      >>> froc([("a", (0, 0, 10, 10), 0.9)], [("a", (0, 0, 10, 10))], 2)["mean_sensitivity"]
      1.0
    """
    fpi, sens, _ = froc_curve(detections, truths, n_images, iou_threshold=iou_threshold)
    # fpi and sens never decrease, so the best point within a rate is the last one within it.
    at = [float(sens[np.searchsorted(fpi, r + IOU_TOLERANCE, side="right") - 1]) for r in rates]
    some = len(truths) > 0
    return {
        "rates": [float(r) for r in rates],
        "sensitivity": at if some else [None] * len(rates),
        "mean_sensitivity": float(np.mean(at)) if some else None,
        "truths": len(truths), "images": int(n_images),
        "curve": {"fp_per_image": [round(float(x), 6) for x in fpi],
                  "sensitivity": [round(float(x), 6) for x in sens]},
    }  # fmt: skip


def peak_point(attention) -> tuple[float, float]:
    """(row, col) of a map's peak: the centre of its top plateau. A map of overlapping tiles is
    flat over each cell of the tile grid, where argmax alone would give the cell's corner."""
    a = np.asarray(attention)
    rows, cols = np.nonzero(a >= a.max(initial=0.0))
    return float(rows.mean()), float(cols.mean())


def point_to_box(point, box) -> float:
    """Euclidean distance in pixels from (row, col) to a half-open box; 0 inside it."""
    y, x = point
    y0, x0, y1, x1 = box
    return float(np.hypot(max(y0 - y, 0.0, y - (y1 - 1)), max(x0 - x, 0.0, x - (x1 - 1))))


def localisation(bags: Sequence[tuple[float, float]]) -> dict:
    """How often a bag's attention peak lands on a lesion ("pointing game").

    bags: per bag with ground truth, (distance from the bag's peak, over its views, to the
    nearest lesion box in the peak's view (inf when that view has none), tile side in pixels).
    Returns {"bags", "peak_inside", "peak_within_half_tile"}: counts of bags.
    """
    gaps = np.array([g for g, _ in bags], np.float64)
    half_tile = np.array([t / 2 for _, t in bags], np.float64)
    return {"bags": len(bags), "peak_inside": int(np.sum(gaps == 0)),
            "peak_within_half_tile": int(np.sum(gaps <= half_tile))}


def size_bucket(box, spacing_mm: float | None, edges_mm=SIZE_EDGES_MM) -> str | None:
    """"small" | "medium" | "large" by the box's longer side in mm; None without a spacing."""
    if spacing_mm is None or not spacing_mm > 0:
        return None
    y0, x0, y1, x1 = box
    side_mm = max(y1 - y0, x1 - x0) * float(spacing_mm)
    return SIZE_NAMES[int(np.searchsorted(np.asarray(edges_mm), side_mm, side="right"))]


def detection_report(
    detections: Sequence, truths: Sequence, *, spacing_mm: Mapping[str, float | None] | None = None,
    iou_threshold: float = IOU_THRESHOLD, edges_mm=SIZE_EDGES_MM, n_images: int | None = None,
) -> dict:  # fmt: skip
    """AP@IoU overall, per lesion kind and per size bucket, and the FROC (module docstring).

    Args:
      detections: (image, box, score) for every box of every evaluated image.
      truths: (image, box, kind) ground truth of those images.
      spacing_mm: image -> pixel spacing in mm (None or absent: no size bucket).
      n_images: how many images were evaluated (views without boxes included), for the FROC's
        false positives per image; None: no FROC.

    Returns:
      {"iou_threshold", "size_buckets_mm", "all": group, "by_kind": {kind: group},
       "by_size": {bucket: group}, "map_over_kinds", "truths_without_size", "froc"}: a group
      is `evaluate_detections`'s dict; map_over_kinds is the mean AP over the kinds that have
      one (None if none does); froc is `froc`'s dict (None without n_images).
    """
    dets = [Detection(*d) for d in detections]
    gts = [Truth(*t) for t in truths]
    spacing = spacing_mm or {}

    def evaluate(**ignore):
        return evaluate_detections(dets, gts, iou_threshold=iou_threshold, **ignore)

    by_kind = {
        kind: evaluate(truth_ignored=np.array([t.kind != kind for t in gts], bool))
        for kind in sorted({t.kind for t in gts})
    }
    truth_size = [size_bucket(t.box, spacing.get(t.image), edges_mm) for t in gts]
    det_size = [size_bucket(d.box, spacing.get(d.image), edges_mm) for d in dets]
    by_size = {
        name: evaluate(truth_ignored=np.array([s != name for s in truth_size], bool),
                       unmatched_ignored=np.array([s != name for s in det_size], bool))
        for name in SIZE_NAMES
    }  # fmt: skip
    kind_aps = [g["ap"] for g in by_kind.values() if g["ap"] is not None]
    edges = [0.0, *map(float, edges_mm), None]
    return {
        "iou_threshold": float(iou_threshold),
        "size_buckets_mm": {n: [edges[i], edges[i + 1]] for i, n in enumerate(SIZE_NAMES)},
        "all": evaluate(),
        "by_kind": by_kind,
        "by_size": by_size,
        "map_over_kinds": float(np.mean(kind_aps)) if kind_aps else None,
        "truths_without_size": int(sum(s is None for s in truth_size)),
        "froc": None if n_images is None else froc(dets, gts, n_images,
                                                   iou_threshold=iou_threshold),
    }
