"""The public cohorts of the paper, one command each: VinDr-Mammo, RSNA, EMBED, CBIS-DDSM, INbreast.

    python experiments/manifest.py --dataset vindr --root /data/vindr-mammo --out vindr.csv

Each adapter (`vindr`, `rsna`, `embed`, `cbis`, `inbreast`) reads its dataset's tables exactly as
they are distributed (`common.DatasetTables`); `build_manifest` turns them into the project's
manifest: one row per image (path, patient_id, exam_id, laterality, view, split, one raw label
column per task, the dataset's useful columns under shared names, `dataset`), with
`<stem>.lesions.csv` (one row per box and category) and `<stem>.excluded.csv` (every image left
out, with its reason) beside it, and reads it back through `read_manifest`, so it is checked like
any other. Building reads tables and stats paths, never pixels.

Splits (`split=`): "seeded" leaves the split column empty, so the paper's 70/10/20
patient-grouped split is drawn at load time from `--split-seed`; "official" keeps the dataset's
own test split and writes its training part as `trainval`, from which validation (1/8 of those
patients, stratified) is drawn at load time. A task is chosen when a store is loaded
(`--task`), never here: the manifest holds every task's raw labels.

Each dataset is also a cohort spec, `vindr:DIR` (`milpf_jax.reading.sources`): it builds the
seeded manifest into the cache and reads it, so it names the same cohort, hence the same store,
as `--cohort manifest.csv` built from the same folder.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from milpf_jax.files import write_dict_csv
from milpf_jax.paths import cohorts_dir
from milpf_jax.reading.cohort import Cohort
from milpf_jax.reading.manifest import LESION_COLUMNS, VIEW_RANK, lesions_path, read_manifest
from milpf_jax.reading.pseudonym import pseudonym
from milpf_jax.reading.public.common import (
    EXCLUDED_COLUMNS,
    IMAGE_COLUMNS,
    SHARED_COLUMNS,
    DatasetOptions,
    DatasetTables,
)

DATASETS = ("vindr", "rsna", "embed", "cbis", "inbreast")
SPLIT_POLICIES = ("seeded", "official")


def adapter(name: str):
    """The adapter module of a dataset (NAME, TASKS, HAS_OFFICIAL_SPLIT, DOC, read_tables)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return importlib.import_module(f"milpf_jax.reading.public.{name}")


