"""Explanation: attention heatmaps, lesion boxes, detection mAP and overlays for a trained head.

The only module after the store that reads images again (DESIGN.md, data flow): each bag is
re-tiled with the run's own preprocessing but with 75% tile overlap (paper, section 3.2: "For
the attention map computation we use 75% overlap at inference time"), encoded with the run's
encoder, and passed through the head, whose `aux["attn"]` gives every tile's attention weight.

  attention map   per view, in the SOURCE image's pixel frame (the file's rows and columns, not
                  the reader's mirrored copy): each pixel is the MEAN attention weight of the tiles
                  covering it (0 where no tile does). With overlapping tiles the mean is a smooth
                  map whose level does not depend on how many tiles happen to cover a pixel.
  predicted boxes connected components (8-connected) of map >= `threshold` x the bag's peak
                  (over all its views); each box is its component's bounding box, scored
                  probability x component peak / bag peak, so the bag's strongest region scores
                  the bag's probability and boxes rank across bags by how sure the head is.
  detection       AP at IoU >= 0.25, localisation (a pointing game) and size buckets:
                  milpf_jax.evaluation.detection.

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
import json
import logging
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
from milpf_jax.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_OVERLAP = 0.75  # paper, section 3.2
BOX_THRESHOLD = 0.5  # a component is the region within half of the bag's peak attention
DEFAULT_RUN_COHORT = "phantom"  # what experiments/sweep.py trains on without --cohort or --store
PREDICTED_RGB = (255, 0, 0)
TRUTH_RGB = (0, 255, 0)


# --- maps and boxes (pure) -------------------------------------------------------------------


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


# --- overlays --------------------------------------------------------------------------------


def _jet(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] in [0, 1]: blue (low) through green to red (high)."""
    return np.clip(1.5 - np.abs(4.0 * v[..., None] - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def overlay_image(pixels, attention, *, reference: float | None = None, predicted=(), scores=(),
                  truths=()):
    """An RGB PIL image: the view in grey, its attention map in colour, boxes drawn on top.

    Args:
      pixels: [H, W] display values in [0, 1], source frame (as the file stores them).
      attention: [H, W] map in the same frame; colour and opacity grow with map / reference
        (default: its own max), so the views of one bag share one colour scale.
      predicted: [K, 4] boxes drawn in red, labelled with `scores` [K] when given.
      truths: [G, 4] ground-truth boxes drawn in green, last (on top).
    """
    from PIL import Image, ImageDraw

    grey = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)[..., None]  # [H, W, 1]
    a = np.asarray(attention, np.float32)
    if a.shape != grey.shape[:2]:
        raise ValueError(f"overlay: attention map {a.shape} and view {grey.shape[:2]} differ")
    peak = float(a.max(initial=0.0)) if reference is None else float(reference)
    v = np.clip(a / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(a)
    alpha = np.where(a > 0, 0.2 + 0.4 * v, 0.0)[..., None]  # [H, W, 1]
    rgb = grey * (1 - alpha) + _jet(v) * alpha  # [H, W, 3]
    image = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(a.shape) / 400))
    font = _font(max(10, round(max(a.shape) / 60)))
    labels = [f"{s:.2f}" for s in scores] if len(scores) else [None] * len(predicted)
    for box, label in zip(np.asarray(predicted).reshape(-1, 4), labels):
        y0, x0, y1, x1 = (int(c) for c in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=PREDICTED_RGB, width=width)
        if label:
            draw.text((x0 + width + 2, y0 + width + 1), label, fill=PREDICTED_RGB, font=font)
    for box in np.asarray(truths).reshape(-1, 4):
        y0, x0, y1, x1 = (int(c) for c in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=TRUTH_RGB, width=width)
    return image


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()


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
    attention: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    pixels: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class BagExplanation:
    """A bag through the head with overlapping tiles: its probability and per-view maps."""

    bag_id: str
    patient_id: str
    raw_label: str
    probability: float
    views: tuple[ViewExplanation, ...]

    @property
    def peak(self) -> float:
        """The largest attention value over all views (the reference of maps and scores)."""
        return max((float(v.attention.max(initial=0.0)) for v in self.views), default=0.0)


