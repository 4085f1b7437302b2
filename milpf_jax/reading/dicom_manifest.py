"""A manifest from a folder of DICOMs and a label sheet (`experiments/manifest.py --dicom-dir`).

Patient, exam, laterality and view come from the headers (`milpf_jax.reading.dicom`), labels
and splits from a sheet keyed by accession number or study UID; the manifest is written
atomically and read back through `read_manifest`, so it is checked like any other.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from milpf_jax.files import write_csv
from milpf_jax.reading import dicom
from milpf_jax.reading.cohort import SPLIT_CODES, Cohort, normalize_label
from milpf_jax.reading.manifest import (
    REQUIRED_COLUMNS,
    VIEW_RANK,
    label_column,
    label_kind_of,
    read_manifest,
)
from milpf_jax.reading.pseudonym import pseudonymise_images
from milpf_jax.reading.tables import add_problem, listing, raise_problems, read_csv

log = logging.getLogger(__name__)

_LABEL_KEYS = {"accession_number": "AccessionNumber", "study_instance_uid": "StudyInstanceUID"}


def _dicom_images(dicom_dir: Path, key_attr: str) -> list[dict[str, str]]:
    """Header fields of every image DICOM under `dicom_dir` (recursive).

    Non-DICOM files, DICOMDIRs and objects without pixels are skipped (logged); FOR PROCESSING
    (raw detector) images are skipped too because the encoders expect FOR PRESENTATION images.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    found, skipped = [], Counter()
    for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped["not DICOM"] += 1
            continue
        except Exception as err:  # pydicom raises many types; name the file and keep the cause
            raise ValueError(
                f"{path}: cannot read DICOM header: {type(err).__name__}: {err}"
            ) from err
        if not dicom.is_image_object(ds):
            skipped["not an image"] += 1
            continue
        if dicom.for_processing(ds):
            skipped["FOR PROCESSING"] += 1
            continue
        found.append(
            {
                "file": str(path),
                "patient_id": str(ds.get("PatientID", "") or "").strip(),
                "exam_key": str(ds.get(key_attr, "") or "").strip(),
                "laterality": dicom.laterality_text(ds),
                "view": dicom.view_position(ds),
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "").strip(),
            }
        )
    if skipped:
        log.warning("%s: skipped %s", dicom_dir, dict(skipped))
    return found


def _check_dicom_images(dicom_dir: Path, images: list[dict[str, str]], key_attr: str) -> None:
    problems: dict[str, list[str]] = {}
    for im in images:
        rel = os.path.relpath(im["file"], dicom_dir)
        for field, attr in (("patient_id", "PatientID"), ("exam_key", key_attr)):
            if not im[field]:
                add_problem(problems, f"no {attr}", rel)
        if im["laterality"] not in ("L", "R"):
            add_problem(
                problems,
                "ImageLaterality/Laterality is not L or R",
                f"{rel} ({im['laterality']!r})",
            )
        if not im["view"]:
            add_problem(problems, "no ViewPosition (nor a known View Code Sequence)", rel)
    by_uid: dict[str, list[str]] = {}
    for im in images:
        if im["sop_instance_uid"]:
            rel = os.path.relpath(im["file"], dicom_dir)
            by_uid.setdefault(im["sop_instance_uid"], []).append(rel)
    for uid, files in by_uid.items():
        if len(files) > 1:
            add_problem(problems, "same SOPInstanceUID in several files",
                        f"{' and '.join(files)} ({uid})")
    if not images:
        problems["no DICOM images found"] = [str(dicom_dir)]
    raise_problems(dicom_dir, problems)


