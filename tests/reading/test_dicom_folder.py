"""An unlabelled cohort from a folder of DICOMs (predict.py --dicom-dir): the header rules, and
the files left out with their reasons instead of an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from helpers.dicoms import stored_breast, write_dicom
from milpf_jax.reading.dicom_folder import read_dicom_files, read_dicom_folder
from milpf_jax.reading.sources import read_cohort


def _mg(path: Path, **tags) -> Path:
    base = dict(PatientID="P1", StudyInstanceUID="1.2.3", ImageLaterality="L", ViewPosition="CC")
    tags = {**base, **tags}
    return write_dicom(path, stored_breast(), **{k: v for k, v in tags.items() if v is not None})


def test_bags_from_headers_with_the_fallbacks(tmp_path):
    _mg(tmp_path / "a" / "lcc.dcm")
    _mg(tmp_path / "a" / "lmlo.dcm", ViewPosition="MLO")
    code = Dataset()
    code.CodeMeaning = "cranio-caudal"
    # series Laterality when Image Laterality is absent; the View Code Sequence without a
    # View Position
    _mg(tmp_path / "b" / "rcc.dcm", ImageLaterality=None, Laterality="R", ViewPosition=None,
        ViewCodeSequence=[code])
    cohort, failures = read_dicom_folder(tmp_path)
    assert failures == []
    assert cohort.label_kind == "none" and cohort.spec == f"dicoms:{tmp_path.resolve()}"
    assert [b.bag_id for b in cohort.bags] == ["P1/1.2.3/L", "P1/1.2.3/R"]
    left, right = cohort.bags
    assert [i.view for i in left.images] == ["CC", "MLO"] and left.raw_label == ""
    assert [(i.view, i.laterality) for i in right.images] == [("CC", "R")]
    again = read_cohort(cohort.spec)  # the spec reads the folder again
    assert [b.bag_id for b in again.bags] == [b.bag_id for b in cohort.bags]


def test_unusable_files_are_listed_not_raised(tmp_path):
    first = _mg(tmp_path / "ok.dcm")
    (tmp_path / "readme.md").write_text("hello")
    _mg(tmp_path / "us.dcm", Modality="US")
    _mg(tmp_path / "nopid.dcm", PatientID=None)
    _mg(tmp_path / "noview.dcm", ViewPosition=None)
    from pydicom import dcmread

    _mg(tmp_path / "twin.dcm", SOPInstanceUID=dcmread(first).SOPInstanceUID)
    cohort, failures = read_dicom_folder(tmp_path)
    assert len(cohort.bags) == 1 and len(cohort.bags[0].images) == 1
    reasons = {Path(f["path"]).name: f["reason"] for f in failures}
    assert set(reasons) == {"readme.md", "us.dcm", "nopid.dcm", "noview.dcm", "twin.dcm"}
    assert "'US'" in reasons["us.dcm"] and "no PatientID" in reasons["nopid.dcm"]
    assert "ViewPosition" in reasons["noview.dcm"] and "ok.dcm" in reasons["twin.dcm"]
    assert {f["bag_id"] for f in failures if Path(f["path"]).name == "noview.dcm"} == {
        "P1/1.2.3/L"}


def test_a_missing_folder_is_an_error_and_missing_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError, match="DICOM folder not found"):
        read_dicom_folder(tmp_path / "nowhere")
    cohort, failures = read_dicom_files([tmp_path / "gone.dcm"])
    assert cohort.bags == () and failures[0]["reason"] == "file not found"
