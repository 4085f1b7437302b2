"""VinDr-Mammo (PhysioNet 1.0.0): its two annotation tables, read as they are distributed.

Source: Nguyen et al., "VinDr-Mammo: A large-scale benchmark dataset for computer-aided
diagnosis in full-field digital mammography", Scientific Data 10:277 (2023), and the PhysioNet
page https://physionet.org/content/vindr-mammo/1.0.0/ . The column names and values below are
those the dataset paper and the PhysioNet page describe (the finding categories spelt as
published: `Mass`, `Suspicious Calcification`, `No Finding`, ...).

Files (under `root`):
- `breast-level_annotations.csv`, one row per image. Columns used: `study_id`, `image_id`,
  `laterality` (L/R), `view_position` (CC/MLO), `breast_birads` ("BI-RADS 1".."BI-RADS 5"),
  `breast_density` ("DENSITY A".."DENSITY D"), `split` ("training"/"test"). `series_id`,
  `height` and `width` are not needed.
- `finding_annotations.csv`, one row per finding (or one "No Finding" row per image). Columns
  used: `image_id`, `finding_categories` (a Python-list string such as "['Mass']",
  "['No Finding']" or "['Mass', 'Suspicious Calcification']", parsed with ast.literal_eval),
  `xmin`, `ymin`, `xmax`, `ymax` (float source pixels, empty for "No Finding"). The image's
  study, laterality and view come from the breast-level table, through `image_id`.
- images at `images/<study_id>/<image_id>.dicom` (only stat'ed here).

Ids: the release names no patient, so patient_id = exam_id = study_id; a breast is (study_id,
laterality). Tasks:
- `birads` (default): "BI-RADS N" -> "N" (1..5), per image; the images of a breast carry the
  same value, the most suspicious when the table's per-image values differ (counted in notes).
- `mass`, `calcification` (the paper's VinDr-Mass / VinDr-Calcification): "1" for every image
  of a breast when any kept image of that breast lists `Mass`, resp. `Suspicious Calcification`,
  among its finding categories, else "0".
Split: the table's own `split`, "training" -> "train", "test" -> "test".
Shared columns: `density` ("DENSITY C" -> "C"; "" when not A-D). Lesions: one row per box and
category (a finding with two categories gives two rows with the same box), kind = category.

Left out (with the reason): an image_id listed more than once ("duplicated image id", every
copy), no or unknown laterality, unknown view, a birads value outside BI-RADS 1-5 ("unknown label
value"), an unknown split value, a missing DICOM ("file missing").
"""

from __future__ import annotations

import ast
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

from milpf_jax.reading.public.common import (
    DatasetOptions,
    DatasetTables,
    box_from_xy,
    image_problem,
    most_suspicious,
    read_table,
)

NAME = "vindr"
TASKS = ("birads", "mass", "calcification")
HAS_OFFICIAL_SPLIT = True
DOC = ("VinDr-Mammo 1.0.0 (PhysioNet; Nguyen et al., Sci Data 2023): "
       "https://physionet.org/content/vindr-mammo/1.0.0/")

BREAST_TABLE = "breast-level_annotations.csv"
FINDING_TABLE = "finding_annotations.csv"
BREAST_COLUMNS = ("study_id", "image_id", "laterality", "view_position", "breast_birads",
                  "breast_density", "split")
FINDING_COLUMNS = ("image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax")

BIRADS = {f"BI-RADS {n}": str(n) for n in range(1, 6)}
BIRADS_ORDER = ("5", "4", "3", "2", "1")  # most suspicious first
BINARY_ORDER = ("1", "0")
DENSITY = {f"DENSITY {d}": d for d in "ABCD"}
SPLITS = {"training": "train", "test": "test"}
VIEWS = ("CC", "MLO")
# Binary task -> the finding category that makes a breast positive.
FINDING_TASKS = {"mass": "Mass", "calcification": "Suspicious Calcification"}
NO_FINDING = "No Finding"


