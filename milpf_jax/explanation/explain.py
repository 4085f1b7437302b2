"""Explanation: attention heatmaps, lesion boxes, detection mAP and overlays for a trained head.

The only module after the store that reads images again (DESIGN.md, data flow): each bag is
re-tiled with the run's own preprocessing but with 75% tile overlap (paper, section 3.2: "For
the attention map computation we use 75% overlap at inference time"), encoded with the run's
encoder, and passed through the head, whose `aux["attn"]` gives every tile's attention weight.
Maps and boxes are `milpf_jax.explanation.maps`, pictures `milpf_jax.explanation.overlays`, and
detection AP, localisation and size buckets `milpf_jax.evaluation.detection`. The run's cohort,
store settings and ground truth are read from what the run recorded (results.json, the
checkpoint's metadata, `Cohort.lesions`).

Example:
    explainer = load_explainer("runs/phantom-efficientnet-lite0-<UTC time>")
    result = explain_bag(explainer, cohort.bags[0])
    result.probability                 # float: the head on the bag's overlapping tiles
    result.views[0].attention          # [rows, cols] of the view's file, float32

`explain_run` does a whole split of a run and writes overlays, boxes.csv, bags.csv and
detection.json (experiments/explain.py is its command line).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from milpf_jax.config import check, check_choices, option
from milpf_jax.evaluation import runs
from milpf_jax.evaluation.detection import (
    IOU_THRESHOLD,
    Detection,
    Truth,
    box_iou,
    detection_report,
    localisation,
    peak_point,
    point_to_box,
)
from milpf_jax.explanation.baselines import with_weights
from milpf_jax.explanation.maps import BOX_THRESHOLD
from milpf_jax.explanation.overlays import overlay_image
from milpf_jax.files import write_dict_csv, write_json
from milpf_jax.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 0.75  # paper, section 3.2


@dataclass(frozen=True)
class ExplainConfig:
    """What `explain_run` explains and how: the split, the tiling's overlap, boxes, detection."""

    maps: Literal["retile", "store"] = option(
        "retile", "retile: the views tiled again at --overlap and encoded (the paper's maps); "
                  "store: the head's attention on the tiles already in the run's store, "
                  "nothing encoded (seconds)")
    split: Literal["train", "val", "test", "all"] = option(
        "test", "the run's split to explain, or all of the cohort")
    task: str | None = option(None, "the task (default: the run's own; another is refused)")
    max_bags: int | None = option(None, "only the first N bags of the split", flag="bags")
    overlap: float = option(DEFAULT_OVERLAP, "tile overlap of --maps retile (the paper's 0.75)")
    lesions: str | None = option(
        None, "ground-truth box CSV (default: the cohort's own: the phantom's lesions, "
              "mini-MIAS's circles)")
    threshold: float = option(BOX_THRESHOLD, "box regions: map >= this x the bag's peak")
    iou_threshold: float = option(IOU_THRESHOLD, "IoU for a detection to count (the paper's)",
                                  flag="iou")
    default_spacing_mm: float | None = option(
        None, "spacing of images whose files give none, for size buckets (e.g. 0.2 for "
              "mini-MIAS)", flag="pixel-spacing-mm")
    device: str = option("auto", "torch device for the encoder")
    model_dir: str | None = option(None, "local encoder weights (as for extraction)")
    precision: Literal["auto", "float32", "bfloat16"] | None = option(
        None, "encoder precision (default: the store's)")
    batch_size: int | None = option(None, "encoder inputs per pass (default: the store's)")
    save_maps: bool = option(False, "also write maps/<bag>_<view>.npy", switch=True)

    def __post_init__(self):
        check_choices(self)
        check(self, 0.0 <= self.overlap < 1.0, "overlap", f"{self.overlap}; expected [0, 1)")
        check(self, 0.0 < self.threshold <= 1.0, "threshold", f"{self.threshold}; expected (0, 1]")
        check(self, 0.0 < self.iou_threshold <= 1.0, "iou_threshold",
              f"{self.iou_threshold}; expected (0, 1]")
        for name in ("max_bags", "batch_size"):
            value = getattr(self, name)
            check(self, value is None or value >= 1, name, f"{value}; expected >= 1")
        check(self, self.default_spacing_mm is None or self.default_spacing_mm > 0,
              "default_spacing_mm", f"{self.default_spacing_mm}; expected > 0")


