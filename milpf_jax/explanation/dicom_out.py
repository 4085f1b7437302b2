"""Scores as DICOM objects a radiologist's viewer opens, built with highdicom (`predict.py
--dicom-out`), one folder per exam:

- `sc-<view>.dcm`, a **Secondary Capture** of each view with the attention map, the boxes and
  the breast's probability burned in: every viewer shows it;
- `sr.dcm`, a **Comprehensive SR** holding a TID 1500 Measurement Report: per breast its
  probability and flags (TID 1501, finding site the SCT breast side), per predicted box a
  closed POLYLINE on its source image with the box's score (TID 1410). TID 1500 rather than the
  Mammography CAD SR (TID 4000) that mammography workstations render: TID 4000's findings
  must be CAD marks with a detection/analysis algorithm and rendering intent, and writing one
  would need a CAD-SR library highdicom does not offer; TID 1500 is the template highdicom
  builds and validates, and OHIF, 3D Slicer and dcmtk read it.
- `seg-<view>.dcm`, a **fractional Segmentation** of each view's map on the source image's
  grid (values = attention relative to the breast's peak, 0..1 stored as 0..255). Not a
  Parametric Map: highdicom 0.28 cannot build one for a source without a patient coordinate
  system (a projection mammogram has no Image Position/Orientation; the map's frame gets an
  empty dimension index), while a fractional SEG of such an image is built and validated, and
  OHIF and 3D Slicer show it as a colour overlay.

Every object carries the source study's Study Instance UID and Patient ID, so a PACS files it
with the exam; the Secondary Captures and the SR carry the source's Frame of Reference UID (one
new UID per exam when the sources have none, listed in the index `write_exam` returns). The
Segmentation references its source image instead (Derivation Image Sequence, Referenced
Series): a SEG's Frame of Reference module also asks for plane geometry and a slice thickness
that a projection mammogram does not have (dciodvfy rejects it without them). Each kind of
object gets a new Series; manufacturer and model name
"milpf-jax" with the package version; and "research result, not for diagnosis" in the series
description. Nothing else of the source's header is copied: objects are built from a reference
that holds only the identifiers above and the image geometry (`reference_of`), with patient
name, birth date, sex, accession number and referring physician empty unless
`copy_identity=True`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SERIES_DESCRIPTION = "milpf-jax research result, not for diagnosis"
MANUFACTURER = "milpf-jax"
PRIVATE_SCHEME = "99MILPF"  # a private coding scheme for the head's scores
IDENTITY_KEYWORDS = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                     "ReferringPhysicianName")  # fmt: skip
GEOMETRY_KEYWORDS = ("Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing", "ImageLaterality",
                     "Laterality", "ViewPosition", "PatientOrientation")  # fmt: skip
REQUIRED_KEYWORDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID",
                     "SOPInstanceUID")  # fmt: skip
SERIES_NUMBERS = {"sc": 9001, "sr": 9002, "seg": 9003}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("milpf-jax")
    except PackageNotFoundError:  # a source checkout without an install
        return "0+unknown"


@dataclass
class ViewResult:
    """One scored view: its source file, its map on the source grid ([rows, cols], 0..1
    relative to the breast's peak), predicted boxes (y0, x0, y1, x1 half-open, source pixels)
    with scores, and the picture with the map burned in (RGB uint8 [rows, cols, 3])."""

    path: str
    name: str  # e.g. "LCC", used in file names
    view: str  # "CC", "MLO", ...
    laterality: str  # "L" | "R"
    flipped: bool  # the breast lies on the image's right (the chest wall at the right edge)
    attention: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    picture: np.ndarray


@dataclass
class BreastResult:
    bag_id: str
    laterality: str  # "L" | "R"
    probability: float
    flags: dict  # e.g. {"flag_bacc": 1, "flag_sens90": 0}: 1 flagged, 0 not, "" unknown
    views: Sequence[ViewResult] = field(default_factory=list)


def reference_of(path, *, copy_identity: bool = False, frame_of_reference: str | None = None):
    """The source image's header reduced to what the outputs may carry: identifiers of the
    patient, study and image, its geometry and a Frame of Reference UID (the source's, else
    `frame_of_reference`, else a new one). Returns (reference dataset, frame of reference UID,
    whether it is new)."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    full = pydicom.dcmread(path, stop_before_pixels=True)
    missing = [k for k in REQUIRED_KEYWORDS if not str(full.get(k, "") or "").strip()]
    if missing:
        raise ValueError(f"{path}: no {', no '.join(missing)}: a DICOM output must reference "
                         "its source image by these")
    ref = Dataset()
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID",
                    "SOPInstanceUID", "Modality", "StudyDate", "StudyTime", "StudyID",
                    *GEOMETRY_KEYWORDS):  # fmt: skip
        if keyword in full:
            setattr(ref, keyword, full.get(keyword))
    for keyword in IDENTITY_KEYWORDS:
        setattr(ref, keyword, full.get(keyword) if copy_identity else None)
    for keyword in ("StudyDate", "StudyTime", "StudyID"):
        if keyword not in ref:
            setattr(ref, keyword, None)
    source_for = str(full.get("FrameOfReferenceUID", "") or "")
    uid = source_for or frame_of_reference or generate_uid()
    return ref, uid, not source_for


