"""DICOM outputs of predict.py --dicom-out (milpf_jax.explanation.dicom_out): built with
highdicom from real MG files, validated by dciodvfy (dicom3tools), the SR rendered by dsrdump
(dcmtk) and read back by highdicom: one region per box, on the right source image."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from helpers.dicoms import stored_breast, write_dicom
from helpers.tools import needs_tool
from milpf_jax.explanation.dicom_out import (
    SERIES_DESCRIPTION,
    BreastResult,
    ViewResult,
    box_polyline,
    patient_orientation,
    write_exam,
)

ROWS, COLS = 96, 72
BOXES = {"LCC": [[10, 12, 40, 30], [50, 20, 70, 44]], "LMLO": [[30, 8, 60, 40]], "RCC": []}


@pytest.fixture(scope="module")
def exam(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom-out")
    study = pydicom.uid.generate_uid()
    views = []
    for name in BOXES:
        lat, view = name[0], name[1:]
        path = write_dicom(
            root / "in" / f"{name}.dcm", stored_breast(ROWS, COLS, right=lat == "R"),
            PatientID="P7", PatientName="Doe^Jane", PatientBirthDate="19600101",
            AccessionNumber="ACC42", StudyInstanceUID=study, ImageLaterality=lat,
            SeriesInstanceUID=pydicom.uid.generate_uid(),
            ViewPosition=view, ImagerPixelSpacing=[0.1, 0.1], StudyDate="20240101")
        attention = np.zeros((ROWS, COLS), np.float32)
        for y0, x0, y1, x1 in BOXES[name]:
            attention[y0:y1, x0:x1] = 0.8
        picture = np.zeros((ROWS, COLS, 3), np.uint8)
        picture[..., 0] = 200
        views.append(ViewResult(str(path), name, view, lat, lat == "R", attention,
                                np.array(BOXES[name], np.int64).reshape(-1, 4),
                                np.linspace(0.9, 0.5, len(BOXES[name])), picture))
    breasts = [BreastResult("P7/E/L", "L", 0.91, {"flag_bacc": 1, "flag_sens90": 0}, views[:2]),
               BreastResult("P7/E/R", "R", 0.12, {"flag_bacc": 0, "flag_sens90": 0}, views[2:])]
    rows = write_exam(root / "out", "E", breasts)
    return root, study, views, rows


def test_one_object_of_each_kind_per_view_and_one_sr(exam):
    root, _, views, rows = exam
    names = sorted(p.name for p in (root / "out").iterdir())
    assert names == sorted([f"sc-{v.name}.dcm" for v in views] + [f"seg-{v.name}.dcm" for v in
                                                                  views] + ["sr.dcm"])
    assert sorted(r["file"] for r in rows) == names


def test_headers_file_with_the_study_and_copy_nothing_else(exam):
    root, study, _, rows = exam
    for path in (root / "out").iterdir():
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == study and ds.PatientID == "P7"
        assert ds.Manufacturer == "milpf-jax" and ds.ManufacturerModelName == "milpf-jax"
        assert ds.SeriesDescription == SERIES_DESCRIPTION
        assert "not for diagnosis" in ds.SeriesDescription
        for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber"):
            assert not ds.get(keyword), (path.name, keyword)
    series = {pydicom.dcmread(root / "out" / r["file"]).SeriesInstanceUID for r in rows}
    assert len(series) == 3  # one new series per kind
    # the sources have no Frame of Reference: one new UID for the exam, recorded
    frames = {r["frame_of_reference_uid"] for r in rows if r["kind"] != "segmentation"}
    assert len(frames) == 1 and all(r["frame_of_reference_new"] == 1 for r in rows)


def test_the_secondary_capture_is_the_picture(exam):
    root, _, views, _ = exam
    sc = pydicom.dcmread(root / "out" / "sc-LCC.dcm")
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    assert np.array_equal(sc.pixel_array, views[0].picture)
    assert list(sc.PatientOrientation) == ["A", "R"]


def test_the_segmentation_is_the_map_on_the_source_grid(exam):
    import highdicom as hd

    root, _, views, _ = exam
    seg = hd.seg.segread(root / "out" / "seg-LMLO.dcm")
    assert (seg.Rows, seg.Columns) == (ROWS, COLS)
    assert seg.SegmentationType == "FRACTIONAL"
    values = seg.pixel_array.astype(np.float64) / float(seg.MaximumFractionalValue)
    assert np.allclose(values.reshape(ROWS, COLS), views[1].attention, atol=1 / 255)
    source = seg.get_source_image_uids()
    assert source[0][2] == pydicom.dcmread(views[1].path).SOPInstanceUID


def test_the_sr_has_one_region_per_box_on_its_source_image(exam):
    import highdicom as hd

    root, _, views, _ = exam
    sr = hd.sr.srread(root / "out" / "sr.dcm")
    groups = sr.content.get_planar_roi_measurement_groups()
    uids = {pydicom.dcmread(v.path).SOPInstanceUID: v for v in views}
    assert len(groups) == sum(len(b) for b in BOXES.values())
    seen = []
    for group in groups:
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        view = uids[region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        matches = [k for k, box in enumerate(view.boxes)
                   if np.allclose(region.value, box_polyline(box))]
        assert len(matches) == 1
        score = group.get_measurements()[0].value
        assert score == pytest.approx(view.scores[matches[0]])
        seen.append((view.name, matches[0]))
    assert len(set(seen)) == len(seen)
    breasts = sr.content.get_image_measurement_groups()
    probabilities = sorted(
        m.value for g in breasts for m in g.get_measurements()
        if m.name.value == "probability")
    assert probabilities == pytest.approx([0.12, 0.91])


def test_polyline_is_closed_in_column_row_order():
    line = box_polyline((10, 20, 30, 50))
    assert line.tolist() == [[20, 10], [50, 10], [50, 30], [20, 30], [20, 10]]


def test_patient_orientation_follows_the_mammography_convention():
    from pydicom.dataset import Dataset

    def view(name, lat, flipped):
        return ViewResult("", lat + name, name, lat, flipped, None, None, None, None)

    assert patient_orientation(view("CC", "L", False), Dataset()) == ("A", "R")
    assert patient_orientation(view("CC", "R", True), Dataset()) == ("P", "L")
    assert patient_orientation(view("MLO", "R", True), Dataset()) == ("P", "FL")
    given = Dataset()
    given.PatientOrientation = ["P", "FR"]
    assert patient_orientation(view("CC", "L", False), given) == ("P", "FR")


@needs_tool("dciodvfy")
def test_dciodvfy_finds_no_error_in_any_object(exam):
    root = exam[0]
    for path in sorted((root / "out").iterdir()):
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        report = done.stdout + done.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], (path.name, errors)


@needs_tool("dsrdump")
def test_dsrdump_renders_the_report(exam):
    root = exam[0]
    done = subprocess.run(["dsrdump", str(root / "out" / "sr.dcm")], capture_output=True,
                          text=True, check=True)
    text = done.stdout
    assert "Imaging Measurement Report" in text and "Left breast" in text
    assert text.count("POLYLINE") == sum(len(b) for b in BOXES.values())
    assert "not for diagnosis" in text
