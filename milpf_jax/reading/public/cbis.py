"""CBIS-DDSM (TCIA): four case-description CSVs and metadata.csv, read as they are distributed.

Release: the CBIS-DDSM collection of The Cancer Imaging Archive,
https://www.cancerimagingarchive.net/collection/cbis-ddsm/ (Lee et al., "A curated mammography
data set for use in computer-aided detection and diagnosis research", Scientific Data 4:170177,
2017). The columns and the folder layout below are those of the collection's page and of TCIA's
downloader (its `metadata.csv` and `File Location` folders).

Files under `root`:
- `mass_case_description_train_set.csv`, `mass_case_description_test_set.csv`,
  `calc_case_description_train_set.csv`, `calc_case_description_test_set.csv`: one row per
  abnormality. Columns used: `patient_id` (P_xxxxx), `breast_density` (mass CSVs) or
  `breast density` (calc CSVs; 1-4 -> density A-D), `left or right breast` (LEFT/RIGHT),
  `image view` (CC/MLO), `abnormality type` (mass/calcification), `pathology` (MALIGNANT,
  BENIGN, BENIGN_WITHOUT_CALLBACK), `image file path`, `cropped image file path`,
  `ROI mask file path` (`abnormality id` is required but only identifies the row). Their paths
  read `<Subject ID>/<Study UID>/<Series UID>/000000.dcm`.
- `metadata.csv`, written by TCIA's downloader (NBIA Data Retriever): one row per series.
  Columns used: `Series UID` and `File Location` (the series folder relative to root, e.g.
  `./CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-NA-74994/
  1.000000-full mammogram images-24515`, holding `1-1.dcm`; backslashes read as "/"); `Study UID`
  when present, to note CSV paths whose study disagrees.

Paths: a CSV path resolves through its third component, the Series UID, to that series' folder
in metadata.csv, then to the folder's only (or first sorted) `.dcm` file. The CSV's own file
names (000000.dcm) are not those of the download (1-1.dcm) and are not used.

Ids: patient_id = exam_id = `patient_id` (DDSM has one exam per case); a breast is (patient_id,
laterality). An image is (patient_id, laterality, view): DDSM has one image per view, and an image
whose breast has both a mass and a calcification is listed in the mass and the calc CSVs, under two
TCIA subjects (Mass-..., Calc-...) and so two series holding the same pixels. One image row is
kept per (patient_id, laterality, view): the first existing file in the order of the CSVs above;
another file of the same view is left out ("same view listed in another CSV"). Several rows of one
image (abnormality ids 1, 2, ...) are one image.

Task `malignant` (breast-level, repeated on each image of the breast): "1" when any abnormality
of the breast, in any of the four CSVs, is MALIGNANT; "0" when all are BENIGN or
BENIGN_WITHOUT_CALLBACK; "" (image left out, "unknown label value") when a value is neither and
none is MALIGNANT.

Split (official): an image of a training CSV is "train", of a test CSV "test"; a patient listed
in a training and a test CSV goes to test whole (counted in notes). DICOMs are Secondary Capture
files without ImageLaterality or ViewPosition: laterality and view come from the CSV.

ROI boxes need pixels, so they are a separate pass: `read_roi_boxes(tables, root)` (see there),
called on what `read_tables` returned; `read_tables` itself only reads tables and stats paths.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from milpf_jax.reading.public.common import DatasetOptions, DatasetTables, read_table

NAME = "cbis"
TASKS = ("malignant",)
HAS_OFFICIAL_SPLIT = True
DOC = ("CBIS-DDSM (TCIA; Lee et al. 2017, Scientific Data): "
       "https://www.cancerimagingarchive.net/collection/cbis-ddsm/")

# (file, abnormality kind, official split, density column): the order in which images are kept.
CASE_CSVS = (
    ("mass_case_description_train_set.csv", "mass", "train", "breast_density"),
    ("mass_case_description_test_set.csv", "mass", "test", "breast_density"),
    ("calc_case_description_train_set.csv", "calcification", "train", "breast density"),
    ("calc_case_description_test_set.csv", "calcification", "test", "breast density"),
)
TCIA_METADATA = "metadata.csv"
CASE_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id",
                "abnormality type", "pathology", "image file path", "cropped image file path",
                "ROI mask file path")
METADATA_COLUMNS = ("Series UID", "File Location")
LATERALITY = {"LEFT": "L", "RIGHT": "R"}
PATHOLOGY = {"MALIGNANT": "1", "BENIGN": "0", "BENIGN_WITHOUT_CALLBACK": "0"}
DENSITY_LETTERS = {1: "A", 2: "B", 3: "C", 4: "D"}


def _density(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return ""
    return DENSITY_LETTERS.get(int(value), "") if value.is_integer() else ""


def read_cases(root: Path) -> list[dict]:
    """Every abnormality row of the four CSVs, with its CSV's kind and split under `_kind`,
    `_split`, `_csv`; a missing file or column raises, naming the file and the column."""
    cases = []
    for name, kind, split, density in CASE_CSVS:
        rows = read_table(Path(root) / name, (*CASE_COLUMNS, density),
                          what="CBIS-DDSM case description")
        for row in rows:
            row["_density"] = row[density]
            row["_kind"] = row["abnormality type"].lower() or kind
            row["_split"], row["_csv"] = split, name
        cases.extend(rows)
    return cases


class SeriesIndex:
    """CSV paths -> files on disk, through metadata.csv's Series UID -> File Location."""

    def __init__(self, root: Path, notes):
        self.root = Path(os.path.abspath(root))
        self.notes = notes
        rows = read_table(self.root / TCIA_METADATA, METADATA_COLUMNS,
                          what="TCIA download metadata (NBIA Data Retriever)")
        self.folders: dict[str, str] = {}
        self.studies: dict[str, str] = {}
        for row in rows:
            location = row["File Location"].replace("\\", "/")
            parts = [p for p in location.split("/") if p not in ("", ".")]
            self.folders[row["Series UID"]] = os.path.join(self.root, *parts)
            self.studies[row["Series UID"]] = row.get("Study UID", "")
        self._listing: dict[str, list[str]] = {}

    def files(self, folder: str) -> list[str]:
        """The folder's .dcm files, sorted (one listing per folder)."""
        if folder not in self._listing:
            try:
                names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".dcm"))
            except OSError:
                names = []
            self._listing[folder] = [os.path.join(folder, n) for n in names]
        return self._listing[folder]

    def series_files(self, csv_path: str) -> tuple[str, list[str]]:
        """("", files of the path's series) or (why not, []) for one CSV path."""
        parts = [p for p in csv_path.replace("\\", "/").split("/") if p]
        if len(parts) < 3:
            return "image path not Subject/Study/Series/file", []
        study, series = parts[1], parts[2]
        folder = self.folders.get(series)
        if folder is None:
            return "series not in metadata.csv", []
        if self.studies.get(series) and self.studies[series] != study:
            self.notes["CSV path's Study UID differs from metadata.csv (Series UID used)"] += 1
        files = self.files(folder)
        return ("", files) if files else ("file missing", [])

    def placeholder(self, csv_path: str) -> str:
        """Where an unresolved CSV path is reported: the path as written, under root."""
        return os.path.join(self.root, *[p for p in csv_path.replace("\\", "/").split("/") if p])


