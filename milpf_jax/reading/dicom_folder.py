"""An unlabelled cohort straight from a folder of DICOMs: new exams to score (`predict.py`).

No label sheet: patient = PatientID, exam = StudyInstanceUID, laterality = ImageLaterality else
Laterality, view = ViewPosition else the View Code Sequence (`milpf_jax.reading.dicom`). Every
bag's label kind is `none` (raw label ""), which `load_packed` keeps. A file that cannot be one
of those images (not DICOM, not an image, not MG, FOR PROCESSING, a header field missing, a
SOP Instance UID seen before) is not an error: it is listed with its reason, and the rest are
scored. The folder is read again by the spec `dicoms:DIR`.

    cohort, failures = read_dicom_folder("new-exams/")
    failures[0]      # {"bag_id": "", "path": ".../notes.txt", "stage": "read", "reason": ...}
"""

from __future__ import annotations

import os
from pathlib import Path

from milpf_jax.reading import dicom
from milpf_jax.reading.cohort import BagSpec, Cohort, ImageRef, bag_id_of
from milpf_jax.reading.manifest import view_order

LABEL_KIND = "none"  # no label given: a cohort to score, not to train or test on


def _failure(path, reason: str, bag_id: str = "") -> dict[str, str]:
    return {"bag_id": bag_id, "path": str(path), "stage": "read", "reason": reason}


def _header(path: Path):
    """(dataset without pixels, None) or (None, why the file is not read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True), None
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as err:  # pydicom raises many types; keep the cause for the list
        return None, f"cannot read the DICOM header: {type(err).__name__}: {err}"


def _image_fields(ds) -> tuple[dict[str, str], str | None]:
    """The fields a bag needs, and why the image cannot be scored (None if it can)."""
    fields = {
        "patient_id": str(ds.get("PatientID", "") or "").strip(),
        "exam_id": str(ds.get("StudyInstanceUID", "") or "").strip(),
        "laterality": dicom.laterality(ds) or "",
        "view": dicom.view_position(ds),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "").strip(),
    }
    if not dicom.is_image_object(ds):
        return fields, "not an image object (no Rows, or a DICOMDIR)"
    modality = str(ds.get("Modality", "") or "").strip()
    if modality != "MG":
        return fields, f"Modality is {modality or 'empty'!r}; expected 'MG' (mammography)"
    if dicom.for_processing(ds):
        return fields, "'FOR PROCESSING' image (raw detector data); expected FOR PRESENTATION"
    missing = [name for name, key in (("PatientID", "patient_id"),
                                      ("StudyInstanceUID", "exam_id"),
                                      ("ImageLaterality/Laterality L or R", "laterality"),
                                      ("ViewPosition/View Code Sequence", "view"))
               if not fields[key]]  # fmt: skip
    if missing:
        return fields, f"no {', no '.join(missing)}"
    return fields, None


def read_dicom_folder(dicom_dir: str | os.PathLike) -> tuple[Cohort, list[dict[str, str]]]:
    """The unlabelled cohort of every usable mammogram under `dicom_dir` (recursive), and the
    files left out: rows of bag_id, path, stage ("read") and reason, the columns of an
    extraction's failure list (`milpf_jax.extraction.failures`).

    Raises FileNotFoundError when the folder does not exist; a folder with no usable image gives
    a cohort without bags (the caller says so, with the failures).
    """
    root = Path(dicom_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return read_dicom_files(files, name=f"dicoms-{root.name or 'folder'}", spec=f"dicoms:{root}")


def read_dicom_files(paths, *, name: str = "dicoms", spec: str = ""
                     ) -> tuple[Cohort, list[dict[str, str]]]:
    """`read_dicom_folder` on the files given (a missing file is listed, not raised)."""
    failures: list[dict[str, str]] = []
    images: dict[str, list[ImageRef]] = {}
    ids: dict[str, tuple[str, str, str]] = {}
    seen_uid: dict[str, Path] = {}
    for path in (Path(p).expanduser().resolve() for p in paths):
        ds, why = _header(path) if path.is_file() else (None, "file not found")
        if ds is None:
            failures.append(_failure(path, why))
            continue
        fields, why = _image_fields(ds)
        bag_id = (bag_id_of(fields["patient_id"], fields["exam_id"], fields["laterality"])
                  if fields["patient_id"] and fields["exam_id"] and fields["laterality"] else "")
        uid = fields["sop_instance_uid"]
        if why is None and uid in seen_uid:
            why = f"same SOPInstanceUID as {seen_uid[uid]}"
        if why is not None:
            failures.append(_failure(path, why, bag_id))
            continue
        if uid:
            seen_uid[uid] = path
        images.setdefault(bag_id, []).append(
            ImageRef(path=str(path), view=fields["view"], laterality=fields["laterality"], row=0))
        ids[bag_id] = (fields["patient_id"], fields["exam_id"], fields["laterality"])
    bags = tuple(
        BagSpec(bag_id=bag_id, patient_id=ids[bag_id][0], exam_id=ids[bag_id][1],
                laterality=ids[bag_id][2], raw_label="", split_given=-1,
                images=tuple(sorted(images[bag_id], key=view_order)))
        for bag_id in sorted(images)
    )  # fmt: skip
    return Cohort(name=name, label_kind=LABEL_KIND, bags=bags, spec=spec), failures
