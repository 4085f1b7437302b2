"""Attention maps from the tiles already in a store: `--maps store` of explain.py and
predict.py. The head's attention on the stored tile embeddings is mapped onto each view's own
grid through the stored tile boxes (source pixels): nothing is encoded again, so a whole split
takes seconds; the paper's maps re-tile at 75% overlap instead (`explain.explain_bag`).
"""

from __future__ import annotations

import numpy as np

from milpf_jax.explanation.maps import BOX_THRESHOLD, attention_map, boxes_from_map


def stored_explanation(head, packed, b: int, store_path, *, images=None,
                       threshold: float = BOX_THRESHOLD):
    """Bag `b` of `packed` explained from the tiles already in its store: the head's attention
    on the stored tile embeddings, mapped onto each view's source grid with the stored tile
    boxes (source pixels), boxes relative to the bag's peak. Nothing is encoded; each view's
    file is read for its display pixels only.

    images: {what the store records for a view (its path, or its view_ref): the cohort's
    ImageRef}, to find a pseudonymised view's file; default: the recorded path is the file."""
    import jax

    from milpf_jax.data.store import Store
    from milpf_jax.explanation.explain import BagExplanation, ViewExplanation
    from milpf_jax.learning.inference import Bag, predict_logits
    from milpf_jax.reading.imaging import read_image

    if head.config.local_pool not in ("attn", "mean"):
        raise ValueError(f"this head pools tiles by {head.config.local_pool!r}: it has no tile "
                         "attention to map")
    store = Store.open(store_path)
    i = int(packed.store_index[b])
    mask = store.array("global_mask")[i]
    paths = [str(x) for x, m in zip(store.array("view_path")[i], mask) if m]
    names = [str(x) for x, m in zip(store.array("view_name")[i], mask) if m]
    flipped = [bool(x) for x, m in zip(store.array("view_flipped")[i], mask) if m]
    shapes = [tuple(int(v) for v in x) for x, m in zip(store.array("view_shape")[i], mask) if m]
    mine = packed.tile_bag == b
    tiles, views_of, boxes = packed.tiles[mine], packed.tile_view[mine], packed.tile_boxes[mine]
    arrays = Bag(packed.views[b], packed.views_mask[b], tiles, np.ones(len(tiles), bool))
    logit, aux = predict_logits(head, arrays)
    probability = float(jax.nn.sigmoid(logit))
    weights = np.asarray(aux["attn"], np.float32).reshape(-1)[: len(tiles)]
    maps = [attention_map(shapes[j], boxes[views_of == j], weights[views_of == j])
            for j in range(len(paths))]
    peak = max((float(m.max(initial=0.0)) for m in maps), default=0.0)
    views = []
    for j, (recorded, amap) in enumerate(zip(paths, maps)):
        ref = (images or {}).get(recorded)
        path, view_ref = (ref.path, ref.ref) if ref is not None else (recorded, "")
        image = read_image(path, allow_excluded=True)
        pixels = image.pixels[:, ::-1] if image.flipped else image.pixels
        found, scores = boxes_from_map(amap, threshold=threshold, reference=peak,
                                       probability=probability)
        views.append(ViewExplanation(
            name=view_ref or path, path=path, ref=view_ref, view=names[j], flipped=flipped[j],
            shape=shapes[j],
            pixel_spacing_mm=image.pixel_spacing_mm, tile_boxes=boxes[views_of == j],
            weights=weights[views_of == j], attention=amap, boxes=found, scores=scores,
            pixels=np.ascontiguousarray(pixels)))  # fmt: skip
    return BagExplanation(str(packed.bag_ids[b]), str(packed.patient_ids[b]),
                          str(packed.raw_labels[b]), probability, tuple(views),
                          exam_id=str(packed.exam_ids[b]), laterality=str(packed.lateralities[b]))