def patient_orientation(view: ViewResult, ref) -> tuple[str, str]:
    """The source's Patient Orientation, else the mammography convention (PS3.3 C.8.11.7): rows
    run toward the nipple (A) when the chest wall is at the left edge, else toward it (P); columns
    run from the lateral side to the medial one, and also toward the feet (F) on an oblique
    view: "A\\R" for a left CC with its chest wall on the left, "P\\FL" for a right MLO with it
    on the right."""
    given = tuple(str(v) for v in (ref.get("PatientOrientation", None) or ()))
    if len(given) == 2 and all(given):
        return given
    row = "P" if view.flipped else "A"
    medial = "R" if view.laterality == "L" else "L"
    oblique = view.view.upper() in ("MLO", "ML", "LM", "LMO", "SIO")
    return row, ("F" + medial) if oblique else medial


def _common(ds, frame_of_reference: str, description: str) -> None:
    """What every output carries beyond highdicom's own: the series description, the model
    name and the Frame of Reference."""
    ds.SeriesDescription = description
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = _version()
    if frame_of_reference:
        ds.FrameOfReferenceUID = frame_of_reference


def secondary_capture(view: ViewResult, ref, frame_of_reference: str, *, series_uid: str,
                      instance_number: int):
    """The view's picture (map, boxes and probability burned in) as an RGB Secondary Capture."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=np.ascontiguousarray(view.picture, np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["sc"], sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER,
        patient_orientation=("A", "R"),  # highdicom takes single letters only: set below
        laterality=view.laterality)
    sc.PatientOrientation = list(patient_orientation(view, ref))
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    _common(sc, frame_of_reference, SERIES_DESCRIPTION)
    return sc


def _code(value: str, meaning: str, scheme: str = PRIVATE_SCHEME):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _device_context():
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(), name=MANUFACTURER, manufacturer_name=MANUFACTURER,
        model_name=MANUFACTURER)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


BREAST_SITE = {"L": ("80248007", "Left breast"), "R": ("73056007", "Right breast")}
FLAG_NAMES = {"flag_bacc": "Flag at the validation balanced-accuracy threshold",
              "flag_sens90": "Flag at the validation sensitivity-0.9 threshold"}
NO_UNITS = ("1", "no units")


def box_polyline(box) -> np.ndarray:
    """(y0, x0, y1, x1) half-open source pixels -> the closed POLYLINE (x0,y0) (x1,y0) (x1,y1)
    (x0,y1) (x0,y0) in (column, row), the SR's image coordinates."""
    y0, x0, y1, x1 = (float(c) for c in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float32)