# --- explaining a bag ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ViewExplanation:
    """One view of an explained bag; every box and map is in SOURCE pixels (the file's frame).

    name: the view's `view_ref` when the cohort gives one, else its path: what outputs show.
    path: the file read (kept in memory only; never written out when `ref` is set).
    view: view code (CC, MLO, ...). flipped: the reader mirrored it to tile it (the boxes are
    mapped back already). shape: (rows, cols). pixel_spacing_mm: from the DICOM, or None.
    tile_boxes [T, 4] int32, weights [T] float32: the overlapping tiles and their attention.
    attention [H, W] float32: `attention_map` of them. boxes [K, 4] int32, scores [K]: predicted
    lesion boxes (`boxes_from_map` relative to the bag's peak). pixels [H, W] float32 display
    values, source frame: only when asked for (overlays).
    """

    name: str
    path: str
    ref: str
    view: str
    flipped: bool
    shape: tuple[int, int]
    pixel_spacing_mm: float | None
    tile_boxes: np.ndarray
    weights: np.ndarray
    attention: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.int32))
    scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    pixels: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class BagExplanation:
    """A bag through the head with overlapping tiles: its probability and per-view maps."""

    bag_id: str
    patient_id: str
    raw_label: str
    probability: float
    views: tuple[ViewExplanation, ...]
    exam_id: str = ""
    laterality: str = ""

    @property
    def peak(self) -> float:
        """The largest attention value over all views (the reference of maps and scores)."""
        return max((float(v.attention.max(initial=0.0)) for v in self.views), default=0.0)


@dataclass(frozen=True)
class Explainer:
    """What explaining needs: a head, the encoder its store was made with, and the store's
    tiling with the overlap for maps. `store_attrs` records where the settings came from."""

    head: object  # milpf_jax.Head
    encoder: object  # extraction.encoders.base.Encoder (or anything with .spec and .embed)
    tiling: object  # milpf_jax.reading.tiling.TilingConfig
    batch_size: int = 32
    store_attrs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        pool = self.head.config.local_pool
        if pool not in ("attn", "mean"):
            raise ValueError(
                f"this head pools tiles by {pool!r}: it has no tile attention to map; explain a "
                "head trained with --local-pool attn"
            )
        if self.encoder.spec.input_size != self.tiling.global_size:
            raise ValueError(
                f"encoder {self.encoder.spec.name!r} takes {self.encoder.spec.input_size}-px "
                f"inputs but the tiling's global view is {self.tiling.global_size} px"
            )
        if self.encoder.spec.dim != self.head.dim:
            raise ValueError(
                f"encoder {self.encoder.spec.name!r} gives D={self.encoder.spec.dim} but the head "
                f"was trained on D={self.head.dim}"
            )


def _encode_view(explainer: Explainer, path: str, view: str, boxes: np.ndarray):
    """(global [D], tiles [T, D]) of one view, cut at `boxes` exactly as extraction cuts them."""
    from milpf_jax.extraction.inputs import bag_inputs

    inputs = bag_inputs(((path, view, boxes),), explainer.tiling, explainer.encoder.spec.input_size)
    emb = explainer.encoder.embed(inputs, batch_size=explainer.batch_size)  # [1 + T, D]
    return emb[0], emb[1:]


