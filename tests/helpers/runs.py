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