def _read_label_sheet(path: Path) -> tuple[str, str, dict, bool]:
    """Label sheet -> (key column, label column, {(key, lat): (label, split)}, has split column).

    An empty or absent laterality labels both breasts of the exam. A key may carry one
    exam-level row or breast-level rows, not both.
    """
    header, cells = read_csv(path)
    keys = [k for k in _LABEL_KEYS if k in header]
    if len(keys) != 1:
        raise ValueError(
            f"{path}: expected exactly one key column of {list(_LABEL_KEYS)}, found "
            f"{keys or 'none'} among columns {header}"
        )
    key_col, label_col = keys[0], label_column(path, header)
    problems: dict[str, list[str]] = {}
    labels: dict[tuple[str, str], tuple[str, str]] = {}
    rows_of: dict[tuple[str, str], list[int]] = {}
    for row, c in cells:
        key, lat = c[key_col], c.get("laterality", "").upper()
        label = normalize_label(label_kind_of(label_col), c[label_col])
        split = c.get("split", "").lower()
        if not key:
            add_problem(problems, f"empty {key_col!r}", f"row {row}")
        if lat not in ("", "L", "R"):
            add_problem(problems, "laterality is not L, R or empty", f"row {row} ({lat!r})")
        if label is None:
            add_problem(problems, f"bad {label_col!r} value", f"row {row} ({c[label_col]!r})")
        if split and split not in SPLIT_CODES:
            add_problem(problems, "'split' is not train, val, test or empty", f"row {row}")
        labels[(key, lat)] = (label or "", split)
        rows_of.setdefault((key, lat), []).append(row)
    for (key, lat), rows in rows_of.items():
        if len(rows) > 1:
            add_problem(
                problems,
                "label given more than once",
                f"{key} {lat or 'exam'}: rows {', '.join(map(str, rows))}",
            )
        if lat and (key, "") in rows_of:
            add_problem(
                problems,
                "exam-level and breast-level labels for one exam",
                f"{key}: rows {', '.join(map(str, rows_of[(key, '')] + rows))}",
            )
    raise_problems(path, problems)
    return key_col, label_col, labels, "split" in header


def manifest_from_dicoms(
    dicom_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    key: bytes | None = None,
) -> Cohort:
    """Write a manifest CSV from DICOM headers and a label sheet; return it read back.

    Headers used: PatientID, the exam key (AccessionNumber or StudyInstanceUID, whichever column
    the label sheet is keyed by: `accession_number` or `study_instance_uid`; it becomes
    `exam_id`), ImageLaterality (else Laterality) and ViewPosition (else the View Code
    Sequence). The label sheet has `birads` or `label`, optionally `laterality` (breast-level
    labels; empty means both breasts) and `split`. Paths are written relative to the manifest's
    folder when they lie under it. A bag without a label is an error listing its files.

    With `key` (see `read_or_create_key`) the manifest is pseudonymised after the label join:
    patient_id and exam_id become keyed hashes (`pseudonym`), a `view_ref` column names each
    image by a keyed hash of its path relative to the manifest's folder (stores and reports
    record it instead of the path), and no DICOM UID is written. `path` stays, for the
    extractor: keep the manifest private, beside the key.
    """
    dicom_dir, labels_path, out = Path(dicom_dir).resolve(), Path(labels_csv), Path(out_csv)
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {dicom_dir}")
    key_col, label_col, labels, has_split = _read_label_sheet(labels_path)
    key_attr = _LABEL_KEYS[key_col]
    images = _dicom_images(dicom_dir, key_attr)
    _check_dicom_images(dicom_dir, images, key_attr)

    unlabelled: dict[str, list[str]] = {}
    for im in images:
        found = labels.get((im["exam_key"], im["laterality"])) or labels.get((im["exam_key"], ""))
        if found is None:
            bag = f"{key_attr} {im['exam_key']} breast {im['laterality']}"
            unlabelled.setdefault(bag, []).append(os.path.relpath(im["file"], dicom_dir))
        else:
            im["label"], im["split"] = found
    if unlabelled:
        raise ValueError(
            f"{labels_path}: no label for {len(unlabelled)} bag(s) found in {dicom_dir}:\n"
            + "\n".join(f"- {bag}: {listing(files)}" for bag, files in unlabelled.items())
        )

    out_dir = out.resolve().parent
    columns = [*REQUIRED_COLUMNS, label_col] + (["split"] if has_split else [])
    if key is None:
        columns.append("sop_instance_uid")
    else:
        pseudonymise_images(images, key, out_dir)
        columns.append("view_ref")
    images.sort(
        key=lambda im: (
            im["patient_id"],
            im["exam_key"],
            im["laterality"],
            VIEW_RANK.get(im["view"], len(VIEW_RANK)),
            im["view"],
            im["file"],
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for im in images:
        under = Path(im["file"]).is_relative_to(out_dir)
        path = os.path.relpath(im["file"], out_dir) if under else im["file"]
        values = {**im, "path": path, "exam_id": im["exam_key"], label_col: im["label"]}
        rows.append([values[c] for c in columns])
    write_csv(out, columns, rows)  # a reader never sees a half-written manifest
    return read_manifest(out)

