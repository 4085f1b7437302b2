"""Classification metrics for MIL-PF, reported honestly (DESIGN.md, "Metrics, honestly").

Every metric takes predictions, not models: `y` [N] labels in {0, 1} and `p` [N] scores
(probabilities for the Brier score and the reliability curve; any monotone score elsewhere).
A bag is called positive when `p >= threshold`, the convention of `sklearn.metrics.roc_curve`,
so every threshold below is a score that occurs in the data.

Thresholds are fixed on validation and then applied to the split being reported: `bacc` uses
the validation threshold that maximises balanced accuracy, `spec_at_sens90_valthr` the highest
validation threshold that still reaches sensitivity 0.9 (what a clinic would get). The original
code picked the bACC threshold on the split it reported; that optimistic number is kept only as
`bacc_oracle` and must never be used for selection. The paper's Spec@Sens=0.9 (section 3,
"Metrics") is read off the reported split's own ROC: `spec_at_sens90_roc`.

Breasts are read out as exams by `exam_level` (an exam is positive when any breast is, and
scores its highest breast probability). Intervals come from `milpf_jax.evaluation.bootstrap`;
the exact AUC inside the compiled training loop is `milpf_jax.learning.auc.auc_jax`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# The metrics a run reports in its tables (all of `evaluate` go to results.json), and those
# compared at exam level.
TABLE_METRICS = ("auc", "bacc", "spec_at_sens90_roc", "spec_at_sens90_valthr",
                 "sens_at_spec90_roc", "brier")
EXAM_METRICS = ("auc", "bacc", "spec_at_sens90_valthr")

# Float slack for comparing rates such as 9/10 against a target of 0.9.
RATE_EPS = 1e-9

METRIC_DEFINITIONS: dict[str, str] = {
    "auc": "Area under the ROC curve of this split (Mann-Whitney; tied scores count one half).",
    "bacc": (
        "Balanced accuracy (mean of sensitivity and specificity) on this split at the threshold"
        " that maximises balanced accuracy on the validation split."
    ),
    "bacc_oracle": (
        "Balanced accuracy at the threshold that maximises it on this split itself, as the"
        " original code reported it; optimistic, never used for model selection."
    ),
    "spec_at_sens90_roc": (
        "Highest specificity among the points of this split's ROC curve whose sensitivity is at"
        " least 0.9 (the paper's Spec@Sens=0.9)."
    ),
    "spec_at_sens90_valthr": (
        "Specificity on this split at the highest threshold that reaches sensitivity 0.9 on the"
        " validation split (what a clinic fixing the threshold in advance would get)."
    ),
    "sens_at_sens90_valthr": (
        "Sensitivity on this split at that same validation-fixed threshold (it may fall below"
        " 0.9 on new data)."
    ),
    "sens_at_spec90_roc": (
        "Highest sensitivity among the points of this split's ROC curve whose specificity is at"
        " least 0.9."
    ),
    "brier": "Brier score: mean squared difference between predicted probability and label.",
    "threshold": "Decision threshold chosen on validation by maximal balanced accuracy.",
    "threshold_sens90": "Highest threshold with sensitivity >= 0.9 on the validation split.",
    "n": "Number of bags in this split.",
    "n_pos": "Number of positive bags in this split.",
}


def as_binary_pair(y, p, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates labels [N] in {0, 1} and finite scores [N]; returns (int8 [N], float64 [N])."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape:
        raise ValueError(
            f"{where}: labels and scores must be 1-D of equal length, got shapes {y.shape} and"
            f" {p.shape}"
        )
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(
            f"{where}: labels must be 0 or 1, found {y[bad][:5].tolist()} at rows"
            f" {np.flatnonzero(bad)[:5].tolist()}"
        )
    if not np.isfinite(p).all():
        rows = np.flatnonzero(~np.isfinite(p))
        raise ValueError(
            f"{where}: scores must be finite, found non-finite at rows {rows[:5].tolist()}"
        )
    return y.astype(np.int8), p


def _require_classes(y: np.ndarray, where: str, pos: bool = True, neg: bool = True) -> None:
    n_pos = int(y.sum())
    if pos and n_pos == 0:
        raise ValueError(f"{where}: needs at least one positive label, found 0 of {y.size}")
    if neg and n_pos == y.size:
        raise ValueError(f"{where}: needs at least one negative label, found 0 of {y.size}")


def _check_rate(value: float, name: str, where: str) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{where}: {name} must be in (0, 1], got {value}")


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of every distinct threshold, highest first: (fpr, tpr, thr), each [U + 1]."""
    from sklearn.metrics import roc_curve

    # drop_intermediate=False keeps every operating point, so maxima over points are exact.
    return roc_curve(y, p, drop_intermediate=False)


