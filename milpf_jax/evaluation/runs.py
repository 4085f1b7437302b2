"""The run folder: what a sweep writes, and how every later step reads it back.

    RUN/results.json     versioned (RESULTS_FORMAT_VERSION), machine-readable: the config, the
                         cohort spec and store it was trained on, every run's metrics, the best
                         run with intervals, timing, environment, metric definitions
    RUN/results.md       the table a person reads, with the command that made it
    RUN/predictions.csv  one row per bag: PREDICTION_COLUMNS, then p_run000, p_run001, ...
    RUN/best/            the best run's head (milpf_jax.learning.checkpoint)
    RUN/history.npz      per epoch of every run: loss, val_auc, active, each [runs, epochs]
    RUN/figures/         PNG and SVG (milpf_jax.evaluation.figures); RUN/report.html, one
                         self-contained page (milpf_jax.evaluation.report)

Format version 2 records the cohort spec (`cohort`) beside the store path, and gives every
predictions CSV `exam_id` and `laterality` columns; explain, compare, subgroups and evaluate read
them instead of parsing commands or bag ids. A version-1 folder still reads, without exams.
Format version 3 adds history.npz (older folders read without it: `read_history` gives None).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from milpf_jax.data import labels
from milpf_jax.evaluation.metrics import Scores
from milpf_jax.files import atomic_open, write_csv, write_json, write_text

RESULTS_FORMAT_VERSION = 3
HISTORY_FILE = "history.npz"
HISTORY_SINCE_VERSION = 3
HISTORY_KEYS = ("loss", "val_auc", "active")
PREDICTION_COLUMNS = ("bag_id", "patient_id", "exam_id", "laterality", "split", "raw_label",
                      "label", "p_best")
# The columns of a CSV of one head's probabilities on bags (an external cohort, new exams).
SCORE_COLUMNS = ("bag_id", "patient_id", "exam_id", "laterality", "raw_label", "label", "p")


def write_predictions(path, packed, probs: np.ndarray, best: int) -> Path:
    """predictions.csv: ids, split, raw and mapped label, p of the best run and of every run.

    packed: the PackedBags scored; probs [R, B]."""
    return write_csv(path, list(PREDICTION_COLUMNS) + [f"p_run{r:03d}" for r in range(len(probs))],
                     ([packed.bag_ids[b], packed.patient_ids[b], packed.exam_ids[b],
                       packed.lateralities[b], labels.SPLIT_NAMES[packed.splits[b]],
                       packed.raw_labels[b], int(packed.labels[b]), f"{probs[best, b]:.6f}"]
                      + [f"{x:.6f}" for x in probs[:, b]] for b in range(packed.n_bags)))


def write_scores(path, packed, p: np.ndarray) -> Path:
    """A CSV of one head's probability of every bag of `packed` (SCORE_COLUMNS)."""
    return write_csv(path, SCORE_COLUMNS,
                     ([packed.bag_ids[b], packed.patient_ids[b], packed.exam_ids[b],
                       packed.lateralities[b], packed.raw_labels[b], int(packed.labels[b]),
                       f"{p[b]:.6f}"] for b in range(packed.n_bags)))


def read_predictions(run_dir) -> dict[str, dict]:
    """bag_id -> its row of a finished run's predictions.csv (split, label, p_best, ...)."""
    path = Path(run_dir) / "predictions.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a finished sweep folder (no predictions.csv)")
    with open(path, newline="") as f:
        return {row["bag_id"]: row for row in csv.DictReader(f)}


def prediction_arrays(rows) -> Scores:
    """The best run's Scores of predictions.csv rows, in their order (exams "" in a version-1
    file, which has no exam_id column)."""
    return Scores(np.array([r["bag_id"] for r in rows], dtype=object),
                  np.array([int(r["label"]) for r in rows], dtype=np.int64),
                  np.array([float(r["p_best"]) for r in rows], dtype=np.float64),
                  np.array([r["patient_id"] for r in rows], dtype=object),
                  np.array([r.get("exam_id") or "" for r in rows], dtype=object))


def read_split_predictions(run_dir, split: str) -> Scores:
    """`prediction_arrays` of one split ("train", "val", "test") of a finished run."""
    return prediction_arrays([r for r in read_predictions(run_dir).values()
                              if r["split"] == split])


def read_results(run_dir) -> dict:
    """A finished run's results.json."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a finished sweep folder (no results.json)")
    return json.loads(path.read_text())


def recorded_cohort(run_dir) -> str:
    """The cohort spec a run was trained on, as its results.json records it (format 2)."""
    spec = read_results(run_dir).get("cohort")
    if not spec:
        raise ValueError(
            f"{run_dir}: its results.json records no cohort spec (a run of a store without one, "
            "or written before results format 2)")
    return spec


def recorded_task(run_dir) -> str | None:
    """The task a run was trained on (results.json's data.task); None for a run that records
    none (made before stores held several tasks: its store's only task)."""
    return (read_results(run_dir).get("data") or {}).get("task")


def check_task(run_dir, task: str | None) -> str | None:
    """The task the run records (`recorded_task`); a run trained on another task than `task`
    (None: any) is refused, naming both."""
    held = recorded_task(run_dir)
    if task is not None and held is not None and held != task:
        raise ValueError(f"{run_dir} was trained on task {held!r}, not {task!r}: its "
                         "predictions and thresholds are for that task")
    return held


def best_dir(run_dir) -> Path:
    """The best head's checkpoint folder of a run folder (or the folder itself, if it is one)."""
    path = Path(run_dir)
    return path / "best" if (path / "best").is_dir() else path


def write_history(path, loss, val_auc, active) -> Path:
    """history.npz: the training loss, validation AUC and `active` (the run had not stopped
    before the epoch) of every run at every epoch run, each [runs, epochs]."""
    arrays = dict(loss=np.asarray(loss, np.float32), val_auc=np.asarray(val_auc, np.float32),
                  active=np.asarray(active, bool))
    shapes = {k: a.shape for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or len(arrays["loss"].shape) != 2:
        raise ValueError(f"write_history: expected three [runs, epochs] arrays, got {shapes}")
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def read_history(run_dir) -> dict[str, np.ndarray] | None:
    """history.npz of a run folder as {loss, val_auc, active}; None when it has none (written
    before results format 3)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return None
    with np.load(path) as f:
        missing = set(HISTORY_KEYS) - set(f.files)
        if missing:
            raise ValueError(f"{path}: no {sorted(missing)} array(s); holds {sorted(f.files)}")
        return {k: f[k] for k in HISTORY_KEYS}


def write_results(out_dir, results: dict, markdown: str) -> None:
    """results.json and results.md (the table a person reads)."""
    out = Path(out_dir)
    write_json(out / "results.json", results)
    write_text(out / "results.md", markdown)
