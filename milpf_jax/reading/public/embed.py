"""EMBED Open Data, the Emory Breast Imaging Dataset's public release, read from its own tables.

Release: EMBED Open Data (Jeong et al. 2023, Radiology: Artificial Intelligence 5(1) e220047),
on the AWS Open Data registry (bucket `embed-dataset-open`), documented at
https://github.com/Emory-HITI/EMBED_Open_Data (README data descriptor, Sample_Notebook.ipynb).
The columns and codes below are those of that README's data descriptor (section VI, clinical
data: empi_anon, acc_anon, desc, tissueden, asses letters, side, path_severity 0-6; section VII,
metadata: anon_dicom_path, FinalImageType 2D / C-view, ImageLateralityFinal, ViewPosition,
spot_mag 0/1, ROI_coords as lists of 'ymin, xmin, ymax, xmax').

Layout under `root` (the bucket's layout):
  tables/EMBED_OpenData_clinical.csv   one row per finding
  tables/EMBED_OpenData_metadata.csv   one row per image
  images/...                           the DICOMs

Clinical columns used: `empi_anon` (patient), `acc_anon` (exam accession), `side` (the
finding's breast: L, R, B = both, empty = the exam as a whole), `asses` (BI-RADS assessment
letter: A N B P S M K = 0 1 2 3 4 5 6; X = none given), `path_severity` (pathology grouped into
severity classes: 0 invasive cancer, 1 non-invasive cancer, 2 high-risk, 3 borderline, 4 benign,
5 normal tissue, 6 other non-breast cancer; empty = not biopsied), `desc` (exam description),
and, when present, `tissueden` (BI-RADS density 1-4 -> A-D; 5 = male, left empty) and
`age_at_study`.

Metadata columns used: `empi_anon`, `acc_anon`, `anon_dicom_path` (the distributor's mount path,
re-rooted as below), `ImageLateralityFinal` (L/R), `ViewPosition` (DICOM view code),
`FinalImageType` ("2D", or the synthetic 2D "cview", also spelt "C-view"; other types such as
the ROI secondary captures are left out), `spot_mag` (truthy for spot-compression and
magnification views), `ROI_coords` (lesion boxes) and, when present, `Manufacturer`.

Ids: patient_id = `empi_anon`, exam_id = `acc_anon`; a breast is (empi_anon, acc_anon,
ImageLateralityFinal).

Re-rooting (`PATH_ANCHOR`): `anon_dicom_path` reads like
`/mnt/NAS2/mammo/anon_dicom/cohort_1/<empi>/<study>/<series>/<sop>.dcm`; the bucket holds that
file at `images/cohort_1/<empi>/...`. The image is therefore `<root>/images/` joined with the
path components after the first component equal to `anon_dicom`. A path without such a
component is left out ("image path outside anon_dicom").

Findings and images are joined on (empi_anon, acc_anon); a finding applies to an image's breast
when its `side` equals `ImageLateralityFinal`, is `B`, or is empty (as in the release's
Sample_Notebook).

Tasks (breast-level, so repeated on each image of the breast):
  birads (default): the most suspicious applicable assessment, in the order
    6 > 5 > 4 > 0 > 3 > 2 > 1 (`BIRADS_ORDER`; X and unknown letters ignored, the latter
    counted in notes); "" when no applicable finding has one.
  pathology: "1" when an applicable finding has path_severity 0 or 1 (cancer); "0" when at
    least one applicable finding has a severity and every such severity is 4 or 5 (benign or
    normal); otherwise "" (not biopsied, or high-risk/borderline/other only).
An image whose every task is "" is left out ("no applicable finding"; "exam not in the
clinical table" when its exam has no clinical row at all).

Images kept: FinalImageType 2D (and C-view with `DatasetOptions.include_cview`, marked in
`image_type` as "2D" / "cview"), not spot/magnification, with laterality L or R, a view, a
known label, and a file on disk; the first metadata row of a path wins, later ones are left out
("duplicated image path"). Extra columns: density, age, manufacturer, exam_type ("screening"
when `desc` contains "screen", "diagnostic" when it contains "diag", else ""), image_type.
EMBED has no official split (official_split "").

ROI boxes: `ROI_coords` holds a Python literal such as "((y0, x0, y1, x1),)" or "()": boxes of
four numbers, row first (ymin, xmin, ymax, xmax), with the max corner inclusive; each becomes a
lesion of kind "roi" in half-open pixels (y0, x0, ymax + 1, xmax + 1). Entries that are not four
numbers, and strings that do not parse, are counted in notes.

Both tables are streamed column-wise (`common.read_columns`) rather than read whole: the
metadata table's ~480,000 rows of ~100 columns would take several GB as dicts.
"""

from __future__ import annotations

import ast
import math
import os
from collections import defaultdict
from pathlib import Path

from milpf_jax.reading.public.common import (
    DatasetOptions,
    DatasetTables,
    is_file,
    most_suspicious,
    read_columns,
)

