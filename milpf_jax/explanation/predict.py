"""A finished run on new exams: every breast and every exam scored, flagged at the run's own
validation thresholds, and compared with the run's validation scores (`experiments/predict.py`).

Images are read, tiled and encoded as the run's training store was (its `encoder` and
`preprocessing` attributes): `extract` caches the embeddings in a store keyed as extraction
keys it, so a rerun encodes nothing, and the run's own cohort finds the run's own store. The
best head then scores every bag the store holds, labelled or not.

    result = predict_images("runs/phantom-...", "new-exams/")   # a folder of MG DICOMs
    result.breasts[0]  # {"bag_id": ..., "p": 0.93, "flag_bacc": 1, "flag_sens90": 1, ...}

Thresholds: `flag_bacc` at the validation threshold of maximal balanced accuracy
(`best.test.threshold` of results.json), `flag_sens90` at the highest validation threshold that
keeps sensitivity 0.9 (`best.test.threshold_sens90`); an exam (score = the maximum over its
breasts) at the same two thresholds fixed on validation exams (`best.test_exam`). They may not
transfer to a new site: `summary["distribution"]` compares the new scores with the run's
validation scores, and `thresholds=` takes others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from milpf_jax.evaluation import runs
from milpf_jax.extraction.failures import FAILURE_COLUMNS

log = logging.getLogger(__name__)

BREAST_COLUMNS = ("bag_id", "patient_id", "exam_id", "laterality", "views", "p", "flag_bacc",
                  "flag_sens90")  # fmt: skip
EXAM_COLUMNS = ("patient_id", "exam_id", "breasts", "p", "flag_bacc", "flag_sens90")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class NoUsableImages(ValueError):
    """Nothing to score: every input file was left out (the reasons are in `failures`)."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True)
class Thresholds:
    """Where a breast (bag) and an exam are flagged: p >= threshold (metrics' convention)."""

    bacc: float
    sens90: float
    exam_bacc: float | None = None
    exam_sens90: float | None = None
    source: str = ""

    def as_json(self) -> dict:
        return dict(threshold=self.bacc, threshold_sens90=self.sens90,
                    exam_threshold=self.exam_bacc, exam_threshold_sens90=self.exam_sens90,
                    source=self.source)  # fmt: skip


def _value(entry, where: str) -> float:
    if isinstance(entry, dict):
        entry = entry.get("value")
    if entry is None:
        raise ValueError(f"{where}: no value")
    return float(entry)


def thresholds_of_results(results: dict, where: str) -> Thresholds:
    """The validation thresholds a results.json records (`best.test`, `best.test_exam`)."""
    best = results.get("best") or {}
    test, exam = best.get("test") or {}, best.get("test_exam") or {}
    if "threshold" not in test or "threshold_sens90" not in test:
        raise ValueError(f"{where}: no best.test.threshold / threshold_sens90 (not a results.json "
                         "of a finished sweep?)")
    return Thresholds(
        bacc=_value(test["threshold"], f"{where}: best.test.threshold"),
        sens90=_value(test["threshold_sens90"], f"{where}: best.test.threshold_sens90"),
        exam_bacc=_value(exam["threshold"], where) if "threshold" in exam else None,
        exam_sens90=_value(exam["threshold_sens90"], where) if "threshold_sens90" in exam else None,
        source=str(where),
    )


