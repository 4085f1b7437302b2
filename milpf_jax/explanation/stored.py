"""Attention maps from the tiles already in a store: `--maps store` of explain.py and
predict.py. The head's attention on the stored tile embeddings is mapped onto each view's own
grid through the stored tile boxes (source pixels): nothing is encoded again, so a whole split
takes seconds; the paper's maps re-tile at 75% overlap instead (`explain.explain_bag`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from milpf_jax.explanation.maps import BOX_THRESHOLD


class StoredView(NamedTuple):
    """A planned view as its store records it: the file (its path, or its view_ref when the
    cohort is pseudonymised), view code, whether the reader mirrored it, (rows, cols)."""

    recorded: str
    code: str
    flipped: bool
    shape: tuple[int, int]


def stored_views(store_path, rows) -> list[list[StoredView]]:
    """The planned views of the store's bags `rows` (store indices), each array read once."""
    from milpf_jax.data.store import Store

    store = Store.open(store_path)
    rows = np.asarray(rows, np.int64)
    mask = store.array("global_mask")[rows]
    paths, codes = store.array("view_path")[rows], store.array("view_name")[rows]
    flipped, shapes = store.array("view_flipped")[rows], store.array("view_shape")[rows]
    return [[StoredView(str(paths[k, j]), str(codes[k, j]), bool(flipped[k, j]),
                        (int(shapes[k, j, 0]), int(shapes[k, j, 1])))
             for j in np.flatnonzero(mask[k])] for k in range(len(rows))]  # fmt: skip


def stored_explanation(head, packed, b: int, views: list[StoredView], *, images=None,
                       threshold: float = BOX_THRESHOLD):
    """Bag `b` of `packed` explained from the tiles already in its store: the head's attention
    on the stored tile embeddings, mapped onto each view's source grid with the stored tile
    boxes (source pixels), boxes relative to the bag's peak (`baselines.with_weights`).
    Nothing is encoded; each view's file is read for its display pixels only.

    views: the bag's `stored_views`. images: {what the store records for a view (its path, or
    its view_ref): the cohort's ImageRef}, to find a pseudonymised view's file; default: the
    recorded path is the file."""
    import jax

    from milpf_jax.explanation.baselines import with_weights
    from milpf_jax.explanation.explain import BagExplanation, ViewExplanation
    from milpf_jax.learning.inference import Bag, predict_logits
    from milpf_jax.reading.imaging import read_image

    if head.config.local_pool not in ("attn", "mean"):
        raise ValueError(f"this head pools tiles by {head.config.local_pool!r}: it has no tile "
                         "attention to map")
    mine = packed.tile_bag == b
    tiles, views_of, boxes = packed.tiles[mine], packed.tile_view[mine], packed.tile_boxes[mine]
    arrays = Bag(packed.views[b], packed.views_mask[b], tiles, np.ones(len(tiles), bool))
    logit, aux = predict_logits(head, arrays)
    weights = np.asarray(aux["attn"], np.float32).reshape(-1)[: len(tiles)]
    out = []
    for j, view in enumerate(views):
        ref = (images or {}).get(view.recorded)
        path, view_ref = (ref.path, ref.ref) if ref is not None else (view.recorded, "")
        image = read_image(path, allow_excluded=True)
        pixels = image.pixels[:, ::-1] if image.flipped else image.pixels
        out.append(ViewExplanation(
            name=view_ref or path, path=path, ref=view_ref, view=view.code, flipped=view.flipped,
            shape=view.shape, pixel_spacing_mm=image.pixel_spacing_mm,
            tile_boxes=boxes[views_of == j], weights=weights[views_of == j],
            pixels=np.ascontiguousarray(pixels)))  # fmt: skip
    bag = BagExplanation(str(packed.bag_ids[b]), str(packed.patient_ids[b]),
                         str(packed.raw_labels[b]), float(jax.nn.sigmoid(logit)), tuple(out),
                         exam_id=str(packed.exam_ids[b]), laterality=str(packed.lateralities[b]))
    return with_weights(bag, [v.weights for v in out], threshold=threshold)