def _categories(text: str, notes: Counter) -> list[str]:
    """"['Mass', 'Suspicious Calcification']" -> ['Mass', 'Suspicious Calcification']."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        notes["finding_categories not a list, taken as one category"] += 1
        return [text] if text else []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        notes["finding_categories not a list, taken as one category"] += 1
        return [text]
    return [str(v).strip() for v in value if str(v).strip()]


def _box(row: dict[str, str]) -> tuple[int, int, int, int] | None:
    """The finding's box, or None when its coordinates are empty (or NaN)."""
    try:
        xy = [float(row[c]) for c in ("xmin", "ymin", "xmax", "ymax")]
    except ValueError:
        return None
    if any(math.isnan(v) or math.isinf(v) for v in xy):
        return None
    return box_from_xy(*xy)


def read_tables(root: Path, options: DatasetOptions) -> DatasetTables:
    root = Path(os.path.abspath(root))
    tables = DatasetTables(dataset=NAME, tasks=TASKS, has_official_split=HAS_OFFICIAL_SPLIT)
    rows = read_table(root / BREAST_TABLE, BREAST_COLUMNS,
                      what="VinDr-Mammo breast-level annotations")
    findings = read_table(root / FINDING_TABLE, FINDING_COLUMNS,
                          what="VinDr-Mammo finding annotations")

    counts = Counter(r["image_id"] for r in rows)
    kept: dict[str, dict] = {}  # image_id -> image
    for r in rows:
        study, image_id = r["study_id"], r["image_id"]
        laterality, view = r["laterality"].upper(), r["view_position"].upper()
        path = str(root / "images" / study / f"{image_id}.dicom")
        where = {"path": path, "patient_id": study, "exam_id": study,
                 "laterality": laterality, "view": view}
        reason = image_problem(where, duplicated=counts[image_id] > 1, views=VIEWS,
                               label_ok=r["breast_birads"] in BIRADS,
                               split_ok=r["split"].lower() in SPLITS)
        if reason:
            tables.exclude(reason, **where)
            continue
        density = DENSITY.get(r["breast_density"].upper(), "")
        if not density:
            tables.notes["breast_density not DENSITY A-D -> ''"] += 1
        kept[image_id] = where | {
            "official_split": SPLITS[r["split"].lower()],
            "birads": BIRADS[r["breast_birads"]],
            "density": density,
        }

    categories: dict[str, set[str]] = defaultdict(set)  # image_id -> its finding categories
    for f in findings:
        image = kept.get(f["image_id"])
        if image is None:
            if f["image_id"] not in counts:
                tables.notes["finding of an image not in the breast-level table"] += 1
            continue
        cats = [c for c in _categories(f["finding_categories"], tables.notes) if c != NO_FINDING]
        categories[f["image_id"]].update(cats)
        if not cats:
            continue
        box = _box(f)
        if box is None:
            tables.notes["finding without box"] += 1
            continue
        y0, x0, y1, x1 = box
        for c in cats:
            tables.lesions.append({"path": image["path"], "y0": y0, "x0": x0, "y1": y1,
                                   "x1": x1, "kind": c})

    breasts: dict[tuple[str, str], list[str]] = defaultdict(list)
    for image_id, image in kept.items():
        breasts[image["exam_id"], image["laterality"]].append(image_id)
    for ids in breasts.values():
        birads = [kept[i]["birads"] for i in ids]
        label = most_suspicious(birads, BIRADS_ORDER)
        if len(set(birads)) > 1:
            tables.notes["breast_birads differ within a breast -> most suspicious"] += 1
        cats = set().union(*(categories[i] for i in ids))
        for i in ids:
            kept[i]["birads"] = label
            for task, category in FINDING_TASKS.items():
                kept[i][task] = "1" if category in cats else "0"

    columns = ("path", "patient_id", "exam_id", "laterality", "view", "official_split",
               *TASKS, "density")
    tables.images = [{c: image[c] for c in columns} for image in kept.values()]
    return tables