def explain_bag(
    explainer: Explainer, bag, *, threshold: float = BOX_THRESHOLD, keep_pixels: bool = False
) -> BagExplanation:
    """Re-tile a bag with the explainer's (overlapping) tiling, encode it, run the head.

    Views are read, planned and cut with the store's own functions (`imaging.read_image`,
    `breast.plan_view`, `encoder_inputs.bag_inputs`); work-up views are left out as extraction
    leaves them out. The probability comes from this overlapping tiling, so it may differ a
    little from the run's predictions.csv (made without overlap).

    Args:
      bag: a cohort BagSpec.
      threshold: `boxes_from_map` threshold, relative to the bag's peak attention.
      keep_pixels: keep each view's display pixels (source frame) for overlays.

    Raises:
      ImageReadError, FileNotFoundError, ValueError: a view cannot be read or tiled (naming it).
    """
    import jax

    from milpf_jax.learning.inference import Bag, predict_logits
    from milpf_jax.reading.imaging import ExcludedView, read_image
    from milpf_jax.reading.tiling import plan_view

    views, globals_, tiles = [], [], []
    for ref in bag.images:
        try:
            image = read_image(ref.path, laterality=ref.laterality, view=ref.view)
        except ExcludedView:
            continue
        plan, _ = plan_view(image, explainer.tiling)
        whole, cut = _encode_view(explainer, ref.path, ref.view, plan.source_boxes)
        globals_.append(whole)
        tiles.append(cut)
        pixels = None
        if keep_pixels:
            pixels = image.pixels[:, ::-1] if image.flipped else image.pixels
        views.append((ref, image, plan, pixels))
    if not views:
        raise ValueError(f"bag {bag.bag_id}: every view is a work-up view (none to explain)")
    tile_emb = np.concatenate(tiles).reshape(-1, explainer.head.dim)  # [T, D]
    arrays = Bag(np.stack(globals_), np.ones(len(views), bool), tile_emb,
                 np.ones(len(tile_emb), bool))  # fmt: skip
    logit, aux = predict_logits(explainer.head, arrays)
    weights = np.asarray(aux["attn"], np.float32).reshape(-1)[: len(tile_emb)]  # [T]
    out, start = [], 0
    for (ref, image, plan, pixels), cut in zip(views, tiles):
        out.append(ViewExplanation(
            name=ref.ref or ref.path, path=ref.path, ref=ref.ref, view=ref.view,
            flipped=bool(plan.transform.flipped), shape=tuple(int(s) for s in image.source_shape),
            pixel_spacing_mm=image.pixel_spacing_mm, tile_boxes=plan.source_boxes,
            weights=weights[start : start + len(cut)],
            pixels=None if pixels is None else np.ascontiguousarray(pixels),
        ))  # fmt: skip
        start += len(cut)
    result = BagExplanation(bag.bag_id, bag.patient_id, bag.raw_label,
                            float(jax.nn.sigmoid(logit)), tuple(out), exam_id=bag.exam_id,
                            laterality=bag.laterality)
    return with_weights(result, [v.weights for v in out], threshold=threshold)


# --- a run's settings, cohort, split and ground truth ----------------------------------------


def _run_store_attrs(run_dir) -> dict:
    """The store attributes a run's head was trained on: checkpoint metadata, else results.json."""
    from milpf_jax.learning.checkpoint import read_metadata

    attrs = read_metadata(runs.best_dir(run_dir)).get("store_attrs")
    if not attrs and (Path(run_dir) / "results.json").is_file():
        attrs = runs.read_results(run_dir).get("store_attrs")
    if not attrs or "preprocessing" not in attrs or "encoder" not in attrs:
        raise ValueError(
            f"{run_dir}: no store attributes (encoder, preprocessing) in its checkpoint metadata "
            "or results.json; explain needs the run folder experiments/sweep.py writes"
        )
    return attrs


def load_explainer(
    run_dir, *, overlap: float = DEFAULT_OVERLAP, device: str = "auto",
    model_dir: str | None = None, precision: str | None = None, batch_size: int | None = None,
) -> Explainer:  # fmt: skip
    """The run's best head with the encoder and tiling of the store it was trained on.

    Args:
      run_dir: a sweep folder (or its best/ checkpoint folder).
      overlap: tile overlap for the maps (paper: 0.75); everything else of the tiling is the
        store's (tile size, tissue threshold, spacing, preset).
      device: torch device or "auto". precision: the encoder's; None = the store's.
      batch_size: encoder inputs per forward pass; None = the store's.
    """
    from milpf_jax.data.imported import imported_encoder
    from milpf_jax.extraction import encoders
    from milpf_jax.extraction.extract import tiling_from_attrs
    from milpf_jax.learning.checkpoint import load_head
    from milpf_jax.reading.imaging import READER_VERSION

    attrs = _run_store_attrs(run_dir)
    if imported_encoder(attrs) is not None:
        raise ValueError(
            f"{run_dir} was trained on imported embeddings (encoder {attrs['encoder']!r}): there "
            "is no encoder to tile and encode its images again, so explain needs a run on a "
            "store this package extracted")
    tiling, reader_version = tiling_from_attrs(attrs["preprocessing"])
    tiling = dataclasses.replace(tiling, overlap=float(overlap))
    if reader_version != READER_VERSION:
        log.warning("the store was read under reading rule %s, the images are now read under "
                    "rule %s (milpf_jax.reading.imaging); maps may differ", reader_version,
                    READER_VERSION)
    encoder = encoders.get_encoder(attrs["encoder"], model_dir=model_dir,
                                   device=encoders.resolve_device(device),
                                   precision=precision or attrs.get("precision") or "auto")
    stored, now = attrs.get("model_revision"), getattr(encoder, "model_revision", None)
    if stored and now and stored != now:
        log.warning("encoder %s: revision %s, the store was made with %s; maps may differ",
                    attrs["encoder"], now, stored)
    return Explainer(head=load_head(runs.best_dir(run_dir)), encoder=encoder, tiling=tiling,
                     batch_size=int(batch_size or attrs.get("batch_size") or 32),
                     store_attrs=dict(attrs))


