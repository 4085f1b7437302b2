"""Run folders written as a sweep writes them, with heads of a chosen skill (no training)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

N_PATIENTS = 60  # one exam each, both breasts: 120 bags


def cohort_rows(seed=0):
    """(bag_id, patient_id, split, label) of both breasts of 60 patients, 70/10/20 split."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(N_PATIENTS):
        split = "train" if i < 36 else "val" if i < 42 else "test"
        left = int(rng.integers(0, 2)) if i % 3 else 1
        for lat, label in (("L", left), ("R", 0 if i % 5 else 1)):
            rows.append((f"P{i:03d}/E1/{lat}", f"P{i:03d}", split, label))
    return rows


def write_run(path: Path, rows, skill: float, seed: int, order=None) -> Path:
    """A run folder whose predictions.csv scores `rows` with a head of the given skill."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    order = range(len(rows)) if order is None else order
    with open(path / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bag_id", "patient_id", "exam_id", "laterality", "split", "raw_label",
                    "label", "p_best", "p_run000"])
        for i in order:
            bag, patient, split, label = rows[i]
            _, exam, side = bag.split("/")
            p = 1 / (1 + np.exp(-(skill * (2 * label - 1) + rng.normal())))
            w.writerow([bag, patient, exam, side, split, label, label, f"{p:.6f}", f"{p:.6f}"])
    return path


def train_standin_run(root: Path, spec: str, *, seeds: int = 2, epochs: int = 30):
    """A real sweep folder, `root/run`, trained through experiments/sweep.py on cohort `spec`
    with the stand-in encoder (32-px inputs) and the cache in `root/cache`. Returns the
    MonkeyPatch that holds the cache variable and the stand-in: undo it when done."""
    import pytest

    from helpers.repo import load_script
    from helpers.standin import STANDIN, install_standin

    mp = pytest.MonkeyPatch()
    mp.setenv("MILPF_CACHE", str(root / "cache"))
    install_standin(mp.setitem, mp.setattr, input_size=32)
    sweep = load_script("sweep")
    assert sweep.main(["--cohort", spec, "--encoder", STANDIN, "--workers", "0", "--device",
                       "cpu", "--seeds", str(seeds), "--epochs", str(epochs), "--bootstrap", "0",
                       "--quiet", "--out", str(root / "run")]) == 0  # fmt: skip
    return mp


def write_results(path: Path, n_runs: int = 4, n_boot: int = 200) -> dict:
    """results.json, history.npz and predictions.csv of a run folder as a sweep writes them, for
    `cohort_rows` scored by `n_runs` heads of rising skill (no training: numpy only)."""
    from milpf_jax.evaluation import metrics, runs
    from milpf_jax.evaluation.results import best_with_ci, reliability, summarize

    rows = cohort_rows()
    rng = np.random.default_rng(1)
    y = np.array([r[3] for r in rows])
    patients = np.array([r[1] for r in rows], dtype=object)
    split = np.array([r[2] for r in rows])
    probs = np.array([1 / (1 + np.exp(-((0.5 + r) * (2 * y - 1) + rng.normal(size=len(y)))))
                      for r in range(n_runs)])  # [R, B]
    val, test = split == "val", split == "test"
    per_run = [dict(seed=r, lr=2e-3, weight_decay=1e-4,
                    val=metrics.evaluate(y[val], probs[r, val], y_val=y[val], p_val=probs[r, val]),
                    test=metrics.evaluate(y[test], probs[r, test], y_val=y[val],
                                          p_val=probs[r, val])) for r in range(n_runs)]
    best = int(np.argmax([r["val"]["auc"] for r in per_run]))
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(runs.PREDICTION_COLUMNS) + [f"p_run{r:03d}" for r in range(n_runs)])
        for b, (bag, patient, s, label) in enumerate(rows):
            _, exam, side = bag.split("/")
            w.writerow([bag, patient, exam, side, s, label, label, f"{probs[best, b]:.6f}"]
                       + [f"{probs[r, b]:.6f}" for r in range(n_runs)])
    best_test = best_with_ci(y[test], probs[best, test], patients[test], y[val], probs[best, val],
                             n_boot=n_boot)
    epochs = 12
    active = np.arange(epochs)[None] < (6 + 2 * np.arange(n_runs))[:, None]  # [R, E]
    runs.write_history(path / runs.HISTORY_FILE, rng.random((n_runs, epochs)),
                       rng.random((n_runs, epochs)), active)
    results = dict(
        format_version=runs.RESULTS_FORMAT_VERSION, command="python experiments/sweep.py",
        config=dict(init_seed=0, eval=dict(bootstrap=n_boot, report_images="thumbnails")),
        cohort=None, store=None, store_attrs=dict(encoder="stand-in"),
        data=dict(bags={s: int(np.sum(split == s)) for s in ("train", "val", "test")}),
        runs=[dict(r, best_epoch=3) for r in per_run],
        summary=summarize(per_run, "test"),
        best=dict(run=best, seed=best, lr=2e-3, weight_decay=1e-4, best_epoch=3,
                  val=per_run[best]["val"], test=best_test, test_exam=None,
                  test_reliability=reliability(y[test], probs[best, test])),
        timing={}, environment=dict(package_version="test"))
    runs.write_results(path, results, "| auc |")
    return results