def _breast_malignant(rows: list[dict]) -> str:
    values = [PATHOLOGY.get(r["pathology"].upper(), "?") for r in rows]
    return "1" if "1" in values else "" if "?" in values else "0"


def read_tables(root: Path, options: DatasetOptions) -> DatasetTables:
    """CBIS-DDSM's kept images and exclusions (see the module doc); no lesions (read_roi_boxes)."""
    tables = DatasetTables(NAME, TASKS, has_official_split=HAS_OFFICIAL_SPLIT)
    notes = tables.notes
    cases = read_cases(root)
    index = SeriesIndex(root, notes)

    trained = {r["patient_id"] for r in cases if r["_split"] == "train"}
    tested = {r["patient_id"] for r in cases if r["_split"] == "test"}
    if trained & tested:
        notes["patient in training and test CSVs -> test"] += len(trained & tested)

    by_breast: dict[tuple[str, str], list[dict]] = defaultdict(list)
    by_view: dict[tuple[str, str, str], list[dict]] = defaultdict(list)  # in CSV order
    reported: set[str] = set()  # CSV image paths already left out
    for row in cases:
        patient = row["patient_id"]
        laterality = LATERALITY.get(row["left or right breast"].upper(), "")
        view = row["image view"].upper()
        if not laterality or not view:
            if row["image file path"] not in reported:
                reported.add(row["image file path"])
                tables.exclude("no laterality" if not laterality else "no view",
                               path=index.placeholder(row["image file path"]),
                               patient_id=patient, exam_id=patient, laterality=laterality,
                               view=view)
            continue
        by_breast[patient, laterality].append(row)
        by_view[patient, laterality, view].append(row)

    for (patient, laterality, view), rows in by_view.items():
        ids = {"patient_id": patient, "exam_id": patient, "laterality": laterality, "view": view}
        kept = ""
        for csv_path in dict.fromkeys(r["image file path"] for r in rows):
            why, files = index.series_files(csv_path)
            if why:
                tables.exclude(why, path=index.placeholder(csv_path), **ids)
            elif not kept:
                kept = files[0]
                if len(files) > 1:
                    notes["full-mammogram series with several files (first sorted taken)"] += 1
            elif files[0] != kept:
                tables.exclude("same view listed in another CSV", path=files[0], **ids)
        if not kept:
            continue
        malignant = _breast_malignant(by_breast[patient, laterality])
        if not malignant:
            tables.exclude("unknown label value", path=kept, **ids)
            continue
        density = next((d for d in (_density(r["_density"]) for r in rows) if d), "")
        if not density:
            notes["breast density outside 1-4 -> ''"] += 1
        tables.images.append({
            "path": kept, **ids,
            "official_split": "test" if patient in tested else "train",
            "malignant": malignant, "density": density,
        })
    return tables