def read_thresholds(path) -> Thresholds:
    """Thresholds from a file: a run's results.json, or a JSON object with `threshold` and
    `threshold_sens90` (and optionally `exam_threshold`, `exam_threshold_sens90`), as predict's
    own summary.json records under "thresholds"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if "best" in data:
        return thresholds_of_results(data, str(path))
    data = data.get("thresholds", data)
    try:
        return Thresholds(
            bacc=float(data["threshold"]), sens90=float(data["threshold_sens90"]),
            exam_bacc=None if data.get("exam_threshold") is None else float(data["exam_threshold"]),
            exam_sens90=(None if data.get("exam_threshold_sens90") is None
                         else float(data["exam_threshold_sens90"])),
            source=str(path))  # fmt: skip
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: expected numbers under 'threshold' and 'threshold_sens90' "
                         f"(and optionally 'exam_threshold', 'exam_threshold_sens90'): {err}"
                         ) from err


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringRun:
    """What scoring new images needs of a finished run."""

    path: Path
    head: object  # milpf_jax.learning.inference.Head
    store_attrs: dict
    task: str | None
    mapping: str | None
    thresholds: Thresholds
    val_p: np.ndarray  # the best head's validation scores, per breast
    val_exam_p: np.ndarray | None  # and per exam (max over its breasts), when exams exist


def load_scoring_run(run_dir) -> ScoringRun:
    """The run's best head, the store attributes it was trained on, its thresholds and its
    validation scores. Refuses a folder without a best head (naming it) and a run trained on
    an imported store (no encoder to re-run on new images)."""
    from milpf_jax.data.imported import imported_encoder
    from milpf_jax.evaluation.metrics import exam_level
    from milpf_jax.explanation.explain import _run_store_attrs
    from milpf_jax.learning.checkpoint import load_head, read_metadata

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    best = run_dir / "best"
    if not best.is_dir():
        raise FileNotFoundError(f"{best}: no best head in the run folder (a finished "
                                "experiments/sweep.py folder has best/, results.json and "
                                "predictions.csv)")
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: not found; the run's thresholds are in it")
    results = runs.read_results(run_dir)
    meta = read_metadata(best)
    attrs = _run_store_attrs(run_dir)
    if imported_encoder(attrs) is not None:
        raise ValueError(
            f"{run_dir} was trained on a store of imported features (encoder "
            f"{attrs['encoder']!r}): there is no encoder or tiling to re-run on new images. "
            "Import the new images' features the same way and score that store with "
            "experiments/evaluate.py")
    val = runs.read_split_predictions(run_dir, "val")
    exams = exam_level(val)
    return ScoringRun(
        path=run_dir, head=load_head(best), store_attrs=dict(attrs),
        task=meta.get("task") or (results.get("data") or {}).get("task"),
        mapping=meta.get("mapping") or (results.get("data") or {}).get("mapping"),
        thresholds=thresholds_of_results(results, str(results_path)),
        val_p=np.asarray(val.p, np.float64),
        val_exam_p=None if exams is None else np.asarray(exams.p, np.float64))  # fmt: skip


def extract_config_of(attrs: dict, **overrides):
    """The ExtractConfig that reads, tiles and encodes images as the store `attrs` describe
    (encoder, tiling, precision, encoder batch size); `overrides` set how to run it."""
    from milpf_jax.extraction.config import ExtractConfig
    from milpf_jax.extraction.extract import tiling_from_attrs
    from milpf_jax.reading.imaging import READER_VERSION

    tiling, reader_version = tiling_from_attrs(attrs["preprocessing"])
    if reader_version != READER_VERSION:
        raise ValueError(
            f"the run's store was read under reading rule {reader_version} and images are now "
            f"read under rule {READER_VERSION} (milpf_jax.reading.imaging): new images would "
            "not be read as the head's training images were; retrain the head on a store "
            "extracted now")
    precision = attrs.get("precision") or "auto"
    settings = dict(
        encoder=attrs["encoder"], tile_size=tiling.tile_size, overlap=tiling.overlap,
        tissue_threshold=tiling.tissue_threshold, pixel_spacing_mm=tiling.pixel_spacing_mm,
        preset=tiling.preset, batch_size=int(attrs.get("batch_size") or 32),
        precision=precision if precision in ("auto", "float32", "bfloat16") else "auto",
    )  # fmt: skip
    return ExtractConfig(**{**settings, **overrides})


# --- the images ------------------------------------------------------------------------------


def read_inputs(paths_or_manifest, *, cache_dir=None, progress: bool = False):
    """(Cohort, read failures) of what to score: a folder of DICOMs, a list of DICOM files, a
    manifest CSV or any cohort spec (`milpf_jax.reading.sources.read_cohort`)."""
    from milpf_jax.reading.dicom_folder import read_dicom_files, read_dicom_folder
    from milpf_jax.reading.sources import read_cohort

    if isinstance(paths_or_manifest, (list, tuple)):
        return read_dicom_files(paths_or_manifest)
    text = os.fspath(paths_or_manifest)
    if Path(text).is_dir():
        return read_dicom_folder(text)
    return read_cohort(text, cache_dir=cache_dir, progress=progress), []


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Rows of predictions.csv (`breasts`), exams.csv (`exams`) and failures.csv, the store
    the images were encoded into, and the summary (counts, thresholds, distribution)."""

    breasts: list[dict]
    exams: list[dict]
    failures: list[dict]
    store: str
    summary: dict = field(default_factory=dict)
    packed: object = None  # the PackedBags scored (maps need their tiles), not written
    cohort: object = None  # the Cohort read (its bags' files), not written
    views: list = field(default_factory=list)  # per scored breast its `stored.StoredView`s