def roc_auc(y, p) -> float:
    """ROC AUC by scikit-learn. y [N] in {0, 1}, p [N]; raises when a class is absent."""
    from sklearn.metrics import roc_auc_score

    y, p = as_binary_pair(y, p, "roc_auc")
    _require_classes(y, "roc_auc")
    return float(roc_auc_score(y, p))


def choose_threshold_bacc(y_val, p_val) -> float:
    """Threshold maximising balanced accuracy on validation (positive iff p >= threshold).

    Only scores that occur in `p_val` are candidates: every other threshold splits the bags the
    same way as one of them (or calls all negative, which scores 0.5 like calling all positive).
    Among equal maxima the highest threshold wins.

    Returns:
      float, one of the values of `p_val`.
    """
    y_val, p_val = as_binary_pair(y_val, p_val, "choose_threshold_bacc")
    _require_classes(y_val, "choose_threshold_bacc (validation labels)")
    fpr, tpr, thr = _roc(y_val, p_val)
    # Index 0 is sklearn's +inf "call nothing positive" point; it is never better than 0.5.
    bacc = 0.5 * (tpr[1:] + 1.0 - fpr[1:])
    return float(thr[1:][np.argmax(bacc)])


def sens_at_threshold(y, p, thr) -> float:
    """Sensitivity (true positive rate) at `p >= thr`. y [N], p [N]; needs a positive."""
    y, p = as_binary_pair(y, p, "sens_at_threshold")
    _require_classes(y, "sens_at_threshold", neg=False)
    return float((p[y == 1] >= thr).mean())


def spec_at_threshold(y, p, thr) -> float:
    """Specificity (true negative rate) at `p >= thr`. y [N], p [N]; needs a negative."""
    y, p = as_binary_pair(y, p, "spec_at_threshold")
    _require_classes(y, "spec_at_threshold", pos=False)
    return float((p[y == 0] < thr).mean())


def balanced_accuracy(y, p, threshold) -> float:
    """Mean of sensitivity and specificity at `p >= threshold`; y [N], p [N], both classes."""
    y, p = as_binary_pair(y, p, "balanced_accuracy")
    _require_classes(y, "balanced_accuracy")
    return 0.5 * (sens_at_threshold(y, p, threshold) + spec_at_threshold(y, p, threshold))


def spec_at_sens_roc(y, p, sens=0.9) -> float:
    """The paper's Spec@Sens: highest specificity among ROC points with TPR >= sens.

    The ROC is this split's own (the threshold is effectively chosen on the data reported).
    y [N], p [N]; both classes needed.
    """
    _check_rate(sens, "sens", "spec_at_sens_roc")
    y, p = as_binary_pair(y, p, "spec_at_sens_roc")
    _require_classes(y, "spec_at_sens_roc")
    fpr, tpr, _ = _roc(y, p)
    return float((1.0 - fpr)[tpr >= sens - RATE_EPS].max())


def sens_at_spec_roc(y, p, spec=0.9) -> float:
    """Highest sensitivity among ROC points with specificity >= spec. y [N], p [N]."""
    _check_rate(spec, "spec", "sens_at_spec_roc")
    y, p = as_binary_pair(y, p, "sens_at_spec_roc")
    _require_classes(y, "sens_at_spec_roc")
    fpr, tpr, _ = _roc(y, p)
    return float(tpr[1.0 - fpr >= spec - RATE_EPS].max())


def threshold_at_sens(y_val, p_val, sens=0.9) -> float:
    """Highest threshold whose validation sensitivity is >= sens.

    That is the score of the k-th highest positive, k = ceil(sens * n_pos): at it, k or more
    positives are called; above it, fewer than k.
    """
    _check_rate(sens, "sens", "threshold_at_sens")
    y_val, p_val = as_binary_pair(y_val, p_val, "threshold_at_sens")
    _require_classes(y_val, "threshold_at_sens (validation labels)", neg=False)
    pos_desc = np.sort(p_val[y_val == 1])[::-1]  # [n_pos]
    k = int(np.ceil(sens * pos_desc.size - RATE_EPS))
    return float(pos_desc[k - 1])


def brier(y, p) -> float:
    """Brier score, mean((p - y)^2); y [N] in {0, 1}, p [N] probabilities in [0, 1]."""
    y, p = as_binary_pair(y, p, "brier")
    return float(np.mean((p - y) ** 2))


