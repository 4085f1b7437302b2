"""RSNA Screening Mammography Breast Cancer Detection (Kaggle 2022): `train.csv` as distributed.

Source: the competition's data page,
https://www.kaggle.com/competitions/rsna-breast-cancer-detection/data . The columns below are the
released `train.csv`'s header (site_id, patient_id, image_id, laterality, view, age, cancer,
biopsy, invasive, BIRADS, implant, density, machine_id, difficult_negative_case), ages written as
floats ("61.0").

Files (under `root`):
- `train.csv`, one row per image, columns `site_id, patient_id, image_id, laterality, view,
  age, cancer, biopsy, invasive, BIRADS, implant, density, machine_id, difficult_negative_case`.
  Used: `site_id`, `patient_id`, `image_id`, `laterality` (L/R), `view` (CC, MLO and the rarer
  AT, LM, ML, LMO, kept with their code), `age`, `cancer` (0/1), `implant` (0/1), `density`
  (A-D or empty), `machine_id`. The competition's test.csv has no labels and is not read.
- images at `train_images/<patient_id>/<image_id>.dcm` (only stat'ed here).

Ids: the table names no exam, so exam_id = patient_id; a breast is (patient_id, laterality) and
every one of its images (often 3-8) goes into its bag. Task `cancer` (breast level): "1" for
every image of a breast when any kept image of it says 1, else "0". No official split with
labels: official_split is "". Shared columns: `site` (site_id), `age` ("61.0" -> "61"),
`implant`, `density` (A-D or ""); extra column `machine_id`. There is no manufacturer column.

Left out (with the reason): an image_id listed more than once ("duplicated image id", every
copy), no or unknown laterality, unknown view, a cancer value other than 0/1 ("unknown label
value"), a missing DICOM ("file missing").
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path

from milpf_jax.reading.public.common import (
    DatasetOptions,
    DatasetTables,
    image_problem,
    most_suspicious,
    read_table,
)

NAME = "rsna"
TASKS = ("cancer",)
HAS_OFFICIAL_SPLIT = False
DOC = ("RSNA Screening Mammography Breast Cancer Detection (Kaggle 2022): "
       "https://www.kaggle.com/competitions/rsna-breast-cancer-detection/data")

TABLE = "train.csv"
COLUMNS = ("site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer",
           "implant", "density", "machine_id")
VIEWS = ("CC", "MLO", "AT", "LM", "ML", "LMO", "XCCL", "XCCM", "FB", "SIO", "CV")
BINARY_ORDER = ("1", "0")
DENSITIES = ("A", "B", "C", "D")


def _number(text: str) -> str:
    """'61.0' -> '61', '' or 'nan' -> ''; other text as it is."""
    try:
        value = float(text)
    except ValueError:
        return text
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else text


def read_tables(root: Path, options: DatasetOptions) -> DatasetTables:
    root = Path(os.path.abspath(root))
    tables = DatasetTables(dataset=NAME, tasks=TASKS, has_official_split=HAS_OFFICIAL_SPLIT)
    rows = read_table(root / TABLE, COLUMNS, what="RSNA train table")

    counts = Counter(r["image_id"] for r in rows)
    kept: list[dict] = []
    for r in rows:
        patient, image_id = r["patient_id"], r["image_id"]
        laterality, view = r["laterality"].upper(), r["view"].upper()
        path = str(root / "train_images" / patient / f"{image_id}.dcm")
        where = {"path": path, "patient_id": patient, "exam_id": patient,
                 "laterality": laterality, "view": view}
        cancer = _number(r["cancer"])
        reason = image_problem(where, duplicated=counts[image_id] > 1, views=VIEWS,
                               label_ok=cancer in ("0", "1"))
        if reason:
            tables.exclude(reason, **where)
            continue
        density = r["density"].upper()
        if density and density not in DENSITIES:
            tables.notes["density not A-D -> ''"] += 1
            density = ""
        kept.append(where | {
            "official_split": "",
            "cancer": cancer,
            "site": r["site_id"],
            "age": _number(r["age"]),
            "implant": _number(r["implant"]),
            "density": density,
            "machine_id": r["machine_id"],
        })

    breasts: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for image in kept:
        breasts[image["exam_id"], image["laterality"]].append(image)
    for images in breasts.values():
        label = most_suspicious([i["cancer"] for i in images], BINARY_ORDER)
        if len({i["cancer"] for i in images}) > 1:
            tables.notes["cancer differs within a breast -> 1"] += 1
        for image in images:
            image["cancer"] = label
    tables.images = kept
    return tables