def select_bags(cohort, predictions: Mapping[str, dict], split: str, limit: int | None = None):
    """The cohort's bags in `split` of the run ("all": every bag), in cohort order, at most
    `limit` of them."""
    if split == "all":
        bags = list(cohort.bags)
    else:
        bags = [b for b in cohort.bags if predictions.get(b.bag_id, {}).get("split") == split]
        if not bags:
            raise ValueError(
                f"no bag of cohort {cohort.name!r} is in the run's {split!r} split "
                f"({len(predictions)} bags in its predictions.csv): another cohort? use --split all"
            )
    return bags[:limit] if limit is not None else bags


def read_truths(csv_path) -> list[tuple[str, str, tuple, str]]:
    """Ground-truth boxes from a CSV: (view_ref, path, (y0, x0, y1, x1), kind) per row.

    Columns: y0, x0, y1, x1 (half-open, source pixels), `view_ref` and/or `path` (relative to
    the CSV's folder), optionally `kind` (default "lesion"). A manifest's `<stem>.lesions.csv`
    (the phantom's `manifest.lesions.csv`) is one.
    """
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        missing = {"y0", "x0", "y1", "x1"} - columns
        if missing or not columns & {"path", "view_ref"}:
            raise ValueError(f"{csv_path}: columns {sorted(columns)}; expected y0, x0, y1, x1, "
                             "path or view_ref, and optionally kind")
        out = []
        for line, row in enumerate(reader, start=2):
            try:
                box = tuple(int(row[k]) for k in ("y0", "x0", "y1", "x1"))
            except ValueError as err:
                raise ValueError(f"{csv_path} line {line}: box is not integer: {row}") from err
            path = (row.get("path") or "").strip()
            path = str((csv_path.parent / path).resolve()) if path else ""
            out.append(((row.get("view_ref") or "").strip(), path, box,
                        (row.get("kind") or "").strip() or "lesion"))
    return out


def cohort_truths(cohort) -> list[tuple[str, str, tuple, str]]:
    """The cohort's own ground truth (`Cohort.lesions`: mini-MIAS's circles, the phantom's
    lesions), in `read_truths`'s form; [] if it has none."""
    return [("", les.path, tuple(les.box), les.kind) for les in cohort.lesions]


def _view_truths(truths, views) -> dict[str, list[Truth]]:
    """view name -> its Truths; a truth names its view by ref or by (resolved) path."""
    alias = {}
    for v in views:
        alias[os.path.realpath(v.path)] = v.name
        if v.ref:
            alias[v.ref] = v.name
    out: dict[str, list[Truth]] = {}
    for ref, path, box, kind in truths:
        name = alias.get(ref) if ref else alias.get(os.path.realpath(path)) if path else None
        if name is not None:
            out.setdefault(name, []).append(Truth(name, box, kind))
    return out


# --- a whole run: files out ------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _overlay_names(bag_id: str, views: Sequence[ViewExplanation]) -> list[str]:
    """<bag>_<view>.png, with _2, _3, ... when a bag has two views of one code."""
    names, seen = [], {}
    for v in views:
        base = f"{_safe(bag_id)}_{_safe(v.view or 'view')}"
        seen[base] = seen.get(base, 0) + 1
        names.append(f"{base}.png" if seen[base] == 1 else f"{base}_{seen[base]}.png")
    return names


