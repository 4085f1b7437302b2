"""Cohorts: bags of images, one bag per breast per exam, with raw labels and given splits.

A `Cohort` is what every cohort source gives (`milpf_jax.reading.sources.read_cohort`): a
manifest CSV (`manifest`), mini-MIAS (`mias`), the phantom (`milpf_jax.synthetic`), and later the
public datasets. Labels stay raw here: every readable bag is extracted whatever its label, and
the label mapping and the split seed are applied when a store is loaded (`milpf_jax.data`), so
changing them never re-runs the encoder.

    cohort = read_cohort("data/manifest.csv")
    cohort.bags[0].bag_id                            # "P001/E1/L"
"""

from __future__ import annotations

from dataclasses import dataclass

# -1 = none given. "trainval": a dataset's own training part (its test split is kept); validation
# is drawn from it at load time (`milpf_jax.data.labels.make_splits`).
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "trainval": 3}
BIRADS_VALUES = ("0", "1", "2", "3", "4", "4A", "4B", "4C", "5", "6")
BINARY_VALUES = ("0", "1")


@dataclass(frozen=True)
class ImageRef:
    path: str  # absolute path
    view: str  # 'CC', 'MLO', ...
    laterality: str  # 'L' | 'R'
    row: int  # manifest row number (2 = first data row), 0 for built-in cohorts
    ref: str = ""  # manifest `view_ref`: recorded instead of the path wherever one is written


@dataclass(frozen=True)
class BagSpec:
    bag_id: str  # f"{patient_id}/{exam_id}/{laterality}"
    patient_id: str
    exam_id: str
    laterality: str
    raw_label: str  # as given: "1", "4A", "0"/"1" for binary, "N"/"B"/"M" for mias
    split_given: int  # SPLIT_CODES value or -1
    images: tuple[ImageRef, ...]  # views in a stable order (CC before MLO, then by path)
    task_labels: tuple[str, ...] = ()  # one raw label per Cohort.tasks ("" = left out); () when
    # the cohort's one task is its label kind (then raw_label is it)


@dataclass(frozen=True)
class Lesion:
    path: str  # absolute path of the image the lesion is in
    box: tuple[int, int, int, int]  # y0, x0, y1, x1: half-open, source-image pixels
    kind: str  # e.g. mini-MIAS class: CIRC, SPIC, MISC, CALC, ARCH, ASYM
    severity: str  # e.g. "B" benign, "M" malignant


@dataclass(frozen=True)
class Cohort:
    name: str  # e.g. manifest file stem, "mias", "phantom"
    label_kind: str  # "birads" | "binary" | "mias" | "none" (unlabelled: new exams to score)
    bags: tuple[BagSpec, ...]  # sorted by bag_id
    lesions: tuple[Lesion, ...] = ()  # ground truth boxes where known
    spec: str = ""  # the cohort spec that reads it again (sources.read_cohort); "" if none
    tasks: tuple[tuple[str, str], ...] = ()  # (task, label kind) per task column, the default
    # first, when a manifest names its tasks (a public cohort's birads, mass, calcification, or
    # its one `cancer`); () means one task, `label_kind`

    def task_list(self) -> tuple[tuple[str, str], ...]:
        """(task, label kind) of every task; a one-task cohort's task is named by its kind."""
        return self.tasks or ((task_name_of(self.label_kind), self.label_kind),)


def task_name_of(label_kind: str) -> str:
    """The task name of a one-task cohort: its label column ("birads", "label") or kind."""
    return "label" if label_kind == "binary" else label_kind


def normalize_label(kind: str, value: str) -> str | None:
    """The raw label in canonical form ("4a" -> "4A"), or None if `value` is not valid for `kind`.

    kind: "birads" (0, 1, 2, 3, 4, 4A, 4B, 4C, 5, 6; case-insensitive), "binary" (0, 1) or
    "none" (unlabelled: only "" is valid).
    """
    value = value.strip().upper()
    if kind == "none":
        return "" if not value else None
    valid = BIRADS_VALUES if kind == "birads" else BINARY_VALUES
    return value if value in valid else None


def bag_id_of(patient_id: str, exam_id: str, laterality: str) -> str:
    """A bag's id: one breast of one exam."""
    return f"{patient_id}/{exam_id}/{laterality}"

