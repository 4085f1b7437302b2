"""The manifest CSV: one row per image, read into a Cohort with every problem named.

Required columns: `path` (absolute, or relative to the CSV's folder), `patient_id`, `exam_id`,
`laterality` (L or R), `view` (DICOM View Position: CC, MLO, ML, LM, XCCL, ...) and at least one
task column, the raw label of a task (`TASK_KINDS`): `birads` (0-6, 4A-4C), `label` (0/1), or a
public cohort's `mass`, `calcification`, `cancer`, `pathology`, `malignant` (0/1). The first task
column is the default task; `--task` picks another when a store is loaded. With one task column
every cell is filled; with several an empty cell means that task leaves the image out.
`split` (train, val, test, trainval or empty) is optional; so is `view_ref`, a pseudonymous name
per image that stores, failure lists and reports record instead of the path
(`milpf_jax.reading.pseudonym`), and `dataset` (a public cohort's name, which then names the
cohort: `experiments/manifest.py --dataset` writes it); other columns are kept in the CSV for
`bag_values` (density, vendor, ...) and ignored otherwise. Lesion boxes, when known, lie beside
it in `<stem>.lesions.csv` (path, y0, x0, y1, x1 half-open source pixels, kind) and become
`Cohort.lesions`.

    cohort = read_manifest("data/manifest.csv")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.reading.cohort import (
    BINARY_VALUES,
    BIRADS_VALUES,
    SPLIT_CODES,
    BagSpec,
    Cohort,
    ImageRef,
    Lesion,
    bag_id_of,
    normalize_label,
)
from milpf_jax.reading.tables import add_problem, raise_problems, read_csv

# Task column -> label kind (what its values may be, and its default mapping at load time).
TASK_KINDS = {
    "birads": "birads",
    "label": "binary",
    "mass": "binary",
    "calcification": "binary",
    "cancer": "binary",
    "pathology": "binary",
    "malignant": "binary",
}
LABEL_COLUMNS = ("birads", "label")  # a hand-written manifest's one task column
REQUIRED_COLUMNS = ("path", "patient_id", "exam_id", "laterality", "view")
LESION_COLUMNS = ("path", "y0", "x0", "y1", "x1", "kind")
VIEW_RANK = {"CC": 0, "MLO": 1}  # CC before MLO, other views after, then by path


def label_kind_of(column: str) -> str:
    return TASK_KINDS.get(column, column)


def task_columns(path: Path, header: list[str]) -> list[str]:
    """The manifest's task columns in header order (the first is the default task)."""
    found = [c for c in header if c in TASK_KINDS]
    if not found:
        raise ValueError(
            f"{path}: no label column; expected one of {list(TASK_KINDS)} among columns {header}"
        )
    return found


def label_column(path: Path, header: list[str]) -> str:
    """A label sheet's one label column (`birads` or `label`)."""
    found = [c for c in LABEL_COLUMNS if c in header]
    if len(found) != 1:
        raise ValueError(
            f"{path}: expected exactly one label column of {list(LABEL_COLUMNS)}, found "
            f"{found or 'none'} among columns {header}"
        )
    return found[0]