NAME = "embed"
TASKS = ("birads", "pathology")
HAS_OFFICIAL_SPLIT = False
DOC = ("EMBED Open Data (Jeong et al. 2023, Radiology: AI; AWS Open Data registry): "
       "https://github.com/Emory-HITI/EMBED_Open_Data")

CLINICAL_CSV = Path("tables") / "EMBED_OpenData_clinical.csv"
METADATA_CSV = Path("tables") / "EMBED_OpenData_metadata.csv"
IMAGES_DIR = "images"
# The component of `anon_dicom_path` after which the path continues under <root>/images/.
PATH_ANCHOR = "anon_dicom"

CLINICAL_COLUMNS = ("empi_anon", "acc_anon", "desc", "side", "asses", "path_severity")
CLINICAL_OPTIONAL = ("tissueden", "age_at_study")
METADATA_COLUMNS = ("empi_anon", "acc_anon", "anon_dicom_path", "ImageLateralityFinal",
                    "ViewPosition", "FinalImageType", "spot_mag", "ROI_coords")
METADATA_OPTIONAL = ("Manufacturer",)

ASSESSMENT_BIRADS = {"A": "0", "N": "1", "B": "2", "P": "3", "S": "4", "M": "5", "K": "6"}
NO_ASSESSMENT = "X"
# Most suspicious first: a recall (0) outranks probably benign (3), a biopsy (4-6) outranks both.
BIRADS_ORDER = ("6", "5", "4", "0", "3", "2", "1")
CANCER_SEVERITIES = frozenset({0, 1})
BENIGN_SEVERITIES = frozenset({4, 5})
DENSITY_LETTERS = {1: "A", 2: "B", 3: "C", 4: "D"}  # tissueden 5 (male) has no letter
IMAGE_TYPES = {"2d": "2D", "cview": "cview", "c-view": "cview"}
_FALSE = frozenset({"", "0", "0.0", "false", "no", "nan", "none"})
_TRUE = frozenset({"1", "1.0", "true", "yes"})


def reroot(anon_dicom_path: str, root: str | Path) -> str:
    """`<root>/images/<the path after its first 'anon_dicom' component>`; "" when the path has
    no such component (or nothing after it).

    >>> reroot("/mnt/NAS2/mammo/anon_dicom/cohort_1/1/2/3.dcm", "/data/embed")
    '/data/embed/images/cohort_1/1/2/3.dcm'
    """
    parts = anon_dicom_path.replace("\\", "/").split("/")
    try:
        i = parts.index(PATH_ANCHOR)
    except ValueError:
        return ""
    rest = [p for p in parts[i + 1:] if p]
    return os.path.join(os.path.abspath(root), IMAGES_DIR, *rest) if rest else ""


def _number(text: str):
    """int for integral numeric text ("4", "4.0"), None for empty, NaN or non-numeric text."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value != int(value):
        return None
    return int(value)


def _number_text(text: str) -> str:
    """Numeric text without a trailing ".0" ("62.0" -> "62"); other text as it is."""
    value = _number(text)
    return str(value) if value is not None else ("" if text.lower() == "nan" else text)


def exam_type(desc: str) -> str:
    """"screening" / "diagnostic" from an exam description, "" when it says neither."""
    desc = desc.lower()
    return "screening" if "screen" in desc else "diagnostic" if "diag" in desc else ""


def parse_roi_coords(text: str, notes) -> list[tuple[int, int, int, int]]:
    """`ROI_coords` ("((ymin, xmin, ymax, xmax), ...)", max corner inclusive) -> half-open
    (y0, x0, y1, x1) boxes; unparseable strings and entries not of four numbers go to notes."""
    if not text or text.lower() in ("nan", "none", "()", "[]"):
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        notes["ROI_coords that do not parse (no box)"] += 1
        return []
    if isinstance(value, (tuple, list)) and len(value) == 4 and all(
            isinstance(v, (int, float)) for v in value):
        value = [value]  # one box written without the outer tuple
    boxes = []
    for entry in value if isinstance(value, (tuple, list)) else [value]:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in entry)):
            notes["ROI_coords entries that are not four numbers (no box)"] += 1
            continue
        ya, xa, yb, xb = entry
        y0, y1 = sorted((ya, yb))
        x0, x1 = sorted((xa, xb))
        boxes.append((max(math.floor(y0), 0), max(math.floor(x0), 0),
                      math.floor(y1) + 1, math.floor(x1) + 1))
    return boxes


def _finding(row: dict, notes) -> tuple[str, str, object]:
    """(side, BI-RADS digit or "", path severity: int, None when empty, or "?" when unknown)."""
    letter = row["asses"].upper()
    birads = ASSESSMENT_BIRADS.get(letter, "")
    if not birads and letter and letter != NO_ASSESSMENT:
        notes["unknown asses value (finding ignored for birads)"] += 1
    text = row["path_severity"]
    severity = _number(text) if text and text.lower() != "nan" else None
    if text and text.lower() != "nan" and severity not in range(7):
        notes["unknown path_severity value (breast not benign)"] += 1
        severity = "?"
    return row["side"].upper(), birads, severity


def _exam_fields(rows: list[dict]) -> dict[str, str]:
    """The exam-level columns (density, age, exam_type) from the exam's first non-empty values."""
    def first(column):
        return next((r[column] for r in rows if r.get(column, "").lower() not in ("", "nan")), "")
    density = _number(first("tissueden"))
    return {"density": DENSITY_LETTERS.get(density, ""),
            "age": _number_text(first("age_at_study")),
            "exam_type": exam_type(first("desc"))}