BOX_COLUMNS = ("bag_id", "view", "view_code", "probability", "score", "y0", "x0", "y1", "x1",
               "best_iou")  # fmt: skip
BAG_COLUMNS = ("bag_id", "patient_id", "exam_id", "laterality", "label", "probability",
               "probability_no_overlap", "views", "tiles", "boxes", "overlays")  # fmt: skip
DEFINITIONS = {
    "map": "mean attention weight of the overlapping tiles covering each pixel (source frame)",
    "boxes": "8-connected regions of map >= threshold x the bag's peak over its views; score = "
             "probability x region peak / bag peak",
    "ap": "all-point interpolated AP at IoU >= iou_threshold, class-agnostic boxes, greedy "
          "matching by score; a second box on a found lesion and boxes in views without truth "
          "are false positives",
    "by_kind": "truths of other kinds ignored (a box on one counts neither way)",
    "by_size": "longer side of the truth box in mm; truths of other buckets ignored, an "
               "unmatched box counts in its own bucket only",
    "map_over_kinds": "mean of the per-kind APs",
    "froc": "LUNA16 convention: a hit at IoU >= iou_threshold, a second box on a found lesion "
            "ignored, false positives per image over every explained view; sensitivity at "
            "1/8 ... 8 false positives per image and their mean",
    "baselines": "the same boxes, AP, FROC and pointing game from a uniform map (every tile "
                 "1/T) and a brightness map (each tile its mean display value), with the "
                 "head's probability: only localisation differs",
    "localisation": "bags with ground truth whose attention peak (the centre of the top cell of "
                    "the map, over all views) lies inside a lesion box of its view, or within "
                    "half a tile side of one",
}  # fmt: skip


class _Collected:
    """Everything explain_run gathers over the bags: detections, truths and the CSV rows."""

    def __init__(self):
        self.detections, self.truths, self.spacing = [], [], {}
        self.box_rows, self.bag_rows, self.failed = [], [], []
        self.pointing = []  # per bag with truths: (peak to nearest lesion, tile side), pixels


def _record_view(acc: _Collected, bag_id: str, probability: float, v: ViewExplanation,
                 truth: list[Truth], default_spacing_mm) -> np.ndarray:
    """Add one view's boxes and truths to `acc`; returns the truth boxes [G, 4]."""
    acc.truths += truth
    acc.spacing[v.name] = v.pixel_spacing_mm or default_spacing_mm
    tboxes = np.array([t.box for t in truth], np.int64).reshape(-1, 4)
    ious = box_iou(v.boxes, tboxes)  # [K, G]
    for k, (box, score) in enumerate(zip(v.boxes, v.scores)):
        y0, x0, y1, x1 = (int(c) for c in box)
        acc.detections.append(Detection(v.name, (y0, x0, y1, x1), float(score)))
        acc.box_rows.append({
            "bag_id": bag_id, "view": v.name, "view_code": v.view,
            "probability": f"{probability:.6f}", "score": f"{score:.6f}",
            "y0": y0, "x0": x0, "y1": y1, "x1": x1,
            "best_iou": f"{ious[k].max():.4f}" if len(truth) else "",
        })  # fmt: skip
    return tboxes


def _pointing(result: BagExplanation, view_truths) -> tuple[float, float] | None:
    """(distance from the bag's attention peak to its view's nearest lesion, median tile side),
    pixels; None for a bag without ground truth."""
    if not any(v.name in view_truths for v in result.views):
        return None
    top = max(result.views, key=lambda v: float(v.attention.max(initial=0.0)))
    peak = peak_point(top.attention)
    gap = min((point_to_box(peak, t.box) for t in view_truths.get(top.name, [])),
              default=float("inf"))
    sides = top.tile_boxes[:, 2:] - top.tile_boxes[:, :2]  # [T, 2]
    return gap, float(np.median(sides)) if len(sides) else 0.0


def _record_baselines(found: dict, result: BagExplanation, truths, threshold: float) -> None:
    """Each baseline's boxes and pointing for one bag, into found[kind] = (detections,
    pointing)."""
    from milpf_jax.explanation.baselines import BASELINES, baseline

    view_truths = _view_truths(truths, result.views)
    for kind in BASELINES:
        other = baseline(kind, result, threshold=threshold)
        detections, pointing = found.setdefault(kind, ([], []))
        for v in other.views:
            detections += [Detection(v.name, tuple(int(c) for c in box), float(score))
                           for box, score in zip(v.boxes, v.scores)]
        point = _pointing(other, view_truths)
        if point is not None:
            pointing.append(point)