def reliability_curve(y, p, n_bins=10) -> dict:
    """Calibration by equal-width bins on [0, 1], binned like sklearn's `calibration_curve`.

    Bins are right-closed, (a, b], the first also holding 0. Empty bins are kept (count 0,
    NaN means) so the arrays have a fixed length.

    Returns:
      dict of numpy arrays: "bin_edges" [n_bins + 1], "mean_predicted" [n_bins],
      "observed_fraction" [n_bins] (fraction of positives), "counts" [n_bins] int.
    """
    y, p = as_binary_pair(y, p, "reliability_curve")
    if n_bins < 1:
        raise ValueError(f"reliability_curve: n_bins must be >= 1, got {n_bins}")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"reliability_curve: probabilities must lie in [0, 1], found range"
            f" [{p.min()}, {p.max()}]; pass sigmoid(logit), not the logit"
        )
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_id = np.searchsorted(edges[1:-1], p)  # [N]
    counts = np.bincount(bin_id, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(bin_id, weights=p, minlength=n_bins) / counts
        observed = np.bincount(bin_id, weights=y, minlength=n_bins) / counts
    return {
        "bin_edges": edges,
        "mean_predicted": mean_pred,
        "observed_fraction": observed,
        "counts": counts,
    }


def evaluate(y, p, *, y_val, p_val) -> dict[str, float]:
    """All scalar metrics of one split, with thresholds fixed on validation.

    Args:
      y, p: [N] labels and probabilities of the split reported (e.g. test).
      y_val, p_val: [M] validation labels and probabilities that fix the thresholds.

    Returns:
      dict with the keys of METRIC_DEFINITIONS, all plain floats.
    """
    y, p = as_binary_pair(y, p, "evaluate")
    _require_classes(y, "evaluate (labels of the split reported)")
    thr = choose_threshold_bacc(y_val, p_val)
    thr_sens90 = threshold_at_sens(y_val, p_val, 0.9)
    return {
        "auc": roc_auc(y, p),
        "bacc": balanced_accuracy(y, p, thr),
        "bacc_oracle": balanced_accuracy(y, p, choose_threshold_bacc(y, p)),
        "spec_at_sens90_roc": spec_at_sens_roc(y, p, 0.9),
        "spec_at_sens90_valthr": spec_at_threshold(y, p, thr_sens90),
        "sens_at_sens90_valthr": sens_at_threshold(y, p, thr_sens90),
        "sens_at_spec90_roc": sens_at_spec_roc(y, p, 0.9),
        "brier": brier(y, p),
        "threshold": thr,
        "threshold_sens90": thr_sens90,
        "n": float(y.size),
        "n_pos": float(y.sum()),
    }


class Scores(NamedTuple):
    """Bags (or exams) with their labels and one head's probabilities, in one order.

    ids: bag ids (at exam level, "patient/exam"); exams: each bag's exam id ("" where the bags
    name no exam); patients: each bag's patient.
    """

    ids: np.ndarray
    labels: np.ndarray
    p: np.ndarray
    patients: np.ndarray
    exams: np.ndarray

    def subset(self, keep) -> Scores:
        return Scores(*(np.asarray(a)[keep] for a in self))


def exam_level(scores: Scores) -> Scores | None:
    """Breast bags -> exams: an exam is positive when any of its breasts is, and scores its
    breasts' highest probability (the usual screening read-out; a breast the label mapping left
    out takes no part). Exams are (patient, exam id) pairs, in sorted order.

    None when some bag names no exam (exam id "").
    """
    exams = np.asarray(scores.exams, dtype=object)
    if not len(exams) or any(not str(e) for e in exams):
        return None
    keys = np.array([f"{p}/{e}" for p, e in zip(scores.patients, exams)], dtype=object)
    names, index = np.unique(keys.astype(str), return_inverse=True)
    y_exam = np.zeros(len(names), np.int64)
    p_exam = np.full(len(names), -np.inf)
    np.maximum.at(y_exam, index, np.asarray(scores.labels, np.int64))
    np.maximum.at(p_exam, index, np.asarray(scores.p, np.float64))
    patients = np.empty(len(names), dtype=object)
    patients[index] = np.asarray(scores.patients, dtype=object)
    exam_ids = np.empty(len(names), dtype=object)
    exam_ids[index] = exams
    return Scores(names.astype(object), y_exam, p_exam, patients, exam_ids)
