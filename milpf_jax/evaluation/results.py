"""A run's numbers from its predictions: per-run metrics, the best run with intervals, exam
level, calibration, and summaries across runs, split seeds and folds.

Pure functions of probabilities and labels (numpy only). Selection happens before anything here
sees the test split: `best` is the run with the highest validation AUC, and its test metrics
are read once, each with a 95% patient-bootstrap interval and thresholds fixed on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from milpf_jax.config import check, check_choices, option
from milpf_jax.data import labels
from milpf_jax.evaluation import bootstrap, metrics
from milpf_jax.evaluation.metrics import TABLE_METRICS, Scores, exam_level


@dataclass(frozen=True)
class EvalConfig:
    """How a run's numbers are reported."""

    bootstrap: int = option(1000, "bootstrap resamples for the 95% intervals (0: none)")
    report_images: Literal["none", "thumbnails", "full"] = option(
        "thumbnails", "mammograms in report.html: none, thumbnails (<= 256 px) or full size "
                      "(the images are patients': mind where the report goes)")

    def __post_init__(self):
        check_choices(self)
        check(self, self.bootstrap >= 0, "bootstrap", f"{self.bootstrap}; expected >= 0 "
                                                      "(0: no intervals)")


# What results.json says about the numbers this module adds to metrics.METRIC_DEFINITIONS.
RESULT_DEFINITIONS = dict(
    ci95="95% percentile interval of a bootstrap over patients (all bags of a patient "
         "resampled together), thresholds fixed on validation.",
    summary="Mean and sample standard deviation across all runs of the grid.",
    best="The run with the highest validation AUC; its test metrics are read once.",
    test_reliability="The best run's test calibration: 10 equal-width bins of predicted "
                     "probability, (a, b] (the first also holds 0), with the bag count, mean "
                     "predicted probability and observed fraction of positives of each.",
    test_exam="The best run at exam level: an exam is positive when any of its breasts is and "
              "scores its breasts' highest probability; thresholds fixed on validation exams; "
              "null when the store names no exams or a split's exams lack a class.",
)
SPLITS_DEFINITION = (
    "Each split seed draws its own patient-grouped 70/10/20 split; on each, the run with the "
    "highest validation AUC is tested once. Mean and sample std across splits of those test "
    "metrics.")
FOLDS_DEFINITION = (
    "Patient-grouped, label-stratified k-fold cross-validation: each fold is the test split once "
    "(a validation split of 10% of the patients drawn from the other folds); on each, the run "
    "with the highest validation AUC is tested once. Mean and sample std across folds of those "
    "test metrics; `pooled`: every bag scored once, by its own fold's selected head.")


def packed_scores(packed, p: np.ndarray, mask=None) -> Scores:
    """Scores of packed bags (milpf_jax.data.packed.PackedBags) with probabilities p [B]."""
    keep = slice(None) if mask is None else mask
    return Scores(packed.bag_ids[keep], packed.labels[keep].astype(int), np.asarray(p)[keep],
                  packed.patient_ids[keep], packed.exam_ids[keep])


def _evaluate_split(y, p, y_val, p_val, name):
    if len(np.unique(y)) < 2:
        raise ValueError(f"the {name} split has labels {sorted(set(y.tolist()))} only: its "
                         "metrics need both classes (try another --split-seed)")
    return metrics.evaluate(y, p, y_val=y_val, p_val=p_val)


def evaluate_runs(probs: np.ndarray, packed) -> list[dict]:
    """Validation and test metrics of every run. probs: [R, B] over packed's bags; thresholds
    are fixed on each run's own validation predictions."""
    val = packed.splits == labels.VAL
    test = packed.splits == labels.TEST
    y = packed.labels.astype(int)
    out = []
    for r in range(len(probs)):
        yv, pv = y[val], probs[r, val]
        out.append(dict(val=_evaluate_split(yv, pv, yv, pv, "validation"),
                        test=_evaluate_split(y[test], probs[r, test], yv, pv, "test")))
    return out


def summarize(run_metrics: list[dict], split: str = "test") -> dict:
    """Mean and (sample) standard deviation across runs of every metric of a split."""
    keys = run_metrics[0][split].keys()
    summary = {}
    for k in keys:
        v = np.array([m[split][k] for m in run_metrics], np.float64)
        summary[k] = dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return summary


def best_with_ci(y, p, patient_ids, y_val, p_val, *, n_boot, seed=0) -> dict:
    """One head's metrics, each with a 95% patient-clustered bootstrap interval."""
    point = metrics.evaluate(y, p, y_val=y_val, p_val=p_val)
    ci = bootstrap.bootstrap_ci(y, p, patient_ids, bootstrap.BOOTSTRAP_METRICS, y_val=y_val,
                                p_val=p_val, n_boot=n_boot, seed=seed) if n_boot else {}
    return {k: dict(value=v, ci95=list(ci[k]) if k in ci else None) for k, v in point.items()}