def _write_bag(acc: _Collected, result: BagExplanation, truths, out: Path, prediction: dict,
               *, save_maps: bool, default_spacing_mm) -> None:
    """Overlays (and maps) of one explained bag, and its rows in `acc`."""
    view_truths = _view_truths(truths, result.views)
    names = _overlay_names(result.bag_id, result.views)
    pointing = _pointing(result, view_truths)
    if pointing is not None:
        acc.pointing.append(pointing)
    for v, name in zip(result.views, names):
        tboxes = _record_view(acc, result.bag_id, result.probability, v,
                              view_truths.get(v.name, []), default_spacing_mm)
        overlay_image(v.pixels, v.attention, reference=result.peak, predicted=v.boxes,
                      scores=v.scores, truths=tboxes).save(out / "overlays" / name)
        if save_maps:
            np.save(out / "maps" / name.replace(".png", ".npy"), v.attention.astype(np.float16))
    acc.bag_rows.append({
        "bag_id": result.bag_id, "patient_id": result.patient_id,
        "exam_id": result.exam_id, "laterality": result.laterality,
        "label": prediction.get("label", result.raw_label),
        "probability": f"{result.probability:.6f}",
        "probability_no_overlap": prediction.get("p_best", ""),
        "views": len(result.views), "tiles": sum(len(v.weights) for v in result.views),
        "boxes": sum(len(v.boxes) for v in result.views), "overlays": " ".join(names),
    })  # fmt: skip


@dataclass(frozen=True)
class _StoreExplainer:
    """`--maps store`: the run's head and the packed bags of the run's own store (no encoder)."""

    head: object
    packed: object
    store: str
    index: dict  # bag_id -> row of `packed`
    images: dict  # what the store records for a view (path or view_ref) -> ImageRef
    views: list  # per row of `packed` its `stored.StoredView`s
    tiling: object
    store_attrs: dict
    encoder_name: str

    @classmethod
    def of(cls, run_dir, cohort, cfg: ExplainConfig) -> _StoreExplainer:
        from milpf_jax.data.packed import load_packed
        from milpf_jax.explanation.stored import stored_views
        from milpf_jax.extraction.extract import tiling_from_attrs
        from milpf_jax.learning.checkpoint import load_head, read_metadata

        results = runs.read_results(run_dir)
        store = results.get("store")
        if not store:
            raise ValueError(f"{run_dir}: results.json names no store; --maps store needs the "
                             "run's own store (or use --maps retile)")
        meta = read_metadata(runs.best_dir(run_dir))
        data = results.get("data") or {}
        packed = load_packed(store, task=meta.get("task") or data.get("task"),
                             mapping=meta.get("mapping") or data.get("mapping"),
                             allow_partial=True, unlabelled=True)
        attrs = dict(packed.info["attrs"])
        images = {(i.ref or i.path): i for b in cohort.bags for i in b.images}
        return cls(head=load_head(runs.best_dir(run_dir)), packed=packed, store=str(store),
                   index={str(b): k for k, b in enumerate(packed.bag_ids)}, images=images,
                   views=stored_views(store, packed.store_index),
                   tiling=tiling_from_attrs(attrs["preprocessing"])[0], store_attrs=attrs,
                   encoder_name=str(attrs.get("encoder", "")))

    def explain(self, bag, *, threshold: float):
        from milpf_jax.explanation.stored import stored_explanation

        if bag.bag_id not in self.index:
            raise ValueError(f"bag {bag.bag_id} is not in the run's store {self.store} (or it "
                             "failed there); --maps retile reads its images")
        k = self.index[bag.bag_id]
        return stored_explanation(self.head, self.packed, k, self.views[k], images=self.images,
                                  threshold=threshold)