def structured_report(breasts: Sequence[BreastResult], refs: dict, frame_of_reference: str, *,
                      series_uid: str):
    """A Comprehensive SR (TID 1500): per breast its probability and flags, per predicted box a
    closed polyline on its source image with its score. `refs`: source path -> reference."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    sct = "SCT"
    groups = []
    for breast in breasts:
        site = hd.sr.FindingSite(anatomic_location=_code(*BREAST_SITE[breast.laterality], sct))
        probability = hd.sr.Measurement(
            name=_code("probability", "Breast malignancy score of the MIL-PF head"),
            value=float(breast.probability), unit=_code(*NO_UNITS, "UCUM"))
        flags = [hd.sr.QualitativeEvaluation(
                    name=_code(name, FLAG_NAMES[name]),
                    value=codes.SCT.Yes if int(value) else codes.SCT.No)
                 for name, value in breast.flags.items() if value != ""]  # fmt: skip
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier=f"breast {breast.bag_id}"),
            finding_type=codes.SCT.Breast, finding_sites=[site], measurements=[probability],
            qualitative_evaluations=flags or None,
            source_images=[hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=refs[v.path].SOPClassUID,
                referenced_sop_instance_uid=refs[v.path].SOPInstanceUID)
                for v in breast.views] or None))
        for view in breast.views:
            ref = refs[view.path]
            source = hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=ref.SOPClassUID,
                referenced_sop_instance_uid=ref.SOPInstanceUID)
            for k, (box, score) in enumerate(zip(view.boxes, view.scores), 1):
                region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                           graphic_data=box_polyline(box), source_image=source)
                groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=generate_uid(), identifier=f"{view.name} box {k}"),
                    referenced_region=region, finding_type=codes.SCT.Lesion,
                    finding_sites=[site],
                    measurements=[hd.sr.Measurement(
                        name=_code("box_score", "Attention box score (probability x region "
                                                "peak / breast peak)"),
                        value=float(score), unit=_code(*NO_UNITS, "UCUM"))]))
    report = hd.sr.MeasurementReport(
        observation_context=_device_context(), procedure_reported=codes.SCT.Mammography,
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    evidence = [refs[v.path] for b in breasts for v in b.views]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report, series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "milpf-jax scores"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    _common(sr, frame_of_reference, SERIES_DESCRIPTION)
    return sr


def attention_segmentation(view: ViewResult, ref, frame_of_reference: str, *, series_uid: str,
                           instance_number: int):
    """The view's map on the source grid as a fractional Segmentation (one segment)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm = hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER, version=_version(),
        family=codes.DCM.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="attention",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    attention = np.clip(np.asarray(view.attention, np.float32), 0.0, 1.0)
    seg = hd.seg.Segmentation(
        source_images=[ref], pixel_array=attention,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[segment], series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["seg"], sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions=_version(),
        device_serial_number="0",
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        content_description="attention / breast peak; not a malignancy probability",
        content_label="ATTENTION")  # fmt: skip
    seg.PatientOrientation = list(patient_orientation(view, ref))
    _common(seg, None, SERIES_DESCRIPTION)
    return seg


INDEX_COLUMNS = ("exam_id", "file", "kind", "sop_instance_uid", "source_sop_instance_uid",
                 "frame_of_reference_uid", "frame_of_reference_new")  # fmt: skip


def _unique_names(views: Sequence[ViewResult]) -> list[str]:
    names, seen = [], {}
    for v in views:
        seen[v.name] = seen.get(v.name, 0) + 1
        names.append(v.name if seen[v.name] == 1 else f"{v.name}_{seen[v.name]}")
    return names


def _save(ds, path: Path) -> None:
    """Written under a temporary name, then renamed: never half a file under the real name."""
    from milpf_jax.files import atomic_open

    with atomic_open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)


def write_exam(out_dir, exam_id: str, breasts: Sequence[BreastResult], *,
               copy_identity: bool = False) -> list[dict]:
    """sc-<view>.dcm and seg-<view>.dcm per view and one sr.dcm for the exam's breasts, in
    `out_dir`; returns rows of `INDEX_COLUMNS`, one per object."""
    from pydicom.uid import generate_uid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = [v for b in breasts for v in b.views]
    refs, frames, new_frame = {}, {}, {}
    exam_frame = None  # one new Frame of Reference for the exam's views that have none
    for v in views:
        ref, uid, new = reference_of(v.path, copy_identity=copy_identity,
                                     frame_of_reference=exam_frame)
        exam_frame = uid if new else exam_frame
        refs[v.path], frames[v.path], new_frame[v.path] = ref, uid, new
    series = {kind: generate_uid() for kind in SERIES_NUMBERS}
    rows = []

    def record(ds, name: str, kind: str, source: str) -> None:
        _save(ds, out / name)
        rows.append(dict(exam_id=exam_id, file=name, kind=kind,
                         sop_instance_uid=str(ds.SOPInstanceUID),
                         source_sop_instance_uid=str(refs[source].SOPInstanceUID)
                         if source else "",
                         frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                         frame_of_reference_new=int(new_frame[source or views[0].path])))

    for k, (v, name) in enumerate(zip(views, _unique_names(views)), 1):
        record(secondary_capture(v, refs[v.path], frames[v.path], series_uid=series["sc"],
                                 instance_number=k), f"sc-{name}.dcm", "secondary capture", v.path)
        record(attention_segmentation(v, refs[v.path], frames[v.path], series_uid=series["seg"],
                                      instance_number=k), f"seg-{name}.dcm", "segmentation",
               v.path)
    if views:
        sr = structured_report(breasts, refs, frames[views[0].path], series_uid=series["sr"])
        record(sr, "sr.dcm", "structured report", "")
    return rows