def _flag(p: float, threshold: float | None):
    return "" if threshold is None else int(p >= threshold)


def exam_rows(breasts: Sequence[dict], thresholds: Thresholds) -> list[dict]:
    """One row per exam: score = the maximum over its breasts' scores, flagged at the
    exam-level thresholds (empty flags when the run has none)."""
    by_exam: dict[tuple[str, str], list[float]] = {}
    for row in breasts:
        by_exam.setdefault((row["patient_id"], row["exam_id"]), []).append(float(row["p"]))
    rows = []
    for (patient, exam), ps in sorted(by_exam.items()):
        p = max(ps)
        rows.append(dict(patient_id=patient, exam_id=exam, breasts=len(ps), p=p,
                         flag_bacc=_flag(p, thresholds.exam_bacc),
                         flag_sens90=_flag(p, thresholds.exam_sens90)))
    return rows


def _describe(p: np.ndarray) -> dict:
    if not len(p):
        return dict(n=0)
    q = np.quantile(p, QUANTILES)
    return dict(n=int(len(p)), mean=float(p.mean()), std=float(p.std()),
                quantiles={f"{k:g}": float(v) for k, v in zip(QUANTILES, q)})


def compare_distributions(new: np.ndarray, val: np.ndarray, thresholds: tuple) -> dict:
    """The new scores against the run's validation scores: quantiles of both, the share flagged
    at each threshold, and the two-sample Kolmogorov-Smirnov statistic (scipy) with its p-value:
    a shift says the thresholds may not transfer."""
    from scipy.stats import ks_2samp

    new, val = np.asarray(new, np.float64), np.asarray(val, np.float64)
    out = dict(new=_describe(new), validation=_describe(val), flagged={})
    for name, t in thresholds:
        if t is not None and len(new) and len(val):
            out["flagged"][name] = dict(threshold=float(t), new=float(np.mean(new >= t)),
                                        validation=float(np.mean(val >= t)))
    if len(new) and len(val):
        ks = ks_2samp(new, val)
        out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    return out


def _store_failures(store_path, cohort) -> list[dict]:
    """The extraction's failure rows for the bags of `cohort` (plan and encode stages)."""
    from milpf_jax.extraction.failures import read_failures

    wanted = {b.bag_id for b in cohort.bags}
    return [dict(r) for r in read_failures(store_path) if r["bag_id"] in wanted]