def explain_run(run_dir, out_dir, cfg: ExplainConfig = ExplainConfig(), *, cohort=None,
                progress: bool = True, command: str = "",
                explainer: Explainer | None = None) -> dict:
    """Explain a run's bags and write, under out_dir:

      overlays/<bag>_<view>.png   the view (grey), its attention map (colour), predicted boxes
                                  (red, with scores) and ground truth (green), source frame
      maps/<bag>_<view>.npy       the attention maps (float16), with cfg.save_maps
      boxes.csv                   every predicted box: bag, view (ref, else path), view code,
                                  probability, score, y0, x0, y1, x1, best IoU with a truth
      bags.csv                    per bag: ids (patient, exam, laterality), label, probability
                                  (overlapping tiles and the run's own), views, tiles, boxes,
                                  overlay files
      detection.json              `detection_report`, `localisation`, the settings and the
                                  command

    Args:
      run_dir: a sweep folder (results.json, predictions.csv, best/).
      cfg: the split, overlap, boxes, ground truth and encoder settings (`ExplainConfig`).
      cohort: a Cohort or spec; None = the one the run recorded (results.json's `cohort`).
      explainer: use this instead of `load_explainer(run_dir, ...)` (tests, notebooks).

    Returns:
      The dict written to detection.json ("bags", "views", "failed": [(bag_id, reason)],
      "detection": `detection_report`, "localisation", "settings", ...) plus "out".
    """
    from milpf_jax.extraction.extract import cohort_identity
    from milpf_jax.reading.cohort import Cohort
    from milpf_jax.reading.imaging import ImageReadError
    from milpf_jax.reading.sources import read_cohort

    run_dir, out = Path(run_dir), Path(out_dir)
    if (run_dir / "results.json").is_file():
        runs.check_task(run_dir, cfg.task)
    if not isinstance(cohort, Cohort):
        if cohort is None:
            try:
                cohort = runs.recorded_cohort(run_dir)
            except ValueError as err:
                raise ValueError(f"{err}; give the cohort (--cohort manifest.csv, mias:DIR, "
                                 "phantom...)") from None
        cohort = read_cohort(cohort)
    if cfg.maps == "store":
        explainer = explainer or _StoreExplainer.of(run_dir, cohort, cfg)
    explainer = explainer or load_explainer(
        run_dir, overlap=cfg.overlap, device=cfg.device, model_dir=cfg.model_dir,
        precision=cfg.precision, batch_size=cfg.batch_size)  # fmt: skip
    stored_id = explainer.store_attrs.get("cohort_id")
    if stored_id and stored_id != cohort_identity(cohort):
        log.warning("cohort %s differs from the one the run's store was made from (other bags, "
                    "labels or image paths)", cohort.name)
    has_predictions = (Path(run_dir) / "predictions.csv").is_file()
    predictions = runs.read_predictions(run_dir) if has_predictions else {}
    bags = select_bags(cohort, predictions, cfg.split, cfg.max_bags)
    truths = read_truths(cfg.lesions) if cfg.lesions else cohort_truths(cohort)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    if cfg.save_maps:
        (out / "maps").mkdir(exist_ok=True)
    acc = _Collected()
    baselines: dict[str, tuple[list, list]] = {}
    for bag in progress_bar(bags, desc="explain", unit="bag", disable=not progress):
        try:
            if isinstance(explainer, _StoreExplainer):
                result = explainer.explain(bag, threshold=cfg.threshold)
            else:
                result = explain_bag(explainer, bag, threshold=cfg.threshold, keep_pixels=True)
        except (ImageReadError, FileNotFoundError, ValueError) as err:
            log.warning("bag %s: not explained: %s", bag.bag_id, err)
            pseudonymised = any(i.ref for i in bag.images)  # its reasons would name a path
            acc.failed.append((bag.bag_id, "a view could not be read or tiled"
                               if pseudonymised else str(err)))  # fmt: skip
            continue
        _write_bag(acc, result, truths, out, predictions.get(bag.bag_id, {}),
                   save_maps=cfg.save_maps, default_spacing_mm=cfg.default_spacing_mm)
        _record_baselines(baselines, result, truths, cfg.threshold)
    write_dict_csv(out / "boxes.csv", BOX_COLUMNS, acc.box_rows)
    write_dict_csv(out / "bags.csv", BAG_COLUMNS, acc.bag_rows)
    summary = {
        "command": command, "run": str(run_dir), "cohort": cohort.name,
        "cohort_spec": cohort.spec, "split": cfg.split,
        "bags": len(acc.bag_rows), "views": len(acc.spacing), "failed": acc.failed,
        "ground_truth": Path(cfg.lesions).name if cfg.lesions else
                        "the cohort's own" if truths else "none",
        "settings": {
            "maps": cfg.maps, "overlap": explainer.tiling.overlap, "threshold": cfg.threshold,
            "iou_threshold": cfg.iou_threshold, "default_spacing_mm": cfg.default_spacing_mm,
            "tiling": dataclasses.asdict(explainer.tiling),
            "encoder": (explainer.encoder_name if isinstance(explainer, _StoreExplainer)
                        else explainer.encoder.spec.name),
        },
        "detection": detection_report(acc.detections, acc.truths, spacing_mm=acc.spacing,
                                      iou_threshold=cfg.iou_threshold,
                                      n_images=len(acc.spacing)),
        "localisation": localisation(acc.pointing),
        "baselines": {
            kind: {"detection": detection_report(found, acc.truths, spacing_mm=acc.spacing,
                                                 iou_threshold=cfg.iou_threshold,
                                                 n_images=len(acc.spacing)),
                   "localisation": localisation(pointing)}
            for kind, (found, pointing) in baselines.items()},
        "definitions": DEFINITIONS,
    }  # fmt: skip
    write_json(out / "detection.json", summary)
    froc = summary["detection"]["froc"]
    if froc and froc["mean_sensitivity"] is not None:
        from milpf_jax.evaluation.figures import froc_figure, save_figure

        save_figure(froc_figure(summary), out / "figures", "froc")
    return {**summary, "out": str(out)}


