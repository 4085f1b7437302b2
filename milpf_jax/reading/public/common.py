"""What every public-cohort adapter shares: the tables it returns, its exclusions, its checks.

An adapter (`vindr`, `rsna`, `embed`, `cbis`, `inbreast`) reads a dataset's own tables exactly
as they are distributed and returns a `DatasetTables`: one dict per kept image (the manifest's
columns, one raw label per task, the dataset's useful columns under shared names), the lesion
boxes, and every image it left out with the reason. It reads tables and stats paths, never
pixels (CBIS's ROI masks are read in a separate pass). `milpf_jax.reading.public.build` turns
that into the manifest, its `<stem>.lesions.csv` and `<stem>.excluded.csv`.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from milpf_jax.reading.manifest import LESION_COLUMNS, TASK_KINDS  # noqa: F401 (re-exported)

IMAGE_COLUMNS = ("path", "patient_id", "exam_id", "laterality", "view")
# Columns kept under one name across datasets, when the dataset has them.
SHARED_COLUMNS = ("density", "age", "manufacturer", "site", "implant", "exam_type", "image_type",
                  "view_code", "source_split")
EXCLUDED_COLUMNS = (*IMAGE_COLUMNS, "reason")
# The dataset's own split, per image: "train" (its training part) or "test"; "" when it has none.
OFFICIAL_SPLITS = ("train", "test")


@dataclass
class DatasetTables:
    """One dataset's images, boxes and exclusions, as an adapter read them.

    images: one dict per kept image with IMAGE_COLUMNS (path absolute), `official_split`
      ("train", "test" or "" when the dataset has none), one column per task in `tasks` (the
      raw label as text; "" when the task leaves the image out) and any of SHARED_COLUMNS.
    lesions: dicts with LESION_COLUMNS (y0, x0, y1, x1 int, half-open source pixels).
    excluded: dicts with EXCLUDED_COLUMNS.
    notes: counted events that are not exclusions ("patient in training and test CSVs -> test").
    """

    dataset: str
    tasks: tuple[str, ...]  # the default task first
    images: list[dict] = field(default_factory=list)
    lesions: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    has_official_split: bool = False

    def exclude(self, reason: str, **image) -> None:
        """Leave one image out, listed in the excluded CSV and counted by reason."""
        self.excluded.append({c: str(image.get(c, "") or "") for c in IMAGE_COLUMNS}
                             | {"reason": reason})


def read_table(path: Path, required: tuple[str, ...] = (), *, delimiter: str = ",",
               what: str = "") -> list[dict[str, str]]:
    """Rows of a dataset's table as {column: stripped text}; columns keep their published names.

    A missing file or a missing required column raises, naming the file and the column (and
    `what` the file is, e.g. "VinDr-Mammo breast-level annotations").
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{label}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{label}: missing column(s) {missing} (found {header})")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def box_from_xy(xmin, ymin, xmax, ymax) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), half-open integer source pixels, from float corner coordinates:
    the start floored, the end ceiled (so the box covers every pixel the annotation touches)."""
    x0, y0 = math.floor(float(xmin)), math.floor(float(ymin))
    x1, y1 = math.ceil(float(xmax)), math.ceil(float(ymax))
    if x1 == x0:
        x1 += 1
    if y1 == y0:
        y1 += 1
    return max(y0, 0), max(x0, 0), y1, x1


def is_file(path: str) -> bool:
    return os.path.isfile(path)


def most_suspicious(values, order: tuple[str, ...]) -> str:
    """The value ranked first in `order` (most suspicious first) among `values`; "" if none."""
    present = set(values)
    return next((v for v in order if v in present), "")


@dataclass(frozen=True)
class DatasetOptions:
    """Choices an adapter honours where they apply (EMBED's C-view images)."""

    include_cview: bool = False


def breast_label(values, order: tuple[str, ...]) -> str:
    """A breast-level task's value from its images' (or findings') values: the most
    suspicious present in `order`; "" when none is."""
    return most_suspicious(values, order)


def image_problem(image: dict, *, duplicated: bool, views, label_ok: bool,
                  split_ok: bool = True) -> str:
    """The first reason an image is left out, checked in one order for every dataset
    (duplicated id, laterality, view, label, split, file on disk); "" keeps it."""
    laterality = image["laterality"]
    for bad, reason in ((duplicated, "duplicated image id"),
                        (not laterality, "no laterality"),
                        (laterality not in ("L", "R"), "unknown laterality"),
                        (image["view"] not in views, "unknown view"),
                        (not label_ok, "unknown label value"),
                        (not split_ok, "unknown split value")):
        if bad:
            return reason
    return "" if is_file(image["path"]) else "file missing"