def predict_images(run, paths_or_manifest, *, thresholds: Thresholds | None = None,
                   cache_dir=None, progress: bool = False, **extract_settings) -> Predictions:
    """Score new images with a finished run's best head; nothing is written but the cached
    store of their embeddings (reused on a rerun).

    Args:
      run: a sweep folder (or a `ScoringRun`).
      paths_or_manifest: a folder of MG DICOMs (unlabelled: patient = PatientID, exam =
        StudyInstanceUID, `milpf_jax.reading.dicom_folder`), a list of DICOM files, a manifest
        CSV or a cohort spec ("phantom", "mias:DIR", ...).
      thresholds: where to flag; default the run's validation thresholds.
      extract_settings: how to run the extraction (`device`, `workers`, `model_dir`).

    Returns:
      Predictions with one row per scored breast and exam, and every file or bag left out
      with its stage and reason. Raises NoUsableImages when nothing can be scored.
    """
    from milpf_jax.data.packed import load_packed
    from milpf_jax.explanation.stored import stored_views
    from milpf_jax.extraction.extract import extract
    from milpf_jax.learning.train import predict_head

    scoring = run if isinstance(run, ScoringRun) else load_scoring_run(run)
    thresholds = thresholds or scoring.thresholds
    cohort, failures = read_inputs(paths_or_manifest, cache_dir=cache_dir, progress=progress)
    if not cohort.bags:
        raise NoUsableImages(
            f"{paths_or_manifest}: no usable mammogram to score ({len(failures)} file(s) left "
            "out" + (f", e.g. {failures[0]['path']}: {failures[0]['reason']}" if failures
                     else "") + ")", failures)
    cfg = extract_config_of(scoring.store_attrs, **extract_settings)
    result = extract(cohort, cfg, progress=progress, cache_dir=cache_dir)
    failures = failures + _store_failures(result.path, cohort)
    packed = load_packed(result.path, task=_task_held(result.path, scoring.task),
                         mapping=scoring.mapping if cohort.label_kind != "none" else None,
                         allow_partial=True, unlabelled=True)
    if packed.dim != scoring.head.dim:
        raise ValueError(f"store {result.path} holds D={packed.dim} embeddings but the head of "
                         f"{scoring.path} was trained on D={scoring.head.dim}")
    if not packed.n_bags:
        raise NoUsableImages(f"{paths_or_manifest}: every bag failed to extract (see the "
                             "failures)", failures)
    p = predict_head(scoring.head, packed)
    views = stored_views(result.path, packed.store_index)
    breasts = [
        dict(bag_id=str(packed.bag_ids[b]), patient_id=str(packed.patient_ids[b]),
             exam_id=str(packed.exam_ids[b]), laterality=str(packed.lateralities[b]),
             views=" ".join(v.code for v in views[b]), p=float(p[b]),
             flag_bacc=_flag(float(p[b]), thresholds.bacc),
             flag_sens90=_flag(float(p[b]), thresholds.sens90))
        for b in range(packed.n_bags)
    ]  # fmt: skip
    exams = exam_rows(breasts, thresholds)
    scored = set(packed.bag_ids.tolist())
    unscored = sorted({b.bag_id for b in cohort.bags} - scored)
    summary = dict(
        run=str(scoring.path), input=os.fspath(paths_or_manifest)
        if not isinstance(paths_or_manifest, (list, tuple)) else f"{len(paths_or_manifest)} files",
        store=str(result.path), encoder=scoring.store_attrs.get("encoder"),
        breasts=len(breasts), exams=len(exams), failed_files=len(failures),
        unscored_breasts=unscored, encoded_bags=int(result.encoded_bags),
        thresholds=thresholds.as_json(),
        distribution=dict(
            breast=compare_distributions(p, scoring.val_p, (("bacc", thresholds.bacc),
                                                            ("sens90", thresholds.sens90))),
            exam=(compare_distributions(np.array([r["p"] for r in exams]), scoring.val_exam_p,
                                        (("bacc", thresholds.exam_bacc),
                                         ("sens90", thresholds.exam_sens90)))
                  if scoring.val_exam_p is not None else None)),
    )  # fmt: skip
    return Predictions(breasts=breasts, exams=exams, failures=failures, store=str(result.path),
                       summary=summary, packed=packed, cohort=cohort, views=views)