def format_report(summary: dict) -> str:
    """The short table experiments/explain.py prints."""
    det = summary["detection"]
    failed = f"; {len(summary['failed'])} bags failed" if summary["failed"] else ""
    lines = [
        (f"explained {summary['bags']} bags ({summary['split']} split of {summary['cohort']}), "
         f"{summary['views']} views, tile overlap {summary['settings']['overlap']:g}{failed}"),
        (f"detection AP at IoU >= {det['iou_threshold']:g} (all-point interpolated), ground "
         f"truth: {summary['ground_truth']}"),
        f"{'group':<28} {'AP':>6} {'lesions':>8} {'boxes':>6} {'found':>6}",
    ]  # fmt: skip

    def row(name, g):
        ap = "-" if g["ap"] is None else f"{g['ap']:.3f}"
        return f"{name:<28} {ap:>6} {g['truths']:>8} {g['detections']:>6} {g['tp']:>6}"

    lines.append(row("all", det["all"]))
    lines += [row(f"kind {k}", g) for k, g in det["by_kind"].items()]
    for name, g in det["by_size"].items():
        lo, hi = det["size_buckets_mm"][name]
        span = f"< {hi:g} mm" if not lo else f">= {lo:g} mm" if hi is None else f"{lo:g}-{hi:g} mm"
        lines.append(row(f"size {name} ({span})", g))
    if det["map_over_kinds"] is not None:
        lines.append(f"mAP over kinds: {det['map_over_kinds']:.3f}")
    loc = summary["localisation"]
    if loc["bags"]:
        lines.append(f"attention peak on a lesion in {loc['peak_inside']}/{loc['bags']} bags with "
                     f"lesions, within half a tile of one in {loc['peak_within_half_tile']}")
    rows = [("head", det, loc)] + [(kind, b["detection"], b["localisation"])
                                   for kind, b in (summary.get("baselines") or {}).items()]
    if det.get("froc") and det["froc"]["mean_sensitivity"] is not None:
        rates = "  ".join(f"{r:g}" for r in det["froc"]["rates"])
        lines += ["", f"{'map':<11} {'AP':>6} {'FROC mean':>9}   sensitivity at {rates} FP/image"
                      f"   {'pointing':>8}"]
        for name, d, point in rows:
            f = d["froc"]
            ap = "-" if d["all"]["ap"] is None else f"{d['all']['ap']:.3f}"
            sens = " ".join(f"{x:.2f}" for x in f["sensitivity"])
            hit = f"{point['peak_within_half_tile']}/{point['bags']}" if point["bags"] else "-"
            lines.append(f"{name:<11} {ap:>6} {f['mean_sensitivity']:>9.3f}   {sens}   {hit:>8}")
    return "\n".join(lines)