def lesions_path(csv_path: str | os.PathLike) -> Path:
    """`<stem>.lesions.csv` beside a manifest: its lesion boxes, when known."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.lesions.csv")


def read_lesions(csv_path: str | os.PathLike) -> tuple[Lesion, ...]:
    """The lesion boxes of `<stem>.lesions.csv` beside a manifest (none when it is absent);
    paths resolve against the CSV's folder, like the manifest's; problems named by row."""
    path = lesions_path(csv_path)
    if not path.is_file():
        return ()
    header, cells = read_csv(path)
    missing = [c for c in LESION_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a lesions file has "
                         f"{list(LESION_COLUMNS)} (found {header})")
    base = path.resolve().parent
    problems: dict[str, list[str]] = {}
    out = []
    for row, c in cells:
        try:
            y0, x0, y1, x1 = (int(c[k]) for k in ("y0", "x0", "y1", "x1"))
        except ValueError:
            add_problem(problems, "y0, x0, y1, x1 are not integers", f"row {row}")
            continue
        if not (0 <= y0 < y1 and 0 <= x0 < x1):
            add_problem(problems, "box is empty or negative (need 0 <= y0 < y1, 0 <= x0 < x1)",
                        f"row {row}")
            continue
        out.append(Lesion(path=os.path.abspath(base / c["path"]), box=(y0, x0, y1, x1),
                          kind=c["kind"], severity=c.get("severity", "")))
    raise_problems(path, problems)
    return tuple(out)


def view_order(image: ImageRef) -> tuple:
    return (VIEW_RANK.get(image.view, len(VIEW_RANK)), image.view, image.path)


@dataclass(frozen=True)
class _Row:
    """One validated manifest row."""

    row: int
    path: str
    patient_id: str
    exam_id: str
    laterality: str
    view: str
    labels: tuple[str, ...]  # one per task column
    split: int
    view_ref: str = ""


def _parse_row(row: int, cells: dict[str, str], tasks: list[str], base: Path, problems) -> _Row:
    """Validate one row; every problem found goes into `problems` (message -> ["row N (...)"])."""

    def bad(what: str, value: str | None = None) -> None:
        add_problem(problems, what, f"row {row}" + ("" if value is None else f" ({value!r})"))

    for col in (*REQUIRED_COLUMNS, *(tasks if len(tasks) == 1 else ())):
        if not cells[col]:
            bad(f"empty {col!r}")
    if len(tasks) > 1 and not any(cells[t] for t in tasks):
        bad(f"every task column ({', '.join(tasks)}) is empty")
    if "view_ref" in cells and not cells["view_ref"]:
        bad("empty 'view_ref' (a pseudonymised manifest names every image)")
    for col in ("patient_id", "exam_id"):
        if "/" in cells[col]:
            bad(f"{col!r} contains '/', which would make bag ids ambiguous", cells[col])
    laterality = cells["laterality"].upper()
    if cells["laterality"] and laterality not in ("L", "R"):
        bad("laterality is not L or R", cells["laterality"])
    labels = []
    for task in tasks:
        label = normalize_label(label_kind_of(task), cells[task])
        if cells[task] and label is None:
            valid = BIRADS_VALUES if label_kind_of(task) == "birads" else BINARY_VALUES
            bad(f"{task!r} is not one of {', '.join(valid)}", cells[task])
        labels.append(label or "")
    split_text = cells.get("split", "").lower()
    if split_text and split_text not in SPLIT_CODES:
        bad(f"'split' is not one of {', '.join(SPLIT_CODES)} or empty", cells["split"])
    path = os.path.abspath(base / cells["path"]) if cells["path"] else ""
    if path and not os.path.isfile(path):
        bad("file does not exist", path)
    return _Row(
        row=row,
        path=path,
        patient_id=cells["patient_id"],
        exam_id=cells["exam_id"],
        laterality=laterality,
        view=cells["view"].upper(),
        labels=tuple(labels),
        split=SPLIT_CODES.get(split_text, -1),
        view_ref=cells.get("view_ref", ""),
    )


def _group_rows(rows: list[_Row], tasks: list[str]
                ) -> tuple[dict[tuple, list[_Row]], dict[str, list[str]]]:
    """Bags keyed by (patient, exam, laterality), and the cross-row problems found on the way."""
    problems: dict[str, list[str]] = {}
    by_path: dict[str, list[_Row]] = {}
    bags: dict[tuple, list[_Row]] = {}
    by_patient: dict[str, list[_Row]] = {}
    for r in rows:
        by_path.setdefault(r.path, []).append(r)
        bags.setdefault((r.patient_id, r.exam_id, r.laterality), []).append(r)
        by_patient.setdefault(r.patient_id, []).append(r)
    for path, same in by_path.items():
        if len(same) > 1:
            rows_text = " and ".join(f"row {r.row}" for r in same)
            add_problem(problems, "image listed more than once", f"{rows_text} ({path})")
    by_ref: dict[str, list[_Row]] = {}
    for r in rows:
        if r.view_ref:
            by_ref.setdefault(r.view_ref, []).append(r)
    for ref, same in by_ref.items():
        if len(same) > 1:
            rows_text = " and ".join(f"row {r.row}" for r in same)
            add_problem(problems, "same 'view_ref' on several images", f"{rows_text} ({ref})")
    for (patient, exam, lat), members in bags.items():
        for t, task in enumerate(tasks):
            if len({r.labels[t] for r in members}) > 1:
                rows_text = ", ".join(f"row {r.row} ({r.labels[t] or 'empty'})" for r in members)
                what = ("rows of one bag carry different labels" if len(tasks) == 1 else
                        f"rows of one bag carry different {task!r} labels")
                add_problem(problems, what, f"bag {patient}/{exam}/{lat}: {rows_text}")
    code_name = {v: k for k, v in SPLIT_CODES.items()}
    for patient, members in by_patient.items():
        if len({r.split for r in members if r.split >= 0}) > 1:
            rows_text = ", ".join(
                f"row {r.row} ({code_name[r.split]})" for r in members if r.split >= 0
            )
            add_problem(
                problems, "patient in more than one given split", f"patient {patient}: {rows_text}"
            )
    return bags, problems


def bag_values(csv_path: str | os.PathLike, column: str) -> dict[str, str]:
    """bag_id -> the value of a manifest column that the bag's images share ("mixed" when they
    differ, "" when empty). Reads the CSV only: the images need not be at hand."""
    path = Path(csv_path)
    header, cells = read_csv(path)
    column = column.strip().lower()
    if column not in header or not set(REQUIRED_COLUMNS) <= set(header):
        raise ValueError(f"{path}: needs the columns {list(REQUIRED_COLUMNS)} and {column!r} "
                         f"(found {header})")
    values: dict[str, set[str]] = {}
    for _, c in cells:
        bag = bag_id_of(c["patient_id"], c["exam_id"], c["laterality"].upper())
        values.setdefault(bag, set()).add(c.get(column, ""))
    return {bag: v.pop() if len(v) == 1 else "mixed" for bag, v in values.items()}


def read_manifest(csv_path: str | os.PathLike) -> Cohort:
    """Read a manifest CSV into a Cohort; every problem found is reported in one ValueError.

    Rows with the same (patient_id, exam_id, laterality) form one bag (e.g. the CC and MLO of one
    breast); they must agree on every task's label. Errors list the offending rows by their line
    in the CSV (2 = first data row):
    empty required cells, bad laterality/label/split values, missing files, an image listed
    twice, a bag whose rows disagree on the label, a patient put in two splits.
    A patient with a split given on some rows and empty on others gets the given split on all
    its bags, so a patient is never in two splits.
    """
    path = Path(csv_path)
    header, cells = read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)} "
            f"and one of {list(LABEL_COLUMNS)} (found {header})"
        )
    tasks = task_columns(path, header)
    if not cells:
        raise ValueError(f"{path}: no data rows; expected one row per image")
    problems: dict[str, list[str]] = {}
    base = path.resolve().parent
    rows = [_parse_row(n, c, tasks, base, problems) for n, c in cells]
    datasets = {c.get("dataset", "") for _, c in cells} if "dataset" in header else set()
    if len(datasets) > 1 or "" in datasets:
        add_problem(problems, "'dataset' differs between rows or is empty",
                    ", ".join(sorted(repr(d) for d in datasets)))
    raise_problems(path, problems)
    groups, problems = _group_rows(rows, tasks)
    raise_problems(path, problems)

    # A hand-written manifest's one `birads` or `label` column is the cohort's label kind; any
    # other task column (a public cohort's `cancer`, or several) is recorded by name.
    named = len(tasks) > 1 or tasks[0] not in LABEL_COLUMNS
    patient_split = {r.patient_id: r.split for r in rows if r.split >= 0}
    bags = []
    for (patient, exam, lat), members in groups.items():
        images = [
            ImageRef(path=r.path, view=r.view, laterality=lat, row=r.row, ref=r.view_ref)
            for r in members
        ]
        bags.append(
            BagSpec(
                bag_id=bag_id_of(patient, exam, lat),
                patient_id=patient,
                exam_id=exam,
                laterality=lat,
                raw_label=members[0].labels[0],
                split_given=patient_split.get(patient, -1),
                images=tuple(sorted(images, key=view_order)),
                task_labels=members[0].labels if named else (),
            )
        )
    bags.sort(key=lambda b: b.bag_id)
    return Cohort(
        name=datasets.pop() if datasets else path.stem,
        label_kind=label_kind_of(tasks[0]),
        bags=tuple(bags),
        lesions=read_lesions(path),
        spec=str(path.resolve()),
        tasks=tuple((t, label_kind_of(t)) for t in tasks) if named else (),
    )