def _task_held(store_path, task: str | None) -> str | None:
    """The run's task where the store holds it (a cohort with named tasks), else the store's
    default (an unlabelled folder has one task, `none`)."""
    from milpf_jax.data.store import Store

    held = [t for t, _ in Store.open(store_path).tasks()]
    return task if task in held else None


# --- files out -------------------------------------------------------------------------------


def _fmt(row: dict) -> dict:
    return {k: (f"{v:.8f}" if isinstance(v, float) else v) for k, v in row.items()}


def write_predictions(out_dir, result: Predictions) -> dict[str, Path]:
    """OUT/predictions.csv, exams.csv, failures.csv and summary.json, each written under a
    temporary name and renamed (`milpf_jax.files`), so no file is ever half-written."""
    from milpf_jax.files import write_dict_csv, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return dict(
        predictions=write_dict_csv(out / "predictions.csv", BREAST_COLUMNS,
                                   map(_fmt, result.breasts)),
        exams=write_dict_csv(out / "exams.csv", EXAM_COLUMNS, map(_fmt, result.exams)),
        failures=write_dict_csv(out / "failures.csv", FAILURE_COLUMNS, result.failures),
        summary=write_json(out / "summary.json", result.summary),
    )


def format_summary(summary: dict) -> str:
    """The lines predict.py prints: counts, thresholds, and the new scores against validation."""
    t = summary["thresholds"]
    lines = [f"scored {summary['breasts']} breasts in {summary['exams']} exams "
             f"({summary['failed_files']} files or bags left out, "
             f"{len(summary['unscored_breasts'])} breasts without a score; "
             f"{summary['encoded_bags']} bags encoded)",
             f"thresholds ({t['source']}): breast bacc {t['threshold']:.4f}, sens90 "
             f"{t['threshold_sens90']:.4f}"
             + (f"; exam bacc {t['exam_threshold']:.4f}, sens90 {t['exam_threshold_sens90']:.4f}"
                if t.get("exam_threshold") is not None else "")]  # fmt: skip
    for level in ("breast", "exam"):
        d = summary["distribution"].get(level)
        if not d or not d["new"].get("n") or not d["validation"].get("n"):
            continue
        q_new, q_val = d["new"]["quantiles"], d["validation"]["quantiles"]
        lines.append(f"{level} scores, new (n={d['new']['n']}) vs the run's validation "
                     f"(n={d['validation']['n']}): median {q_new['0.5']:.3f} vs "
                     f"{q_val['0.5']:.3f}, 5-95% {q_new['0.05']:.3f}-{q_new['0.95']:.3f} vs "
                     f"{q_val['0.05']:.3f}-{q_val['0.95']:.3f}, KS {d['ks_statistic']:.3f} "
                     f"(p {d['ks_pvalue']:.3g})")
        for name, f in d["flagged"].items():
            lines.append(f"  flagged at {name} threshold {f['threshold']:.4f}: "
                         f"{100 * f['new']:.1f}% new vs {100 * f['validation']:.1f}% validation")
    return "\n".join(lines)


# --- maps, overlays and DICOM objects ---------------------------------------------------------

MAPS_MODES = ("store", "retile")


def explain_scored(run_dir, result: Predictions, cohort, *, maps: str = "store",
                   device: str = "auto", progress: bool = False) -> dict:
    """bag_id -> BagExplanation (maps, boxes and display pixels in each file's frame) of every
    scored breast: from the tiles already in the store (`store`, no encoder) or re-tiled with
    75% overlap and encoded again (`retile`, the paper's maps)."""
    from milpf_jax.progress import progress_bar

    if maps not in MAPS_MODES:
        raise ValueError(f"maps {maps!r}: expected one of {', '.join(MAPS_MODES)}")
    bags = {b.bag_id: b for b in cohort.bags}
    scored = [row["bag_id"] for row in result.breasts]
    if maps == "store":
        from milpf_jax.explanation.stored import stored_explanation
        from milpf_jax.learning.checkpoint import load_head

        head = load_head(runs.best_dir(run_dir))
        return {b: stored_explanation(head, result.packed, k, result.views[k])
                for k, b in progress_bar(list(enumerate(scored)), desc="maps", unit="bag",
                                         disable=not progress)}  # fmt: skip
    from milpf_jax.explanation.explain import explain_bag, load_explainer

    explainer = load_explainer(run_dir, device=device)
    return {b: explain_bag(explainer, bags[b], keep_pixels=True)
            for b in progress_bar(scored, desc="maps", unit="bag", disable=not progress)}