def excluded_path(csv_path: str | os.PathLike) -> Path:
    """`<stem>.excluded.csv` beside a manifest: every image the adapter left out, and why."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.excluded.csv")


@dataclass
class ManifestSummary:
    """What a built manifest holds: counted per split and per label of every task."""

    dataset: str
    out: Path
    images: int
    bags: int
    patients: int
    per_split: dict  # split -> (images, bags, patients); "" = drawn at load time
    per_task: dict  # task -> {raw label: bags} ("" = the task leaves the bag out)
    excluded: Counter = field(default_factory=Counter)  # reason -> images
    notes: Counter = field(default_factory=Counter)
    lesions: int = 0
    seconds: dict = field(default_factory=dict)  # pass -> wall seconds (tables, roi masks)

    def lines(self) -> list[str]:
        out = [f"wrote {self.out}: {self.images} images, {self.bags} bags (breasts), "
               f"{self.patients} patients ({self.dataset})"]
        for split, (n_img, n_bag, n_pat) in self.per_split.items():
            name = split or "drawn at load (--split-seed)"
            out.append(f"  split {name}: {n_img} images, {n_bag} bags, {n_pat} patients")
        for task, counts in self.per_task.items():
            text = ", ".join(f"{k or 'left out'}: {v}" for k, v in counts.items())
            out.append(f"  task {task}: bags per raw label {{{text}}}")
        if self.lesions:
            out.append(f"  {self.lesions} lesion boxes in {lesions_path(self.out).name}")
        total = sum(self.excluded.values())
        reasons = ", ".join(f"{r}: {n}" for r, n in self.excluded.most_common())
        out.append(f"  excluded {total} images" + (f" ({reasons})" if total else "")
                   + f", listed in {excluded_path(self.out).name}")
        for note, n in self.notes.most_common():
            out.append(f"  note: {note}: {n}")
        if self.seconds:
            out.append("  read in " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return out


def _dedupe(tables: DatasetTables) -> None:
    """An image listed twice (the same resolved path) is left out, every copy of it."""
    seen = Counter(im["path"] for im in tables.images)
    twice = {p for p, n in seen.items() if n > 1}
    if twice:
        for im in [im for im in tables.images if im["path"] in twice]:
            tables.exclude("image listed more than once", **im)
        tables.images = [im for im in tables.images if im["path"] not in twice]


def _agree_per_breast(tables: DatasetTables) -> None:
    """The images of one breast must agree on every task; a breast that does not is left out
    whole (an adapter resolves what its dataset's rules decide, so this is a backstop)."""
    by_bag: dict[tuple, list[dict]] = {}
    for im in tables.images:
        by_bag.setdefault((im["patient_id"], im["exam_id"], im["laterality"]), []).append(im)
    bad = set()
    for key, members in by_bag.items():
        for task in tables.tasks:
            if len({m[task] for m in members}) > 1:
                bad.add(key)
                for m in members:
                    tables.exclude(f"images of one breast disagree on {task}", **m)
                break
    if bad:
        tables.images = [im for im in tables.images
                         if (im["patient_id"], im["exam_id"], im["laterality"]) not in bad]


def _apply_split(tables: DatasetTables, policy: str) -> None:
    """The manifest's split column: empty ("seeded"), or trainval/test ("official")."""
    if policy not in SPLIT_POLICIES:
        raise ValueError(f"unknown split policy {policy!r}; choose one of "
                         f"{', '.join(SPLIT_POLICIES)}")
    if policy == "official" and not tables.has_official_split:
        raise ValueError(f"{tables.dataset} has no official test split with labels: use "
                         "--split seeded (the paper's 70/10/20 split, drawn at load time)")
    tested = {im["patient_id"] for im in tables.images if im["official_split"] == "test"}
    moved = {im["patient_id"] for im in tables.images
             if im["official_split"] == "train" and im["patient_id"] in tested}
    if moved and policy == "official":
        tables.notes["patients in both official splits, kept in test"] += len(moved)
    for im in tables.images:
        if policy == "seeded":
            im["split"] = ""
        else:
            im["split"] = "test" if im["patient_id"] in tested else "trainval"


def _pseudonymise(tables: DatasetTables, key: bytes, out_dir: Path) -> None:
    """Keyed hashes for patient and exam ids (images, exclusions) and a view_ref per image."""
    for rows in (tables.images, tables.excluded):
        for im in rows:
            if im.get("patient_id"):
                im["patient_id"] = pseudonym(key, "patient", im["patient_id"])
            if im.get("exam_id"):
                im["exam_id"] = pseudonym(key, "exam", im["exam_id"])
    for im in tables.images:
        rel = Path(os.path.relpath(im["path"], out_dir)).as_posix()
        im["view_ref"] = pseudonym(key, "image", rel)


def _relative(path: str, out_dir: Path) -> str:
    """A path as the manifest writes it: relative to its folder when under it."""
    return os.path.relpath(path, out_dir) if Path(path).is_relative_to(out_dir) else path


def build_manifest(dataset: str, root, out, *, split: str = "seeded", key: bytes | None = None,
                   options: DatasetOptions = DatasetOptions()) -> tuple[Cohort, ManifestSummary]:
    """Write a dataset's manifest, lesions and exclusions beside `out`; return it read back
    (`read_manifest`) and its summary. See the module docstring."""
    module = adapter(dataset)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: not a folder (expected the {module.DOC})")
    t0 = time.perf_counter()
    tables = module.read_tables(root, options)
    timings = {"tables": time.perf_counter() - t0}
    if hasattr(module, "read_roi_boxes"):  # CBIS: boxes from the ROI masks, a pass over pixels
        t0 = time.perf_counter()
        tables.lesions.extend(module.read_roi_boxes(tables, root))
        timings["roi masks"] = time.perf_counter() - t0
    _dedupe(tables)
    _agree_per_breast(tables)
    _apply_split(tables, split)
    if not tables.images:
        reasons = Counter(r["reason"] for r in tables.excluded)
        raise ValueError(f"{dataset} at {root}: no image left to write (excluded: "
                         f"{dict(reasons) or 'none listed'})")
    out = Path(out)
    out_dir = out.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if key is not None:
        _pseudonymise(tables, key, out_dir)
    extras = [c for c in SHARED_COLUMNS if any(im.get(c) for im in tables.images)]
    columns = [*IMAGE_COLUMNS, "split", *tables.tasks, *extras, "dataset"]
    if key is not None:
        columns.append("view_ref")
    tables.images.sort(key=lambda im: (im["patient_id"], im["exam_id"], im["laterality"],
                                       VIEW_RANK.get(im["view"], len(VIEW_RANK)), im["view"],
                                       im["path"]))
    rows = [{**{c: im.get(c, "") for c in columns}, "path": _relative(im["path"], out_dir),
             "dataset": tables.dataset} for im in tables.images]
    kept = {im["path"] for im in tables.images}
    lesions = [{**{c: les[c] for c in LESION_COLUMNS}, "path": _relative(les["path"], out_dir)}
               for les in tables.lesions if les["path"] in kept]
    excluded = [{**{c: r.get(c, "") for c in EXCLUDED_COLUMNS},
                 "path": _relative(r["path"], out_dir) if r.get("path") else ""}
                for r in tables.excluded]
    # The lesions file first: read_manifest picks it up when it reads the manifest back.
    write_dict_csv(lesions_path(out), LESION_COLUMNS, lesions)
    write_dict_csv(excluded_path(out), EXCLUDED_COLUMNS, excluded)
    write_dict_csv(out, columns, rows)
    cohort = read_manifest(out)
    summary = summarize(cohort, tables, out, rows, len(lesions))
    summary.seconds = timings
    return cohort, summary


def summarize(cohort: Cohort, tables: DatasetTables, out: Path, rows: list[dict],
              n_lesions: int) -> ManifestSummary:
    per_split = {}
    for split in [s for s in ("trainval", "test", "") if any(r["split"] == s for r in rows)]:
        members = [r for r in rows if r["split"] == split]
        bags = {(r["patient_id"], r["exam_id"], r["laterality"]) for r in members}
        per_split[split] = (len(members), len(bags), len({r["patient_id"] for r in members}))
    per_task = {}
    for t, (task, _) in enumerate(cohort.task_list()):
        labels = [(b.task_labels[t] if cohort.tasks else b.raw_label) for b in cohort.bags]
        per_task[task] = dict(sorted(Counter(labels).items()))
    return ManifestSummary(
        dataset=tables.dataset, out=out, images=len(rows), bags=len(cohort.bags),
        patients=len({b.patient_id for b in cohort.bags}), per_split=per_split,
        per_task=per_task, excluded=Counter(r["reason"] for r in tables.excluded),
        notes=tables.notes, lesions=n_lesions)


def _build_cached(dataset: str, root, cache_dir) -> tuple[Path, Cohort]:
    """The seeded manifest of `dataset` at `root`, built into the cache (rebuilt each time: it
    reads tables only), and the cohort read back from it."""
    root = Path(root).expanduser().resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    out = cohorts_dir(cache_dir) / f"{dataset}-{tag}" / "manifest.csv"
    return out, build_manifest(dataset, root, out)[0]


def cached_manifest(dataset: str, root, *, cache_dir=None) -> Path:
    """The manifest behind the cohort spec `NAME:DIR`, built into the cache."""
    return _build_cached(dataset, root, cache_dir)[0]


def read_dataset(dataset: str, root, *, cache_dir=None) -> Cohort:
    """The cohort of spec `NAME:DIR`: the seeded manifest, built into the cache, read back."""
    return _build_cached(dataset, root, cache_dir)[1]
