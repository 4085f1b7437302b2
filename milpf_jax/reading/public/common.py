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


def _checked_header(path: Path, required, delimiter: str, what: str) -> list[str]:
    """The table's header (stripped); a missing file or required column raises, naming the file
    (and `what` it is, e.g. "VinDr-Mammo breast-level annotations") and the column."""
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{label}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f, delimiter=delimiter), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{label}: missing column(s) {missing} (found {header})")
    return header


def read_columns(path: Path, required: tuple[str, ...] = (), optional: tuple[str, ...] = (), *,
                 delimiter: str = ",", what: str = ""):
    """The rows of a table as {column: stripped text}, only `required` and `optional` columns
    (an absent optional one reads ""), streamed: a table of ~480,000 rows of ~100 columns
    (EMBED's metadata) is never held whole. Checks as `read_table`, before the first row."""
    path = Path(path)
    header = _checked_header(path, required, delimiter, what)
    present = [c for c in (*required, *optional) if c in header]
    absent = {c: "" for c in optional if c not in header}
    return _stream(path, present, [header.index(c) for c in present], absent, delimiter)


def read_table(path: Path, required: tuple[str, ...] = (), *, delimiter: str = ",",
               what: str = "") -> list[dict[str, str]]:
    """Every row of a dataset's table as {column: stripped text}, every column under its
    published name. A missing file or a missing required column raises, naming the file and the
    column."""
    path = Path(path)
    header = _checked_header(path, required, delimiter, what)
    return list(_stream(path, header, list(range(len(header))), {}, delimiter))


def _stream(path: Path, columns: list[str], index: list[int], absent: dict, delimiter: str):
    width = max(index, default=-1) + 1
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        next(reader, None)  # the header
        for values in reader:
            if len(values) < width:
                if not values:
                    continue  # a blank line
                values = values + [""] * (width - len(values))
            yield {c: values[i].strip() for c, i in zip(columns, index)} | absent


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
    """The value ranked first in `order` (most suspicious first) among `values`; "" if none.
    A breast-level task's value from its images' (or findings') values."""
    present = set(values)
    return next((v for v in order if v in present), "")


@dataclass(frozen=True)
class DatasetOptions:
    """Choices an adapter honours where they apply (EMBED's C-view images)."""

    include_cview: bool = False


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