@dataclass(frozen=True)
class Explainer:
    """What explaining needs: a head, the encoder its store was made with, and the store's
    tiling with the overlap for maps. `store_attrs` records where the settings came from."""

    head: object  # milpf_jax.Head
    encoder: object  # milpf_jax.extraction.encoders.base.Encoder (or anything with .spec and .embed)
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

    from milpf_jax.reading.tiling import plan_view
    from milpf_jax.reading.imaging import ExcludedView, read_image
    from milpf_jax.learning.inference import Bag, predict_logits

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
    probability = float(jax.nn.sigmoid(logit))
    weights = np.asarray(aux["attn"], np.float32).reshape(-1)[: len(tile_emb)]  # [T]
    maps, start = [], 0
    for (_, image, plan, _), cut in zip(views, tiles):
        w = weights[start : start + len(cut)]
        start += len(cut)
        maps.append((w, attention_map(image.source_shape, plan.source_boxes, w)))
    peak = max(float(m.max(initial=0.0)) for _, m in maps)
    out = []
    for (ref, image, plan, pixels), (w, amap) in zip(views, maps):
        boxes, scores = boxes_from_map(amap, threshold=threshold, reference=peak,
                                       probability=probability)
        out.append(ViewExplanation(
            name=ref.ref or ref.path, path=ref.path, ref=ref.ref, view=ref.view,
            flipped=bool(plan.transform.flipped), shape=tuple(int(s) for s in image.source_shape),
            pixel_spacing_mm=image.pixel_spacing_mm, tile_boxes=plan.source_boxes, weights=w,
            attention=amap, boxes=boxes, scores=scores,
            pixels=None if pixels is None else np.ascontiguousarray(pixels),
        ))  # fmt: skip
    return BagExplanation(bag.bag_id, bag.patient_id, bag.raw_label, probability, tuple(out))


# --- a run's settings, cohort, split and ground truth ----------------------------------------


def _best_dir(run_dir) -> Path:
    path = Path(run_dir)
    return path / "best" if (path / "best").is_dir() else path


def _run_store_attrs(run_dir) -> dict:
    """The store attributes a run's head was trained on: checkpoint metadata, else results.json."""
    from milpf_jax.learning.checkpoint import read_metadata

    attrs = read_metadata(_best_dir(run_dir)).get("store_attrs")
    results = Path(run_dir) / "results.json"
    if not attrs and results.is_file():
        attrs = json.loads(results.read_text()).get("store_attrs")
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
    from milpf_jax.extraction import encoders
    from milpf_jax.reading.tiling import TilingConfig
    from milpf_jax.learning.checkpoint import load_head

    attrs = _run_store_attrs(run_dir)
    tiling = dataclasses.replace(TilingConfig(**attrs["preprocessing"]), overlap=float(overlap))
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = encoders.get_encoder(attrs["encoder"], model_dir=model_dir, device=device,
                                   precision=precision or attrs.get("precision") or "auto")
    stored, now = attrs.get("model_revision"), getattr(encoder, "model_revision", None)
    if stored and now and stored != now:
        log.warning("encoder %s: revision %s, the store was made with %s; maps may differ",
                    attrs["encoder"], now, stored)
    return Explainer(head=load_head(_best_dir(run_dir)), encoder=encoder, tiling=tiling,
                     batch_size=int(batch_size or attrs.get("batch_size") or 32),
                     store_attrs=dict(attrs))


def _flag_value(words: list[str], flag: str) -> str | None:
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(flag + "="):
            return w[len(flag) + 1 :]
    return None