def exams_of(*splits: Scores) -> list[Scores] | None:
    """Each split's bags at exam level (`metrics.exam_level`), or None when the bags name no
    exam or some split's exams lack a class."""
    exams = [exam_level(s) for s in splits]
    if any(e is None or len(np.unique(e.labels)) < 2 for e in exams):
        return None
    return exams


def exam_metrics(test: Scores, val: Scores, *, n_boot: int, seed: int = 0) -> dict | None:
    """Test metrics at exam level with 95% CIs, thresholds fixed on the validation exams; None
    when the bags name no exam or either split's exams lack a class."""
    exams = exams_of(test, val)
    if exams is None:
        return None
    t, v = exams
    return best_with_ci(t.labels, t.p, t.patients, v.labels, v.p, n_boot=n_boot, seed=seed)


def reliability(y, p, n_bins: int = 10) -> dict:
    """metrics.reliability_curve as JSON-ready lists; an empty bin's means are null."""
    curve = metrics.reliability_curve(y, p, n_bins=n_bins)
    return {k: [None if isinstance(x, float) and not np.isfinite(x) else x
                for x in np.asarray(v).tolist()] for k, v in curve.items()}


def exam_counts(packed) -> dict | None:
    """Exams and positive exams per split; None when the bags name no exam."""
    y = packed.labels.astype(int)
    out = {}
    for i, name in enumerate(labels.SPLIT_NAMES):
        m = packed.splits == i
        exams = exam_level(packed_scores(packed, y, m))
        if exams is None and m.any():
            return None
        out[name] = dict(exams=0 if exams is None else len(exams.ids),
                         positives=0 if exams is None else int(exams.labels.sum()))
    return out


def summarize_splits(results_by_seed: dict, *, key: str = "split_seed",
                     definition: str = SPLITS_DEFINITION) -> dict:
    """Repeated patient-grouped splits (or the folds of a cross-validation): per split the
    best-validation run's test metrics (and exam-level AUC where there is one), then their mean
    and sample std across splits.

    results_by_seed: split seed (or fold) -> the results dict of a sweep on that split.
    key: the name of that first column ("split_seed" or "fold").
    """
    per_split = []
    for seed, res in sorted(results_by_seed.items()):
        b = res["best"]
        row = {key: int(seed), "run": b["run"], "seed": b["seed"], "lr": b["lr"],
               "weight_decay": b["weight_decay"], "val_auc": b["val"]["auc"],
               "test": {k: b["test"][k]["value"] for k in TABLE_METRICS},
               "test_bags": res["data"]["bags"]["test"]}
        if b.get("test_exam"):
            row["test_exam_auc"] = b["test_exam"]["auc"]["value"]
        per_split.append(row)

    def spread(values) -> dict:
        v = np.asarray(values, np.float64)
        return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    min=float(v.min()), max=float(v.max()))

    summary = {k: spread([r["test"][k] for r in per_split]) for k in TABLE_METRICS}
    if all("test_exam_auc" in r for r in per_split):
        summary["exam_auc"] = spread([r["test_exam_auc"] for r in per_split])
    return dict(key=key, splits=per_split, summary=summary, definition=definition)


def pooled_out_of_fold(fold_test_scores: list[Scores], *, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """AUC over every bag of a cross-validation, each scored once by its own fold's selected
    head (the test split of each fold), with a patient-bootstrap 95% CI; and the same at exam
    level where the bags name exams."""
    pooled = Scores(*(np.concatenate([np.asarray(s[i]) for s in fold_test_scores])
                      for i in range(len(Scores._fields))))
    if len(set(pooled.ids)) != len(pooled.ids):
        raise ValueError("pooled_out_of_fold: a bag is in the test split of two folds")
    auc = {"auc": bootstrap.BOOTSTRAP_METRICS["auc"]}

    def entry(s: Scores) -> dict:
        # AUC needs no threshold, so no validation split: the y_val/p_val given are unused.
        ci = bootstrap.bootstrap_ci(s.labels, s.p, s.patients, auc, y_val=s.labels, p_val=s.p,
                                    n_boot=n_boot, seed=seed)["auc"] if n_boot else None
        return dict(value=metrics.roc_auc(s.labels, s.p), ci95=list(ci) if ci else None,
                    n=int(len(s.labels)))

    out = {"auc": entry(pooled)}
    exams = exams_of(pooled)
    if exams is not None:
        out["exam_auc"] = entry(exams[0])
    return out
