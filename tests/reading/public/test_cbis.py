"""milpf_jax.reading.public.cbis: CBIS-DDSM's case CSVs and TCIA's metadata.csv, as distributed."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from helpers.dicoms import stored_breast, write_dicom
from milpf_jax.reading.public import cbis
from milpf_jax.reading.public.common import DatasetOptions

MASS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
        "image file path", "cropped image file path", "ROI mask file path"]
CALC = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
        "abnormality type", "calc type", "calc distribution", "assessment", "pathology",
        "subtlety", "image file path", "cropped image file path", "ROI mask file path"]
TCIA = ["Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
        "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
        "Modality", "SOP Class Name", "SOP Class UID", "Number of Images", "File Size",
        "File Location", "Download Timestamp"]
CSV_NAMES = {("mass", "train"): "mass_case_description_train_set.csv",
             ("mass", "test"): "mass_case_description_test_set.csv",
             ("calc", "train"): "calc_case_description_train_set.csv",
             ("calc", "test"): "calc_case_description_test_set.csv"}
SUBJECT = {("mass", "train"): "Mass-Training", ("mass", "test"): "Mass-Test",
           ("calc", "train"): "Calc-Training", ("calc", "test"): "Calc-Test"}


class FakeCbis:
    """A CBIS-DDSM download under root: the four CSVs, metadata.csv and the series folders."""

    def __init__(self, root: Path):
        self.root = root
        self.rows = {key: [] for key in CSV_NAMES}
        self.series = []  # TCIA metadata rows
        self._uid = itertools.count(1000)

    def add_series(self, subject: str, description: str, files: dict[str, object] | None = None,
                   *, listed: bool = True) -> tuple[str, str, Path]:
        """A series folder with `files` (name -> None for an empty placeholder, or an array
        written as a DICOM); returns (study uid, series uid, folder)."""
        study, series = f"1.3.6.1.4.1.9590.100.1.2.{next(self._uid)}", \
            f"1.3.6.1.4.1.9590.100.1.2.{next(self._uid)}"
        folder = self.root / "CBIS-DDSM" / subject / "07-20-2016-DDSM-NA-74994" / \
            f"1.000000-{description}-{series[-5:]}"
        folder.mkdir(parents=True)
        for name, pixels in (files if files is not None else {"1-1.dcm": None}).items():
            if pixels is None:
                (folder / name).touch()
            else:
                write_dicom(folder / name, pixels, bits_stored=16)
        if listed:
            location = "./" + folder.relative_to(self.root).as_posix()
            self.series.append({"Series UID": series, "Collection": "CBIS-DDSM",
                                "Subject ID": subject, "Study UID": study,
                                "Series Description": description, "Modality": "MG",
                                "File Location": location})
        return study, series, folder

    def add(self, patient, side, view, pathology, *, kind="mass", split="train", abn=1,
            density="2", full=None, crop=None, mask=None) -> dict:
        """One abnormality row; `full` reuses an image's (study, series); `crop` / `mask` give
        the series of the cropped-image and ROI-mask paths (new empty series by default)."""
        subject = f"{SUBJECT[kind, split]}_{patient}_{side}_{view}"
        if full is None:
            full = self.add_series(subject, "full mammogram images")[:2]
        if crop is None:
            crop = self.add_series(f"{subject}_{abn}", "cropped images")[:2]
        if mask is None:
            mask = crop
        row = {"patient_id": patient, "left or right breast": side, "image view": view,
               "abnormality id": str(abn), "abnormality type": "mass" if kind == "mass"
               else "calcification", "assessment": "4", "pathology": pathology,
               "subtlety": "3", "breast_density" if kind == "mass" else "breast density": density,
               "image file path": f"{subject}/{full[0]}/{full[1]}/000000.dcm",
               "cropped image file path": f"{subject}_{abn}/{crop[0]}/{crop[1]}/000000.dcm",
               # The published CSVs end some paths with a newline inside the quotes.
               "ROI mask file path": f"{subject}_{abn}/{mask[0]}/{mask[1]}/000001.dcm\n"}
        self.rows[kind, split].append(row)
        row["_full"] = full
        return row

    def write(self, drop: tuple[str, str] | None = None) -> Path:
        """Write the CSVs; `drop` = (csv name or "metadata.csv", column) leaves a column out."""
        for key, name in CSV_NAMES.items():
            columns = list(MASS if key[0] == "mass" else CALC)
            if drop and drop[0] == name:
                columns.remove(drop[1])
            _write_csv(self.root / name, columns, self.rows[key])
        columns = list(TCIA)
        if drop and drop[0] == "metadata.csv":
            columns.remove(drop[1])
        _write_csv(self.root / "metadata.csv", columns, self.series)
        return self.root


def _write_csv(path: Path, columns, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _read(root):
    return cbis.read_tables(root, DatasetOptions())


def _images(tables):
    return {(im["patient_id"], im["laterality"], im["view"]): im for im in tables.images}


def test_module_constants():
    assert cbis.NAME == "cbis"
    assert cbis.TASKS == ("malignant",)
    assert cbis.HAS_OFFICIAL_SPLIT is True
    assert "cancerimagingarchive.net/collection/cbis-ddsm" in cbis.DOC


def test_images_resolve_through_the_series_uid_to_the_downloaded_file(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00001", "LEFT", "CC", "MALIGNANT", density="3")
    fake.add("P_00001", "LEFT", "MLO", "MALIGNANT", density="3")
    tables = _read(fake.write())
    assert tables.dataset == "cbis" and tables.tasks == ("malignant",)
    assert tables.has_official_split is True
    assert tables.excluded == [] and tables.lesions == []
    cc = _images(tables)["P_00001", "L", "CC"]
    folder = tmp_path / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC" / "07-20-2016-DDSM-NA-74994"
    assert Path(cc["path"]).parent.parent == folder
    assert Path(cc["path"]).name == "1-1.dcm" and Path(cc["path"]).is_absolute()
    assert cc == {"path": cc["path"], "patient_id": "P_00001", "exam_id": "P_00001",
                  "laterality": "L", "view": "CC", "official_split": "train", "malignant": "1",
                  "density": "C"}
    assert _images(tables)["P_00001", "L", "MLO"]["malignant"] == "1"


def test_an_image_in_the_mass_and_calc_csvs_is_one_row_malignant_if_either_is(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00005", "RIGHT", "CC", "BENIGN", kind="mass")
    calc = fake.add("P_00005", "RIGHT", "CC", "MALIGNANT", kind="calc")
    fake.add("P_00005", "RIGHT", "MLO", "BENIGN", kind="mass")
    fake.add("P_00005", "LEFT", "CC", "BENIGN_WITHOUT_CALLBACK", kind="calc")
    tables = _read(fake.write())
    got = {k: (Path(im["path"]).parts[-4], im["malignant"]) for k, im in _images(tables).items()}
    assert got == {("P_00005", "R", "CC"): ("Mass-Training_P_00005_RIGHT_CC", "1"),
                   ("P_00005", "R", "MLO"): ("Mass-Training_P_00005_RIGHT_MLO", "1"),
                   ("P_00005", "L", "CC"): ("Calc-Training_P_00005_LEFT_CC", "0")}
    [dup] = tables.excluded
    assert dup["reason"] == "same view listed in another CSV"
    assert Path(dup["path"]).parts[-4] == "Calc-Training_P_00005_RIGHT_CC"
    assert Path(dup["path"]).parent.name.endswith(calc["_full"][1][-5:])


def test_rows_of_one_image_file_are_one_image(tmp_path):
    fake = FakeCbis(tmp_path)
    first = fake.add("P_00009", "LEFT", "CC", "BENIGN", abn=1)
    fake.add("P_00009", "LEFT", "CC", "BENIGN", abn=2, full=first["_full"])
    fake.add("P_00009", "LEFT", "CC", "BENIGN", kind="calc", full=first["_full"])
    tables = _read(fake.write())
    assert [(im["view"], im["malignant"]) for im in tables.images] == [("CC", "0")]
    assert tables.excluded == []


def test_a_patient_in_training_and_test_csvs_goes_to_test(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00010", "LEFT", "CC", "BENIGN", kind="mass", split="train")
    fake.add("P_00010", "RIGHT", "MLO", "MALIGNANT", kind="calc", split="test")
    fake.add("P_00011", "LEFT", "CC", "BENIGN", kind="calc", split="train")
    fake.add("P_00012", "LEFT", "CC", "BENIGN", kind="mass", split="test")
    tables = _read(fake.write())
    got = {k: im["official_split"] for k, im in _images(tables).items()}
    assert got == {("P_00010", "L", "CC"): "test", ("P_00010", "R", "MLO"): "test",
                   ("P_00011", "L", "CC"): "train", ("P_00012", "L", "CC"): "test"}
    assert tables.notes["patient in training and test CSVs -> test"] == 1


@pytest.mark.parametrize("pathology, expected", [("MALIGNANT", "1"), ("BENIGN", "0"),
                                                 ("BENIGN_WITHOUT_CALLBACK", "0")])
def test_pathology_values(tmp_path, pathology, expected):
    fake = FakeCbis(tmp_path)
    fake.add("P_00020", "RIGHT", "CC", pathology)
    assert [im["malignant"] for im in _read(fake.write()).images] == [expected]


def test_unknown_pathology_leaves_the_breast_out_unless_another_is_malignant(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00021", "RIGHT", "CC", "UNPROVEN")
    fake.add("P_00021", "LEFT", "CC", "UNPROVEN", abn=1)
    fake.add("P_00021", "LEFT", "MLO", "MALIGNANT", abn=2)
    tables = _read(fake.write())
    assert {k: im["malignant"] for k, im in _images(tables).items()} == {
        ("P_00021", "L", "CC"): "1", ("P_00021", "L", "MLO"): "1"}
    assert [(r["laterality"], r["reason"]) for r in tables.excluded] == [
        ("R", "unknown label value")]


def test_missing_files_and_unknown_series_are_listed(tmp_path):
    fake = FakeCbis(tmp_path)
    empty = fake.add_series("Mass-Training_P_00030_LEFT_CC", "full mammogram images", {})
    fake.add("P_00030", "LEFT", "CC", "BENIGN", full=empty[:2])
    unlisted = fake.add_series("Mass-Training_P_00030_LEFT_MLO", "full mammogram images",
                               listed=False)
    fake.add("P_00030", "LEFT", "MLO", "BENIGN", full=unlisted[:2])
    fake.add("P_00030", "RIGHT", "CC", "BENIGN")
    fake.add("P_00031", "", "CC", "BENIGN")
    tables = _read(fake.write())
    assert list(_images(tables)) == [("P_00030", "R", "CC")]
    got = [(r["patient_id"], r["laterality"], r["view"], r["reason"]) for r in tables.excluded]
    assert got == [("P_00031", "", "CC", "no laterality"),
                   ("P_00030", "L", "CC", "file missing"),
                   ("P_00030", "L", "MLO", "series not in metadata.csv")]
    assert tables.excluded[1]["path"].startswith(str(tmp_path / "Mass-Training_P_00030_LEFT_CC"))


def test_density_outside_1_to_4_is_left_empty_and_noted(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00040", "LEFT", "CC", "BENIGN", kind="calc", density="0")
    fake.add("P_00041", "LEFT", "CC", "BENIGN", kind="calc", density="4")
    tables = _read(fake.write())
    assert {k[0]: im["density"] for k, im in _images(tables).items()} == {"P_00040": "",
                                                                          "P_00041": "D"}
    assert tables.notes["breast density outside 1-4 -> ''"] == 1


def test_windows_file_locations_resolve(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00050", "LEFT", "CC", "BENIGN")
    for row in fake.series:
        row["File Location"] = row["File Location"].replace("/", "\\")
    tables = _read(fake.write())
    assert [Path(im["path"]).name for im in tables.images] == ["1-1.dcm"]


@pytest.mark.parametrize("name, column", [
    ("calc_case_description_train_set.csv", "breast density"),
    ("mass_case_description_test_set.csv", "breast_density"),
    ("mass_case_description_train_set.csv", "image file path"),
    ("metadata.csv", "File Location"),
])
def test_a_missing_column_names_the_file_and_the_column(tmp_path, name, column):
    fake = FakeCbis(tmp_path)
    fake.add("P_00060", "LEFT", "CC", "BENIGN")
    with pytest.raises(ValueError, match=rf"{name}.*missing column.*'{column}'"):
        _read(fake.write(drop=(name, column)))


def test_a_missing_csv_names_the_file(tmp_path):
    fake = FakeCbis(tmp_path)
    fake.add("P_00060", "LEFT", "CC", "BENIGN")
    fake.write()
    (tmp_path / "calc_case_description_test_set.csv").unlink()
    with pytest.raises(FileNotFoundError, match="calc_case_description_test_set.csv"):
        _read(tmp_path)


def _mask(rows=64, cols=48, box=(10, 5, 20, 15)):
    mask = np.zeros((rows, cols), np.uint16)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def test_roi_boxes_come_from_the_full_size_file_even_when_the_paths_are_swapped(tmp_path):
    fake = FakeCbis(tmp_path)
    full = fake.add_series("Mass-Training_P_00070_LEFT_CC", "full mammogram images",
                           {"1-1.dcm": stored_breast(64, 48)})
    # As distributed: the mask path's series holds the small crop, the crop path's the mask.
    swapped_crop = fake.add_series("Mass-Training_P_00070_LEFT_CC_1", "cropped images",
                                   {"1-1.dcm": _mask()})
    swapped_mask = fake.add_series("Mass-Training_P_00070_LEFT_CC_1", "ROI mask images",
                                   {"1-1.dcm": np.full((12, 12), 900, np.uint16)})
    fake.add("P_00070", "LEFT", "CC", "MALIGNANT", full=full[:2], crop=swapped_crop[:2],
             mask=swapped_mask[:2])
    # One series holding both the crop (1-1) and the mask (1-2), as TCIA often has it.
    both = fake.add_series("Calc-Training_P_00070_LEFT_CC_1", "ROI mask images",
                           {"1-1.dcm": np.full((8, 6), 700, np.uint16),
                            "1-2.dcm": _mask(box=(30, 0, 64, 2))})
    fake.add("P_00070", "LEFT", "CC", "BENIGN", kind="calc", full=full[:2], crop=both[:2])
    root = fake.write()
    tables = _read(root)
    assert tables.lesions == []  # read_tables reads no pixels
    boxes = cbis.read_roi_boxes(tables, root)
    [image] = tables.images
    assert boxes == [
        {"path": image["path"], "y0": 10, "x0": 5, "y1": 20, "x1": 15, "kind": "mass"},
        {"path": image["path"], "y0": 30, "x0": 0, "y1": 64, "x1": 2, "kind": "calcification"},
    ]
    assert tables.notes["ROI mask found at the cropped image path (paths swapped)"] == 1


def test_roi_pass_notes_what_gives_no_box(tmp_path):
    fake = FakeCbis(tmp_path)
    full = fake.add_series("Mass-Training_P_00080_LEFT_CC", "full mammogram images",
                           {"1-1.dcm": stored_breast(64, 48)})
    empty = fake.add_series("Mass-Training_P_00080_LEFT_CC_1", "ROI mask images",
                            {"1-1.dcm": np.zeros((64, 48), np.uint16)})
    small = fake.add_series("Mass-Training_P_00080_LEFT_CC_2", "ROI mask images",
                            {"1-1.dcm": np.ones((9, 9), np.uint16)})
    fake.add("P_00080", "LEFT", "CC", "BENIGN", full=full[:2], crop=empty[:2], abn=1)
    fake.add("P_00080", "LEFT", "CC", "BENIGN", full=full[:2], crop=small[:2], abn=2)
    root = fake.write()
    tables = _read(root)
    assert cbis.read_roi_boxes(tables, root) == []
    assert tables.notes["empty ROI mask (no box)"] == 1
    assert tables.notes["no ROI file of the full image's size (no box)"] == 1
