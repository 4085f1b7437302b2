"""Map baselines: what the head's attention maps are measured against, through the same code.

  uniform     every tile of the bag weighs 1/T: a map that knows only where the tissue is.
  brightness  each tile weighs its mean display value (normalised over the bag): a map that
              points at the densest tissue, as a bright lesion would also draw attention.

Both keep the head's bag probability, so only localisation differs from the head's maps: the
boxes, AP, FROC and pointing game of a baseline come from the same `boxes_from_map` and
`detection_report` as the head's (`explain.explain_run` writes them under "baselines").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from milpf_jax.explanation.maps import BOX_THRESHOLD, attention_map, box_means, boxes_from_map

BASELINES = ("uniform", "brightness")


def baseline_weights(kind: str, views: Sequence) -> list[np.ndarray]:
    """Per-view tile weights of a baseline map (module docstring), summing to 1 over the bag.

    views: ViewExplanations with `tile_boxes` (and `pixels`, for brightness)."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES)}")
    if kind == "uniform":
        raw = [np.ones(len(v.tile_boxes)) for v in views]
    else:
        if any(v.pixels is None for v in views):
            raise ValueError("the brightness baseline needs each view's pixels (keep_pixels)")
        raw = [box_means(v.pixels, v.tile_boxes) for v in views]
    total = sum(float(r.sum()) for r in raw)
    return [(r / total if total > 0 else r).astype(np.float32) for r in raw]


def with_weights(result, weights: Sequence[np.ndarray], *, threshold: float = BOX_THRESHOLD):
    """The BagExplanation with view j's tile weights set to weights[j] ([T_j]) and its maps and
    boxes made from them: boxes relative to the bag's peak over all views, scored with its
    probability."""
    if len(weights) != len(result.views):
        raise ValueError(f"bag {result.bag_id}: {len(weights)} weight arrays for "
                         f"{len(result.views)} views")
    maps = [attention_map(v.shape, v.tile_boxes, w) for v, w in zip(result.views, weights)]
    peak = max((float(m.max(initial=0.0)) for m in maps), default=0.0)
    views = []
    for v, w, amap in zip(result.views, weights, maps):
        boxes, scores = boxes_from_map(amap, threshold=threshold, reference=peak,
                                       probability=result.probability)
        views.append(dataclasses.replace(v, weights=np.asarray(w, np.float32), attention=amap,
                                         boxes=boxes, scores=scores))
    return dataclasses.replace(result, views=tuple(views))


def baseline(kind: str, result, *, threshold: float = BOX_THRESHOLD):
    """`result` with the baseline's map in place of the head's."""
    return with_weights(result, baseline_weights(kind, result.views), threshold=threshold)
