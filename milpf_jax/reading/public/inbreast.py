"""INbreast: its `INbreast.csv`, DICOM file names and XML annotations, read as distributed.

Source: Moreira et al., "INbreast: toward a full-field digital mammographic database", Academic
Radiology 19(2):236-248 (2012), and the release's own files. The columns and the file naming below
are those of the release's `INbreast.csv` and `AllDICOMs/` as the paper and its users describe
them.

Files (under `root`):
- `INbreast.csv`, semicolon-separated, one row per image, header
  `Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads`. Used:
  `Laterality` (L/R), `View` (CC, MLO; "ML" is read as MLO), `Acquisition date`, `File Name`
  (the number that starts the DICOM's name), `ACR` (density 1-4 -> A-D) and `Bi-Rads` (1, 2, 3,
  4a, 4b, 4c, 5, 6). `Patient ID` and `Patient age` read "removed" in the public copy and are
  not used.
- `AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm`: the image is the one file
  matching `<File Name>_*.dcm` (the folder is listed once; files are only stat'ed).
- `AllXML/<File Name>.xml` (optional; skipped when the folder is absent): an Apple plist whose
  `Images[*].ROIs[*]` each have a `Name` (Mass, Calcification, Cluster, ...) and `Point_px`
  strings "(x, y)"; a lesion box is the min/max of an ROI's points (box_from_xy), kind = Name.

Ids: patient_id = the patient hash in the DICOM's name; exam_id = patient hash + "_" +
`Acquisition date`; a breast is (patient, exam, laterality). Laterality and view come from the
csv and must agree with the file name (the file name's "ML" means MLO; it is kept as
`view_code`). Task `birads` only ("4b" -> "4B"), breast level: the images of a breast carry the
most suspicious of their values (a difference is counted in notes). No official split
(official_split ""). Shared columns: `density` (A-D or ""), `view_code`.

Left out (with the reason): a File Name listed more than once ("duplicated image id", every
copy), no matching DICOM ("file missing"), several ("several files match file name"), a name
outside the pattern above ("file name not in the INbreast pattern"), no or unknown laterality,
unknown view, "laterality/view disagree with file name", a Bi-Rads value outside the list
("unknown label value").
"""

from __future__ import annotations

import os
import plistlib
import re
from collections import Counter, defaultdict
from pathlib import Path
from xml.parsers.expat import ExpatError

from milpf_jax.reading.public.common import (
    DatasetOptions,
    DatasetTables,
    box_from_xy,
    most_suspicious,
    read_table,
)

NAME = "inbreast"
TASKS = ("birads",)
HAS_OFFICIAL_SPLIT = False
DOC = ("INbreast (Moreira et al., Academic Radiology 19(2), 2012; "
       "https://doi.org/10.1016/j.acra.2011.09.014)")

TABLE = "INbreast.csv"
COLUMNS = ("Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads")
BIRADS_ORDER = ("6", "5", "4C", "4B", "4A", "3", "2", "1")  # most suspicious first
VIEWS = {"CC": "CC", "MLO": "MLO", "ML": "MLO"}
DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D"}
DICOM_NAME = re.compile(r"^(?P<file>[^_]+)_(?P<patient>[^_]+)_MG_(?P<laterality>[^_]+)_"
                        r"(?P<view>[^_]+)_ANON\.dcm$", re.IGNORECASE)
POINT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _file_name(text: str) -> str:
    """'22678622' as written; '22678622.0' (a spreadsheet's number) -> '22678622'."""
    return text[:-2] if re.fullmatch(r"\d+\.0", text) else text


def _dicoms(folder: Path) -> dict[str, list[str]]:
    """File Name -> the DICOM names in `folder` that match `<File Name>_*.dcm`."""
    found: dict[str, list[str]] = defaultdict(list)
    if folder.is_dir():
        for name in sorted(os.listdir(folder)):
            if "_" in name and name.lower().endswith(".dcm") and (folder / name).is_file():
                found[name.split("_", 1)[0]].append(name)
    return found