def breast_labels(findings, laterality: str) -> dict[str, str]:
    """{"birads", "pathology"} of one breast from its exam's (side, birads, severity) findings."""
    applicable = [f for f in findings if f[0] in (laterality, "B", "")]
    birads = most_suspicious((b for _, b, _ in applicable), BIRADS_ORDER)
    severities = {s for _, _, s in applicable if s is not None}
    if severities & CANCER_SEVERITIES:
        pathology = "1"
    elif severities and severities <= BENIGN_SEVERITIES:
        pathology = "0"
    else:
        pathology = ""
    return {"birads": birads, "pathology": pathology}


def _spot_mag(text: str, notes) -> bool:
    value = text.lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    number = _number(value)
    if number is None:
        notes["unrecognised spot_mag value (treated as spot/magnification)"] += 1
        return True
    return number != 0


def read_tables(root: Path, options: DatasetOptions) -> DatasetTables:
    """EMBED's kept images, ROI boxes and exclusions from the two tables (see the module doc)."""
    root = Path(os.path.abspath(root))
    tables = DatasetTables(NAME, TASKS, has_official_split=HAS_OFFICIAL_SPLIT)
    notes = tables.notes
    by_exam: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in read_columns(root / CLINICAL_CSV, CLINICAL_COLUMNS, CLINICAL_OPTIONAL,
                            what="EMBED clinical table"):
        by_exam[row["empi_anon"], row["acc_anon"]].append(row)
    findings = {exam: [_finding(r, notes) for r in rows] for exam, rows in by_exam.items()}
    exam_fields = {exam: _exam_fields(rows) for exam, rows in by_exam.items()}
    del by_exam

    labels: dict[tuple[str, str, str], dict[str, str]] = {}  # breast -> its task values
    first_seen: dict[str, tuple] = {}  # path -> (laterality, view, type) of its first row
    for row in read_columns(root / METADATA_CSV, METADATA_COLUMNS, METADATA_OPTIONAL,
                            what="EMBED metadata table"):
        patient, exam = row["empi_anon"], row["acc_anon"]
        laterality = row["ImageLateralityFinal"].upper()
        view = row["ViewPosition"].upper()
        path = reroot(row["anon_dicom_path"], root)
        ids = {"path": path or row["anon_dicom_path"], "patient_id": patient, "exam_id": exam,
               "laterality": laterality, "view": view}
        if not path:
            tables.exclude("image path outside anon_dicom", **ids)
            continue
        image_type = IMAGE_TYPES.get(row["FinalImageType"].lower(), "")
        if path in first_seen:
            if first_seen[path] != (laterality, view, image_type):
                notes["duplicated image path with another laterality, view or type "
                      "(first row kept)"] += 1
            tables.exclude("duplicated image path", **ids)
            continue
        first_seen[path] = (laterality, view, image_type)
        if image_type == "cview" and not options.include_cview:
            tables.exclude("C-view (synthetic 2D)", **ids)
            continue
        if not image_type:
            tables.exclude("not a 2D or C-view image", **ids)
            continue
        if _spot_mag(row["spot_mag"], notes):
            tables.exclude("spot compression or magnification view", **ids)
            continue
        if laterality not in ("L", "R"):
            tables.exclude("no laterality", **ids)
            continue
        if not view:
            tables.exclude("no view", **ids)
            continue
        if (patient, exam) not in findings:
            tables.exclude("exam not in the clinical table", **ids)
            continue
        breast = (patient, exam, laterality)
        label = labels.get(breast)
        if label is None:
            label = labels[breast] = breast_labels(findings[patient, exam], laterality)
        if not any(label.values()):
            tables.exclude("no applicable finding", **ids)
            continue
        if not is_file(path):
            tables.exclude("file missing", **ids)
            continue
        tables.images.append(ids | {"official_split": ""} | label | exam_fields[patient, exam] | {
            "manufacturer": row["Manufacturer"], "image_type": image_type})
        for y0, x0, y1, x1 in parse_roi_coords(row["ROI_coords"], notes):
            tables.lesions.append({"path": path, "y0": y0, "x0": x0, "y1": y1, "x1": x1,
                                   "kind": "roi"})
    return tables
