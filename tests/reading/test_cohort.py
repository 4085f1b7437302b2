"""milpf_jax.reading: manifests, bag grouping, errors, DICOM manifests, mini-MIAS, sources."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers.dicoms import write_dicom
from helpers.repo import MIAS_DIR, load_script, needs_mias
from milpf_jax.reading.cohort import SPLIT_CODES, Lesion
from milpf_jax.reading.dicom_manifest import manifest_from_dicoms
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.mias import mias
from milpf_jax.reading.sources import read_cohort

HEADER = "path,patient_id,exam_id,laterality,view,birads,split,notes"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the manifest reader only checks that the file exists
    return path


def _manifest(tmp_path: Path, lines: list[str], header: str = HEADER) -> Path:
    """A manifest in tmp_path/sub/ whose relative paths point at files in tmp_path/img/."""
    for name in ("a", "b", "c", "d", "e"):
        _touch(tmp_path / "img" / f"{name}.dcm")
    csv_path = tmp_path / "sub" / "manifest.csv"
    csv_path.parent.mkdir(exist_ok=True)
    csv_path.write_text("\n".join([header, *lines]) + "\n")
    return csv_path


def test_manifest_groups_views_of_one_breast_into_one_bag(tmp_path):
    absolute_d = tmp_path / "img" / "d.dcm"
    csv_path = _manifest(
        tmp_path,
        [
            "../img/a.dcm,P1,E1,L,MLO,1,,first mlo",
            "../img/b.dcm,P1,E1,l,cc,1,,",
            "../img/c.dcm,P1,E1,R,CC,4a,,",
            "",  # a blank line still counts when rows are numbered as in the file
            f"{absolute_d},P2,E7,R,XCCL,2,,",
        ],
    )
    cohort = read_manifest(csv_path)
    assert cohort.name == "manifest"
    assert cohort.label_kind == "birads"
    assert cohort.lesions == ()
    assert [b.bag_id for b in cohort.bags] == ["P1/E1/L", "P1/E1/R", "P2/E7/R"]
    left = cohort.bags[0]
    # CC sorts before MLO whatever the row order; laterality and view are upper-cased.
    assert [(im.view, Path(im.path).name, im.row) for im in left.images] == [
        ("CC", "b.dcm", 3),
        ("MLO", "a.dcm", 2),
    ]
    assert all(os.path.isabs(im.path) and im.laterality == "L" for im in left.images)
    assert left.images[1].path == str(tmp_path / "img" / "a.dcm")
    assert [b.raw_label for b in cohort.bags] == ["1", "4A", "2"]
    assert cohort.bags[2].images[0].row == 6
    assert cohort.bags[2].images[0].path == str(absolute_d)
    assert {b.split_given for b in cohort.bags} == {-1}


def test_given_split_covers_all_bags_of_its_patient(tmp_path):
    csv_path = _manifest(
        tmp_path,
        [
            "../img/a.dcm,P1,E1,L,CC,1,TEST,",
            "../img/b.dcm,P1,E2,R,CC,1,,",  # same patient, other exam, no split given
            "../img/c.dcm,P2,E1,L,CC,5,,",
            "../img/d.dcm,P3,E1,L,CC,5,val,",
        ],
    )
    splits = {b.bag_id: b.split_given for b in read_manifest(csv_path).bags}
    assert splits == {
        "P1/E1/L": SPLIT_CODES["test"],
        "P1/E2/R": SPLIT_CODES["test"],
        "P2/E1/L": -1,
        "P3/E1/L": SPLIT_CODES["val"],
    }


def test_binary_label_column(tmp_path):
    header = "path,patient_id,exam_id,laterality,view,label"
    csv_path = _manifest(
        tmp_path, ["../img/a.dcm,P1,E1,L,CC,0", "../img/b.dcm,P2,E1,R,CC,1"], header
    )
    cohort = read_manifest(csv_path)
    assert cohort.label_kind == "binary"
    assert [b.raw_label for b in cohort.bags] == ["0", "1"]


def test_inconsistent_labels_in_a_bag_list_the_rows(tmp_path):
    csv_path = _manifest(
        tmp_path,
        [
            "../img/a.dcm,P1,E1,L,CC,1,,",
            "../img/b.dcm,P1,E1,R,CC,1,,",
            "../img/c.dcm,P1,E1,L,MLO,4B,,",
        ],
    )
    with pytest.raises(ValueError, match="different labels") as err:
        read_manifest(csv_path)
    assert "bag P1/E1/L: row 2 (1), row 4 (4B)" in str(err.value)
    assert "row 3" not in str(err.value)


def test_duplicate_image_rows_are_an_error(tmp_path):
    a = tmp_path / "img" / "a.dcm"
    csv_path = _manifest(
        tmp_path,
        ["../img/a.dcm,P1,E1,L,CC,1,,", "../img/b.dcm,P1,E1,L,MLO,1,,", f"{a},P1,E1,L,CC,1,,"],
    )
    with pytest.raises(ValueError, match="image listed more than once") as err:
        read_manifest(csv_path)
    assert f"row 2 and row 4 ({a})" in str(err.value)


def test_missing_paths_are_listed_with_their_rows(tmp_path):
    csv_path = _manifest(
        tmp_path,
        [
            "../img/a.dcm,P1,E1,L,CC,1,,",
            "../img/nope.dcm,P1,E1,L,MLO,1,,",
            "gone.dcm,P2,E1,L,CC,1,,",
        ],
    )
    with pytest.raises(ValueError, match="file does not exist") as err:
        read_manifest(csv_path)
    message = str(err.value)
    assert f"row 3 ('{tmp_path / 'img' / 'nope.dcm'}')" in message
    assert f"row 4 ('{tmp_path / 'sub' / 'gone.dcm'}')" in message
    assert "row 2" not in message


def test_patient_in_two_given_splits_lists_the_rows(tmp_path):
    csv_path = _manifest(
        tmp_path,
        [
            "../img/a.dcm,P1,E1,L,CC,1,train,",
            "../img/b.dcm,P2,E1,L,CC,1,test,",
            "../img/c.dcm,P1,E2,R,CC,1,,",
            "../img/d.dcm,P1,E3,R,CC,1,val,",
        ],
    )
    with pytest.raises(ValueError, match="patient in more than one given split") as err:
        read_manifest(csv_path)
    assert "patient P1: row 2 (train), row 5 (val)" in str(err.value)
    assert "P2" not in str(err.value)


def test_no_label_column_is_refused_naming_the_task_columns(tmp_path):
    csv_path = _manifest(tmp_path, ["../img/a.dcm,P1,E1,L,CC,1"],
                         "path,patient_id,exam_id,laterality,view,score")
    with pytest.raises(ValueError, match=r"no label column; expected one of \['birads', 'label', "
                                         r"'mass'"):
        read_manifest(csv_path)


TASKS_HEADER = "path,patient_id,exam_id,laterality,view,split,birads,mass,calcification,dataset"


def test_several_task_columns_are_several_tasks_the_first_the_default(tmp_path):
    csv_path = _manifest(tmp_path, [
        "../img/a.dcm,P1,E1,L,CC,trainval,4b,1,0,vindr",
        "../img/b.dcm,P1,E1,L,MLO,trainval,4b,1,0,vindr",
        "../img/c.dcm,P2,E2,R,CC,test,1,,0,vindr",  # an empty cell: mass leaves this breast out
    ], TASKS_HEADER)
    cohort = read_manifest(csv_path)
    assert cohort.name == "vindr"  # a public cohort's manifest is named after its dataset
    assert cohort.label_kind == "birads"
    assert cohort.task_list() == (("birads", "birads"), ("mass", "binary"),
                                  ("calcification", "binary"))
    assert [(b.bag_id, b.raw_label, b.task_labels, b.split_given) for b in cohort.bags] == [
        ("P1/E1/L", "4B", ("4B", "1", "0"), SPLIT_CODES["trainval"]),
        ("P2/E2/R", "1", ("1", "", "0"), SPLIT_CODES["test"]),
    ]
    one = read_manifest(_manifest(tmp_path / "one", ["../img/a.dcm,P1,E1,L,CC,1,,"]))
    assert one.tasks == () and one.task_list() == (("birads", "birads"),)
    assert one.bags[0].task_labels == ()


def test_task_columns_are_checked_per_task(tmp_path):
    csv_path = _manifest(tmp_path, [
        "../img/a.dcm,P1,E1,L,CC,,4b,1,0,vindr",
        "../img/c.dcm,P2,E2,R,CC,,,,,vindr",  # every task empty
        "../img/d.dcm,P3,E3,R,CC,,1,yes,0,vindr",  # not a binary value
    ], TASKS_HEADER)
    with pytest.raises(ValueError) as err:
        read_manifest(csv_path)
    assert "every task column (birads, mass, calcification) is empty: row 3" in str(err.value)
    assert "'mass' is not one of 0, 1: row 4 ('yes')" in str(err.value)
    csv_path = _manifest(tmp_path, [
        "../img/a.dcm,P1,E1,L,CC,,4b,1,0,vindr",
        "../img/b.dcm,P1,E1,L,MLO,,4b,0,0,vindr",  # the breast's images disagree on mass
    ], TASKS_HEADER)
    with pytest.raises(ValueError, match=r"rows of one bag carry different 'mass' labels: bag "
                                         r"P1/E1/L: row 2 \(1\), row 3 \(0\)"):
        read_manifest(csv_path)


def test_lesions_file_beside_a_manifest_becomes_its_lesions(tmp_path):
    csv_path = _manifest(tmp_path, ["../img/a.dcm,P1,E1,L,CC,4,,"])
    (csv_path.parent / "manifest.lesions.csv").write_text(
        "path,y0,x0,y1,x1,kind\n../img/a.dcm,10,20,30,45,Mass\n../img/a.dcm,10,20,30,45,"
        "Suspicious Calcification\n")
    cohort = read_manifest(csv_path)
    path = str((tmp_path / "img" / "a.dcm").resolve())
    assert cohort.lesions == (Lesion(path, (10, 20, 30, 45), "Mass", ""),
                              Lesion(path, (10, 20, 30, 45), "Suspicious Calcification", ""))
    (csv_path.parent / "manifest.lesions.csv").write_text(
        "path,y0,x0,y1,x1,kind\n../img/a.dcm,30,20,10,45,Mass\n")
    with pytest.raises(ValueError,
                       match=r"(?s)manifest.lesions.csv: .*box is empty or negative.*row 2"):
        read_manifest(csv_path)


def test_missing_required_column(tmp_path):
    csv_path = _manifest(
        tmp_path, ["../img/a.dcm,P1,L,CC,1"], "path,patient_id,laterality,view,birads"
    )
    with pytest.raises(ValueError, match=r"missing column\(s\) \['exam_id'\]"):
        read_manifest(csv_path)


def test_bad_values_are_all_reported_at_once(tmp_path):
    csv_path = _manifest(
        tmp_path,
        [
            "../img/a.dcm,P1,E1,L,CC,4D,,",
            "../img/b.dcm,P1,E1,B,CC,7,,",
            "../img/c.dcm,,E1,L,CC,1,later,",
            "../img/d.dcm,P/4,E1,L,CC,1,,",
        ],
    )
    with pytest.raises(ValueError) as err:
        read_manifest(csv_path)
    message = str(err.value)
    assert "'birads' is not one of 0, 1, 2, 3, 4, 4A, 4B, 4C, 5, 6: row 2 ('4D'), row 3 ('7')" in (
        message
    )
    assert "laterality is not L or R: row 3 ('B')" in message
    assert "empty 'patient_id': row 4" in message
    assert "'split' is not one of train, val, test, trainval or empty: row 4 ('later')" in message
    assert "'patient_id' contains '/'" in message and "row 5 ('P/4')" in message


def test_binary_label_rejects_birads_values(tmp_path):
    header = "path,patient_id,exam_id,laterality,view,label"
    csv_path = _manifest(
        tmp_path, ["../img/a.dcm,P1,E1,L,CC,4", "../img/b.dcm,P2,E1,L,CC,1"], header
    )
    with pytest.raises(ValueError, match=r"'label' is not one of 0, 1: row 2 \('4'\)"):
        read_manifest(csv_path)


def test_resolve_cohort_specs(tmp_path):
    csv_path = _manifest(tmp_path, ["../img/a.dcm,P1,E1,L,CC,1,,"])
    assert read_cohort(str(csv_path)).bags[0].bag_id == "P1/E1/L"
    with pytest.raises(ValueError, match="unknown cohort spec 'imagenet'"):
        read_cohort("imagenet")
    with pytest.raises(FileNotFoundError, match="not a mini-MIAS folder"):
        read_cohort(f"mias:{tmp_path}")


def _write_png(path: Path, rows: int, cols: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((rows, cols), np.uint8)).save(path)


def test_mias_labels_patients_and_clipped_boxes(tmp_path):
    for ref in ("mdb001", "mdb002", "mdb003", "mdb004"):
        _write_png(tmp_path / "images" / f"{ref}.png", rows=40, cols=60)
    (tmp_path / "Info.txt").write_text(
        "mdb001 G CIRC B 5 30 8\n"  # near the top-left corner: clipped
        "mdb001 G SPIC M 50 10 4\n"  # a second, malignant lesion makes the image M
        "mdb002 D NORM \n"
        "\n"
        "mdb003 F CIRC B\n"  # no coordinates: labelled B, no box
        "mdb004 F NORM\n"
    )
    cohort = read_cohort(f"mias:{tmp_path}")
    assert (cohort.name, cohort.label_kind) == ("mias", "mias")
    assert [(b.bag_id, b.raw_label) for b in cohort.bags] == [
        ("mias001/1/L", "M"),
        ("mias001/1/R", "N"),
        ("mias002/1/L", "B"),
        ("mias002/1/R", "N"),
    ]
    assert [b.images[0].path for b in cohort.bags] == [
        str(tmp_path / "images" / f"mdb00{i}.png") for i in (1, 2, 3, 4)
    ]
    path = str(tmp_path / "images" / "mdb001.png")
    # row = 40 - Y: (30 -> row 10, r 8) and (10 -> row 30, r 4).
    assert cohort.lesions == (
        Lesion(path, (2, 0, 18, 13), "CIRC", "B"),
        Lesion(path, (26, 46, 34, 54), "SPIC", "M"),
    )


def test_mias_missing_image_and_bad_row(tmp_path):
    _write_png(tmp_path / "images" / "mdb001.png", rows=8, cols=8)
    (tmp_path / "Info.txt").write_text("mdb001 G NORM\nmdb002 G NORM\n")
    with pytest.raises(FileNotFoundError, match="mdb002.png"):
        mias(tmp_path)
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC X 1 2 3\n")
    with pytest.raises(ValueError, match=r"severity is not B or M: line 1"):
        mias(tmp_path)


@needs_mias
def test_mias_real_folder_counts():
    cohort = mias(MIAS_DIR)
    assert len(cohort.bags) == 80
    patients = Counter(b.patient_id for b in cohort.bags)
    assert len(patients) == 40 and set(patients.values()) == {2}
    assert Counter(b.raw_label for b in cohort.bags) == {"N": 58, "B": 17, "M": 5}
    assert all(len(b.images) == 1 and b.images[0].view == "MLO" for b in cohort.bags)
    by_name = {Path(b.images[0].path).name: b for b in cohort.bags}
    assert (by_name["mdb001.png"].laterality, by_name["mdb002.png"].laterality) == ("L", "R")
    assert by_name["mdb001.png"].patient_id == by_name["mdb002.png"].patient_id
    assert by_name["mdb059.png"].raw_label == "B"  # listed without coordinates
    assert by_name["mdb023.png"].raw_label == "M"
    # 23 abnormality rows in Info.txt, less mdb059's which has no centre.
    assert len(cohort.lesions) == 22
    assert not any(lesion.path.endswith("mdb059.png") for lesion in cohort.lesions)
    first = cohort.lesions[0]  # mdb001 G CIRC B 535 425 197 -> row 1024 - 425 = 599
    assert (Path(first.path).name, first.box) == ("mdb001.png", (402, 338, 796, 732))


@needs_mias
def test_mias_boxes_sit_on_tissue_in_image_rows():
    """With the bottom-left origin handled, boxes cover bright tissue; mirrored boxes do not."""
    from PIL import Image

    inside, mirrored = [], []
    for lesion in mias(MIAS_DIR).lesions:
        image = np.asarray(Image.open(lesion.path), dtype=np.float64)  # [1024, 1024]
        y0, x0, y1, x1 = lesion.box
        inside.append(image[y0:y1, x0:x1].mean())
        mirrored.append(image[image.shape[0] - y1 : image.shape[0] - y0, x0:x1].mean())
    # Measured on the dev subset: 168 inside vs 127 mirrored on average.
    assert np.mean(inside) > np.mean(mirrored) + 25




def _write_dicom(path: Path, patient: str, accession: str, study: str, **tags) -> None:
    """A tiny MG DICOM with the headers the manifest builder reads; `tags` override or add."""
    write_dicom(path, np.arange(16, dtype=np.uint16).reshape(4, 4), PatientID=patient,
                AccessionNumber=accession, StudyInstanceUID=study, **tags)


def _dicom_cohort(root: Path) -> Path:
    """Two patients, three exams; returns the DICOM folder."""
    from pydicom.dataset import Dataset

    d = root / "dicoms"
    a1 = ("PA", "ACC1", "1.2.3.1")
    for lat in ("L", "R"):
        for view in ("MLO", "CC"):
            _write_dicom(d / "PA" / f"{lat}{view}", *a1, ImageLaterality=lat, ViewPosition=view)
    # Older headers: Laterality instead of ImageLaterality; a View Code Sequence instead of
    # ViewPosition.
    _write_dicom(d / "PB" / "x1.dcm", "PB", "ACC2", "1.2.3.2", Laterality="L", ViewPosition="CC")
    code = Dataset()
    code.CodeMeaning = "medio-lateral oblique"
    _write_dicom(
        d / "PB" / "x2.dcm", "PB", "ACC2", "1.2.3.2", ImageLaterality="L", ViewCodeSequence=[code]
    )
    _write_dicom(
        d / "PB" / "x3.dcm", "PB", "ACC3", "1.2.3.3", ImageLaterality="R", ViewPosition="CC"
    )
    # Skipped: raw detector image, and a file that is not DICOM.
    _write_dicom(
        d / "PB" / "raw.dcm",
        "PB",
        "ACC2",
        "1.2.3.2",
        ImageLaterality="L",
        ViewPosition="CC",
        PresentationIntentType="FOR PROCESSING",
    )
    (d / "README.txt").write_text("not a DICOM file")
    return d


def test_manifest_from_dicoms_accession_keyed_breast_and_exam_labels(tmp_path):
    dicom_dir = _dicom_cohort(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "accession_number,laterality,birads,split\n"
        "ACC1,L,1,train\n"
        "ACC1,R,4b,train\n"
        "ACC2,,2,\n"  # exam-level: both breasts
        "ACC3,R,5,test\n"
        "ACC9,L,1,\n"  # no DICOMs for this exam: not an error
    )
    out = tmp_path / "manifest.csv"
    cohort = manifest_from_dicoms(dicom_dir, labels, out)
    assert cohort.label_kind == "birads"
    summary = [
        (b.bag_id, b.raw_label, b.split_given, [im.view for im in b.images]) for b in cohort.bags
    ]
    assert summary == [
        ("PA/ACC1/L", "1", 0, ["CC", "MLO"]),
        ("PA/ACC1/R", "4B", 0, ["CC", "MLO"]),
        ("PB/ACC2/L", "2", 2, ["CC", "MLO"]),  # PB's given test split covers its other exam
        ("PB/ACC3/R", "5", 2, ["CC"]),
    ]
    lines = out.read_text().splitlines()
    assert lines[0] == "path,patient_id,exam_id,laterality,view,birads,split,sop_instance_uid"
    assert len(lines) == 1 + 7  # the FOR PROCESSING image and README.txt are left out
    assert lines[1].startswith(os.path.join("dicoms", "PA", "LCC") + ",PA,ACC1,L,CC,1,train,")
    assert all(not Path(line.split(",")[0]).is_absolute() for line in lines[1:])


def test_manifest_from_dicoms_study_uid_keyed_sheet(tmp_path):
    dicom_dir = _dicom_cohort(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("study_instance_uid,label\n1.2.3.1,0\n1.2.3.2,1\n1.2.3.3,0\n")
    out_dir = tmp_path / "elsewhere"  # DICOMs outside the manifest's folder: absolute paths
    cohort = manifest_from_dicoms(dicom_dir, labels, out_dir / "m.csv")
    assert cohort.name == "m" and cohort.label_kind == "binary"
    assert [(b.bag_id, b.raw_label) for b in cohort.bags] == [
        ("PA/1.2.3.1/L", "0"),
        ("PA/1.2.3.1/R", "0"),
        ("PB/1.2.3.2/L", "1"),
        ("PB/1.2.3.3/R", "0"),
    ]
    first_path = (out_dir / "m.csv").read_text().splitlines()[1].split(",")[0]
    assert first_path == str(dicom_dir / "PA" / "LCC")


def test_manifest_from_dicoms_missing_label_lists_files(tmp_path):
    dicom_dir = _dicom_cohort(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("accession_number,laterality,birads\nACC1,L,1\nACC2,L,1\nACC3,R,1\n")
    with pytest.raises(ValueError, match=r"no label for 1 bag\(s\)") as err:
        manifest_from_dicoms(dicom_dir, labels, tmp_path / "manifest.csv")
    assert "AccessionNumber ACC1 breast R: PA/RCC, PA/RMLO" in str(err.value)
    assert not (tmp_path / "manifest.csv").exists()


def test_label_sheet_duplicates_and_mixed_levels_list_rows(tmp_path):
    dicom_dir = _dicom_cohort(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "accession_number,laterality,birads\nACC1,L,1\nACC1,L,2\nACC2,,1\nACC2,R,1\nACC3,,1\n"
    )
    with pytest.raises(ValueError) as err:
        manifest_from_dicoms(dicom_dir, labels, tmp_path / "manifest.csv")
    assert "label given more than once: ACC1 L: rows 2, 3" in str(err.value)
    assert "exam-level and breast-level labels for one exam: ACC2: rows 4, 5" in str(err.value)


def test_duplicate_sop_instance_uid_lists_files(tmp_path):
    d = tmp_path / "dicoms"
    for name in ("one.dcm", "two.dcm"):
        _write_dicom(
            d / name,
            "P",
            "A",
            "1.2",
            ImageLaterality="L",
            ViewPosition="CC",
            SOPInstanceUID="1.2.9",
        )
    labels = tmp_path / "labels.csv"
    labels.write_text("accession_number,birads\nA,1\n")
    with pytest.raises(ValueError, match=r"same SOPInstanceUID in several files: one.dcm and two"):
        manifest_from_dicoms(d, labels, tmp_path / "manifest.csv")


def test_manifest_cli_prints_counts(tmp_path, capsys):
    cli = load_script("manifest")
    dicom_dir = _dicom_cohort(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("accession_number,label\nACC1,1\nACC2,0\nACC3,0\n")
    out = tmp_path / "manifest.csv"
    cli.main(["--dicom-dir", str(dicom_dir), "--labels", str(labels), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "7 images, 4 bags, 2 patients" in printed
    assert "{'0': 2, '1': 2}" in printed
    assert read_manifest(out).label_kind == "binary"