def run_cohort_spec(run_dir) -> str:
    """The cohort spec a sweep used, read from the command in its results.json."""
    path = Path(run_dir) / "results.json"
    command = json.loads(path.read_text()).get("command", "") if path.is_file() else ""
    words = shlex.split(command)
    spec = _flag_value(words, "--cohort")
    if spec:
        return spec
    scripts = ("sweep.py", "ablation.py", "encoders.py")  # their default cohort
    if any(w.endswith(scripts) for w in words[:2]) and _flag_value(words, "--store") is None:
        return DEFAULT_RUN_COHORT
    raise ValueError(
        f"{run_dir}: cannot tell from its command ({command!r}) which cohort it was trained on; "
        "pass the cohort (--cohort manifest.csv, mias:DIR, phantom...)"
    )


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
    the CSV's folder), optionally `kind` (default "lesion"). The phantom's lesions.csv is one.
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
    """The cohort's own ground truth: mini-MIAS circles, or the phantom's lesions.csv; [] if
    it has none."""
    if cohort.lesions:
        return [("", les.path, tuple(les.box), les.kind) for les in cohort.lesions]
    if cohort.name == "phantom" and cohort.bags:
        lesions = Path(cohort.bags[0].images[0].path).parent.parent / "lesions.csv"
        if lesions.is_file():
            return read_truths(lesions)
    return []


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


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


BOX_COLUMNS = ("bag_id", "view", "view_code", "probability", "score", "y0", "x0", "y1", "x1",
               "best_iou")  # fmt: skip
BAG_COLUMNS = ("bag_id", "patient_id", "label", "probability", "probability_no_overlap",
               "views", "tiles", "boxes", "overlays")  # fmt: skip
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


def _write_bag(acc: _Collected, result: BagExplanation, truths, out: Path, prediction: dict,
               *, save_maps: bool, default_spacing_mm) -> None:
    """Overlays (and maps) of one explained bag, and its rows in `acc`."""
    view_truths = _view_truths(truths, result.views)
    names = _overlay_names(result.bag_id, result.views)
    if any(v.name in view_truths for v in result.views):
        top = max(result.views, key=lambda v: float(v.attention.max(initial=0.0)))
        peak = peak_point(top.attention)
        gap = min((point_to_box(peak, t.box) for t in view_truths.get(top.name, [])),
                  default=float("inf"))
        sides = top.tile_boxes[:, 2:] - top.tile_boxes[:, :2]  # [T, 2]
        acc.pointing.append((gap, float(np.median(sides)) if len(sides) else 0.0))
    for v, name in zip(result.views, names):
        tboxes = _record_view(acc, result.bag_id, result.probability, v,
                              view_truths.get(v.name, []), default_spacing_mm)
        overlay_image(v.pixels, v.attention, reference=result.peak, predicted=v.boxes,
                      scores=v.scores, truths=tboxes).save(out / "overlays" / name)
        if save_maps:
            np.save(out / "maps" / name.replace(".png", ".npy"), v.attention.astype(np.float16))
    acc.bag_rows.append({
        "bag_id": result.bag_id, "patient_id": result.patient_id,
        "label": prediction.get("label", result.raw_label),
        "probability": f"{result.probability:.6f}",
        "probability_no_overlap": prediction.get("p_best", ""),
        "views": len(result.views), "tiles": sum(len(v.weights) for v in result.views),
        "boxes": sum(len(v.boxes) for v in result.views), "overlays": " ".join(names),
    })  # fmt: skip