def _caption(image, breast: dict, laterality: str, view: str):
    """The picture with a band on top: side, view, the breast's probability and flags, and
    that this is a research result."""
    from PIL import Image, ImageDraw

    from milpf_jax.explanation.overlays import _font

    width = image.width
    size = max(12, round(width / 40))
    band = Image.new("RGB", (width, round(size * 3.2)), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    flags = ", ".join(name.removeprefix("flag_") for name in ("flag_bacc", "flag_sens90")
                      if breast.get(name) == 1) or "none"
    draw.text((size // 2, size // 4), f"{laterality}{view}   p = {breast['p']:.3f}   "
              f"flagged at: {flags}", fill=(255, 255, 255), font=_font(size))
    draw.text((size // 2, round(size * 1.7)), "milpf-jax research result, not for diagnosis",
              fill=(255, 200, 0), font=_font(round(size * 0.8)))
    out = Image.new("RGB", (width, image.height + band.height))
    out.paste(band, (0, 0))
    out.paste(image, (0, band.height))
    return out


def write_maps(out_dir, result: Predictions, explained: dict, *, dicom_out: bool = False,
               copy_identity: bool = False) -> dict:
    """OUT/overlays/<exam>/<side><view>.png for every scored view and, with `dicom_out`, per exam
    OUT/dicom/<exam>/ (`milpf_jax.explanation.dicom_out.write_exam`) with OUT/dicom/index.csv.
    Returns {"overlays": n, "dicom": [index rows]}."""
    from milpf_jax.explanation import dicom_out as dout
    from milpf_jax.explanation.explain import _safe
    from milpf_jax.explanation.overlays import overlay_image
    from milpf_jax.files import atomic_open, write_dict_csv

    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    by_exam: dict[str, list] = {}
    n = 0
    for row in result.breasts:
        bag = explained[row["bag_id"]]
        peak = bag.peak
        views = []
        for v in bag.views:
            name = f"{v.view or 'view'}"
            image = overlay_image(v.pixels, v.attention, reference=peak, predicted=v.boxes,
                                  scores=v.scores)
            path = (out / "overlays" / _safe(row["exam_id"])
                    / f"{row['laterality']}{_safe(name)}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "wb") as f:
                image.save(f, format="PNG")
            n += 1
            picture = np.asarray(_caption(image, row, row["laterality"], v.view))
            views.append(dout.ViewResult(
                path=v.path, name=f"{row['laterality']}{v.view}", view=v.view,
                laterality=row["laterality"], flipped=bool(v.flipped),
                attention=(v.attention / peak) if peak > 0 else v.attention,
                boxes=v.boxes, scores=v.scores, picture=picture))
        by_exam.setdefault(row["exam_id"], []).append(dout.BreastResult(
            bag_id=row["bag_id"], laterality=row["laterality"], probability=row["p"],
            flags={k: row[k] for k in ("flag_bacc", "flag_sens90")}, views=views))
    index = []
    if dicom_out:
        for exam, breasts in sorted(by_exam.items()):
            index += dout.write_exam(out / "dicom" / _safe(exam), exam, breasts,
                                     copy_identity=copy_identity)
        write_dict_csv(out / "dicom" / "index.csv", dout.INDEX_COLUMNS, index)
    return {"overlays": n, "dicom": index}