def _rois(path: Path, notes: Counter) -> list[tuple[str, list[tuple[float, float]]]]:
    """(Name, [(x, y), ...]) for each ROI of an INbreast XML (Apple plist)."""
    try:
        with open(path, "rb") as f:
            plist = plistlib.load(f)
    except (plistlib.InvalidFileException, ExpatError, ValueError) as e:
        notes[f"XML annotation unreadable ({type(e).__name__})"] += 1
        return []
    rois = []
    for image in plist.get("Images", []) if isinstance(plist, dict) else []:
        for roi in image.get("ROIs", []) or []:
            points = []
            for p in roi.get("Point_px", []) or []:
                xy = POINT.findall(str(p))
                if len(xy) == 2:
                    points.append((float(xy[0]), float(xy[1])))
            if points:
                rois.append((str(roi.get("Name", "")).strip() or "unknown", points))
            else:
                notes["XML ROI without points"] += 1
    return rois


def read_tables(root: Path, options: DatasetOptions) -> DatasetTables:
    root = Path(os.path.abspath(root))
    tables = DatasetTables(dataset=NAME, tasks=TASKS, has_official_split=HAS_OFFICIAL_SPLIT)
    rows = read_table(root / TABLE, COLUMNS, delimiter=";", what="INbreast table")
    folder = root / "AllDICOMs"
    dicoms = _dicoms(folder)

    rows = [{**r, "File Name": _file_name(r["File Name"])} for r in rows]
    counts = Counter(r["File Name"] for r in rows)
    kept: list[dict] = []
    for r in rows:
        if not any(r.values()):
            tables.notes["empty row"] += 1
            continue
        file_name = r["File Name"]
        laterality = r["Laterality"].upper()
        view = VIEWS.get(r["View"].upper(), r["View"].upper())
        matches = dicoms.get(file_name, []) if file_name else []
        path = str(folder / matches[0]) if len(matches) == 1 else str(folder / f"{file_name}_*.dcm")
        parsed = DICOM_NAME.match(matches[0]) if len(matches) == 1 else None
        patient = parsed["patient"] if parsed else ""
        exam = f"{patient}_{r['Acquisition date']}" if patient else ""
        where = {"path": path, "patient_id": patient, "exam_id": exam,
                 "laterality": laterality, "view": view}
        birads = r["Bi-Rads"].upper()
        if file_name and counts[file_name] > 1:
            reason = "duplicated image id"
        elif not matches:
            reason = "file missing"
        elif len(matches) > 1:
            reason = "several files match file name"
        elif parsed is None:
            reason = "file name not in the INbreast pattern"
        elif not laterality:
            reason = "no laterality"
        elif laterality not in ("L", "R"):
            reason = "unknown laterality"
        elif view not in VIEWS.values():
            reason = "unknown view"
        elif (parsed["laterality"].upper() != laterality
              or VIEWS.get(parsed["view"].upper()) != view):
            reason = "laterality/view disagree with file name"
        elif birads not in BIRADS_ORDER:
            reason = "unknown label value"
        else:
            reason = ""
        if reason:
            tables.exclude(reason, **where)
            continue
        density = DENSITY.get(_file_name(r["ACR"]), "")
        if not density:
            tables.notes["ACR not 1-4 -> density ''"] += 1
        kept.append(where | {
            "official_split": "",
            "birads": birads,
            "density": density,
            "view_code": parsed["view"].upper(),
            "_file": file_name,
        })

    breasts: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for image in kept:
        breasts[image["patient_id"], image["exam_id"], image["laterality"]].append(image)
    for images in breasts.values():
        values = [i["birads"] for i in images]
        if len(set(values)) > 1:
            tables.notes["Bi-Rads differ within a breast -> most suspicious"] += 1
        label = most_suspicious(values, BIRADS_ORDER)
        for image in images:
            image["birads"] = label

    xml = root / "AllXML"
    if xml.is_dir():
        for image in kept:
            path = xml / f"{image['_file']}.xml"
            if not path.is_file():
                continue
            for kind, points in _rois(path, tables.notes):
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                y0, x0, y1, x1 = box_from_xy(min(xs), min(ys), max(xs), max(ys))
                tables.lesions.append({"path": image["path"], "y0": y0, "x0": x0, "y1": y1,
                                       "x1": x1, "kind": kind})
    for image in kept:
        del image["_file"]
    tables.images = kept
    return tables