def explain_run(
    run_dir, out_dir, *, cohort=None, split: str = "test", max_bags: int | None = None,
    overlap: float = DEFAULT_OVERLAP, lesions=None, threshold: float = BOX_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD, default_spacing_mm: float | None = None,
    device: str = "auto", model_dir: str | None = None, precision: str | None = None,
    batch_size: int | None = None, save_maps: bool = False, progress: bool = True,
    command: str = "", explainer: Explainer | None = None,
) -> dict:  # fmt: skip
    """Explain a run's bags and write, under out_dir:

      overlays/<bag>_<view>.png   the view (grey), its attention map (colour), predicted boxes
                                  (red, with scores) and ground truth (green), source frame
      maps/<bag>_<view>.npy       the attention maps (float16), with save_maps
      boxes.csv                   every predicted box: bag, view (ref, else path), view code,
                                  probability, score, y0, x0, y1, x1, best IoU with a truth
      bags.csv                    per bag: label, probability (overlapping tiles and the run's
                                  own), views, tiles, boxes, overlay files
      detection.json              `detection_report`, `localisation`, the settings and the
                                  command

    Args:
      run_dir: a sweep folder (results.json, predictions.csv, best/).
      cohort: a Cohort or spec; None = the run's (`run_cohort_spec`).
      split: "train", "val", "test" (from the run's predictions.csv) or "all".
      max_bags: explain only the first this many bags of the split (cohort order).
      lesions: ground-truth CSV (`read_truths`); None = the cohort's own (`cohort_truths`).
      default_spacing_mm: pixel spacing of views whose files give none (size buckets).
      explainer: use this instead of `load_explainer(run_dir, ...)` (tests, notebooks).

    Returns:
      The dict written to detection.json ("bags", "views", "failed": [(bag_id, reason)],
      "detection": `detection_report`, "localisation", "settings", ...) plus "out".
    """
    from milpf_jax.reading.cohort import Cohort, resolve_cohort
    from milpf_jax.sweep import write_json
    from milpf_jax.extraction.extract import cache_root, cohort_identity
    from milpf_jax.reading.imaging import ImageReadError

    run_dir, out = Path(run_dir), Path(out_dir)
    if not isinstance(cohort, Cohort):
        cohort = resolve_cohort(cohort or run_cohort_spec(run_dir), cache_dir=cache_root())
    explainer = explainer or load_explainer(
        run_dir, overlap=overlap, device=device, model_dir=model_dir, precision=precision,
        batch_size=batch_size)  # fmt: skip
    stored_id = explainer.store_attrs.get("cohort_id")
    if stored_id and stored_id != cohort_identity(cohort):
        log.warning("cohort %s differs from the one the run's store was made from (other bags, "
                    "labels or image paths)", cohort.name)
    from milpf_jax.sweep import read_predictions

    has_predictions = (Path(run_dir) / "predictions.csv").is_file()
    predictions = read_predictions(run_dir) if has_predictions else {}
    bags = select_bags(cohort, predictions, split, max_bags)
    truths = read_truths(lesions) if lesions else cohort_truths(cohort)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    if save_maps:
        (out / "maps").mkdir(exist_ok=True)
    acc = _Collected()
    for bag in progress_bar(bags, desc="explain", unit="bag", disable=not progress):
        try:
            result = explain_bag(explainer, bag, threshold=threshold, keep_pixels=True)
        except (ImageReadError, FileNotFoundError, ValueError) as err:
            log.warning("bag %s: not explained: %s", bag.bag_id, err)
            pseudonymised = any(i.ref for i in bag.images)  # its reasons would name a path
            acc.failed.append((bag.bag_id, "a view could not be read or tiled"
                               if pseudonymised else str(err)))  # fmt: skip
            continue
        _write_bag(acc, result, truths, out, predictions.get(bag.bag_id, {}),
                   save_maps=save_maps, default_spacing_mm=default_spacing_mm)
    _write_csv(out / "boxes.csv", BOX_COLUMNS, acc.box_rows)
    _write_csv(out / "bags.csv", BAG_COLUMNS, acc.bag_rows)
    summary = {
        "command": command, "run": str(run_dir), "cohort": cohort.name, "split": split,
        "bags": len(acc.bag_rows), "views": len(acc.spacing), "failed": acc.failed,
        "ground_truth": Path(lesions).name if lesions else
                        "the cohort's own" if truths else "none",
        "settings": {
            "overlap": explainer.tiling.overlap, "threshold": threshold,
            "iou_threshold": iou_threshold, "default_spacing_mm": default_spacing_mm,
            "tiling": dataclasses.asdict(explainer.tiling), "encoder": explainer.encoder.spec.name,
        },
        "detection": detection_report(acc.detections, acc.truths, spacing_mm=acc.spacing,
                                      iou_threshold=iou_threshold),
        "localisation": localisation(acc.pointing),
        "definitions": DEFINITIONS,
    }  # fmt: skip
    write_json(out / "detection.json", summary)
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
    return "\n".join(lines)