def _header_size(path: str, sizes: dict, notes) -> tuple[int, int] | None:
    """(Rows, Columns) from a DICOM header, reading no pixels; None (noted) if unreadable."""
    if path not in sizes:
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sizes[path] = (int(ds.Rows), int(ds.Columns))
        except (OSError, EOFError, InvalidDicomError, AttributeError, ValueError, TypeError):
            notes["unreadable DICOM header in the ROI pass (skipped)"] += 1
            sizes[path] = None
    return sizes[path]


def _nonzero_box(path: str) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), half-open, around a mask's nonzero pixels; None for an empty mask."""
    import numpy as np
    import pydicom

    mask = pydicom.dcmread(path).pixel_array
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def read_roi_boxes(tables: DatasetTables, root: Path) -> list[dict]:
    """Lesion boxes of the kept images, from the ROI masks: a separate pass that reads pixels.

    `tables` is what `read_tables(root, ...)` returned (its ids not yet renamed); the CSVs are
    read again for each abnormality's `cropped image file path` and `ROI mask file path`. Their
    series may hold the mask, the crop or both (and some rows swap the two paths), so every .dcm
    file of both series is a candidate: the mask is the candidate whose header's Rows x Columns
    equals the full mammogram's (the crop is small); only the headers are read to decide, then
    the mask's pixels, and the box is the bounding box of its nonzero pixels (half-open source
    pixels), kind = `abnormality type` ("mass" / "calcification"). Events go to `tables.notes`.

    Returns dicts path, y0, x0, y1, x1, kind, for `tables.lesions.extend(...)`.
    """
    notes = tables.notes
    index = SeriesIndex(root, notes)
    kept = {(im["patient_id"], im["laterality"], im["view"]): im["path"] for im in tables.images}
    sizes: dict[str, tuple[int, int] | None] = {}
    boxes: list[dict] = []
    seen: set[tuple] = set()
    for row in read_cases(root):
        laterality = LATERALITY.get(row["left or right breast"].upper(), "")
        image = kept.get((row["patient_id"], laterality, row["image view"].upper()))
        if image is None:
            continue
        _, crop_files = index.series_files(row["cropped image file path"])
        _, mask_files = index.series_files(row["ROI mask file path"])
        candidates = sorted(set(crop_files) | set(mask_files))
        full = _header_size(image, sizes, notes)
        if not candidates or full is None:
            notes["abnormality without a readable ROI series (no box)"] += 1
            continue
        masks = [c for c in candidates if _header_size(c, sizes, notes) == full]
        if not masks:
            notes["no ROI file of the full image's size (no box)"] += 1
            continue
        if len(masks) > 1:
            notes["several ROI files of the full image's size (first sorted taken)"] += 1
        mask = masks[0]
        if mask not in mask_files:
            notes["ROI mask found at the cropped image path (paths swapped)"] += 1
        box = _nonzero_box(mask)
        if box is None:
            notes["empty ROI mask (no box)"] += 1
            continue
        key = (image, *box, row["_kind"])
        if key in seen:
            continue
        seen.add(key)
        y0, x0, y1, x1 = box
        boxes.append({"path": image, "y0": y0, "x0": x0, "y1": y1, "x1": x1,
                      "kind": row["_kind"]})
    return boxes
