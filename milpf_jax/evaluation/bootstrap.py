"""95% intervals by bootstrap over patients (all bags of a patient resampled together).

`bootstrap_ci` evaluates every resample at once: a resample is a row of integer weights over
bags, so the scores are sorted once and each metric is a weighted cumulative sum over all
resamples (`BOOTSTRAP_METRICS`, thresholds fixed on validation as in `metrics.evaluate`).
`paired_bootstrap` scores two heads on the same resamples (their difference, interval and a
two-sided p-value) and `holm` adjusts p-values over several comparisons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from milpf_jax.evaluation.metrics import (
    RATE_EPS,
    as_binary_pair,
    choose_threshold_bacc,
    threshold_at_sens,
)


@dataclasses.dataclass(frozen=True)
class ValThresholds:
    """Thresholds fixed on validation, handed to every bootstrap metric."""

    bacc: float  # choose_threshold_bacc(y_val, p_val)
    sens90: float  # threshold_at_sens(y_val, p_val, 0.9)

    @classmethod
    def from_validation(cls, y_val, p_val) -> ValThresholds:
        return cls(choose_threshold_bacc(y_val, p_val), threshold_at_sens(y_val, p_val, 0.9))


# A bootstrap metric: fn(y [N], p [N], w [R, N] resample weights, thresholds) -> [R] values,
# NaN where a resample leaves the metric undefined (e.g. no positive bag drawn).
BootstrapMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, ValThresholds], np.ndarray]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def weighted_roc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points of R weighted samples at once, from the all-negative corner (0, 0) upward.

    Args:
      y: [N] labels; p: [N] scores; w: [R, N] non-negative weights (bootstrap counts).

    Returns:
      (fpr, tpr), each [R, U + 1] for U distinct scores; rows without a positive (negative)
      weight get NaN tpr (fpr).
    """
    order = np.argsort(-p, kind="stable")
    p_desc, y_desc = p[order], y[order].astype(np.float64)
    w_desc = w[:, order]  # [R, N]
    tp = np.cumsum(w_desc * y_desc, axis=1)  # [R, N]
    fp = np.cumsum(w_desc * (1.0 - y_desc), axis=1)  # [R, N]
    # A run of tied scores is one threshold: keep the point after its last member.
    last_of_tie = np.append(p_desc[1:] != p_desc[:-1], True)  # [N]
    tp, fp = tp[:, last_of_tie], fp[:, last_of_tie]  # [R, U]
    zeros = np.zeros((w.shape[0], 1))
    tpr = _safe_div(np.hstack([zeros, tp]), tp[:, -1:])  # [R, U + 1]
    fpr = _safe_div(np.hstack([zeros, fp]), fp[:, -1:])  # [R, U + 1]
    return fpr, tpr


def _both_classes(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    n_pos = w @ y
    return (n_pos > 0) & (w.sum(axis=1) - n_pos > 0)  # [R]


def _weighted_rates(y, p, w, thr) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity, specificity) of each resample at `p >= thr`, each [R]."""
    called = (p >= thr).astype(np.float64)
    yf = y.astype(np.float64)
    sens = _safe_div(w @ (yf * called), w @ yf)
    spec = _safe_div(w @ ((1.0 - yf) * (1.0 - called)), w @ (1.0 - yf))
    return sens, spec


def _w_auc(y, p, w, thr):
    fpr, tpr = weighted_roc(y, p, w)
    # Trapezoids over the ROC: a tied run is a diagonal step, i.e. ties count one half.
    return np.sum(np.diff(fpr, axis=1) * 0.5 * (tpr[:, 1:] + tpr[:, :-1]), axis=1)


def _w_bacc(y, p, w, thr):
    sens, spec = _weighted_rates(y, p, w, thr.bacc)
    return np.where(_both_classes(y, w), 0.5 * (sens + spec), np.nan)


def _w_bacc_oracle(y, p, w, thr):
    fpr, tpr = weighted_roc(y, p, w)
    return np.max(0.5 * (tpr + 1.0 - fpr), axis=1)


def _w_spec_at_sens90_roc(y, p, w, thr):
    fpr, tpr = weighted_roc(y, p, w)
    ok = tpr >= 0.9 - RATE_EPS
    best = np.max(np.where(ok, 1.0 - fpr, -np.inf), axis=1)
    return np.where(_both_classes(y, w), best, np.nan)


def _w_sens_at_spec90_roc(y, p, w, thr):
    fpr, tpr = weighted_roc(y, p, w)
    ok = 1.0 - fpr >= 0.9 - RATE_EPS
    best = np.max(np.where(ok, tpr, -np.inf), axis=1)
    return np.where(_both_classes(y, w), best, np.nan)


def _w_spec_at_sens90_valthr(y, p, w, thr):
    return np.where(_both_classes(y, w), _weighted_rates(y, p, w, thr.sens90)[1], np.nan)


def _w_sens_at_sens90_valthr(y, p, w, thr):
    return np.where(_both_classes(y, w), _weighted_rates(y, p, w, thr.sens90)[0], np.nan)


def _w_brier(y, p, w, thr):
    return _safe_div(w @ (p - y) ** 2, w.sum(axis=1))


# Vectorised bootstrap versions of evaluate's metrics (thresholds and counts have no interval).
BOOTSTRAP_METRICS: dict[str, BootstrapMetric] = {
    "auc": _w_auc,
    "bacc": _w_bacc,
    "bacc_oracle": _w_bacc_oracle,
    "spec_at_sens90_roc": _w_spec_at_sens90_roc,
    "spec_at_sens90_valthr": _w_spec_at_sens90_valthr,
    "sens_at_sens90_valthr": _w_sens_at_sens90_valthr,
    "sens_at_spec90_roc": _w_sens_at_spec90_roc,
    "brier": _w_brier,
}


def per_resample(fn: Callable[[np.ndarray, np.ndarray, ValThresholds], float]) -> BootstrapMetric:
    """Wraps a plain metric fn(y, p, thresholds) -> float as a (slow, looping) bootstrap metric.

    Each resample is materialised by repeating bags by their weights; resamples lacking a
    class give NaN without calling `fn`.
    """

    def weighted(y, p, w, thr):
        out = np.full(w.shape[0], np.nan)
        for r, counts in enumerate(w.astype(np.int64)):
            rows = np.repeat(np.arange(y.size), counts)
            if 0 < y[rows].sum() < rows.size:
                out[r] = fn(y[rows], p[rows], thr)
        return out

    return weighted


def bootstrap_ci(
    y,
    p,
    patient_ids,
    metric_fns: Mapping[str, BootstrapMetric],
    *,
    y_val,
    p_val,
    n_boot=1000,
    seed=0,
    level=0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals, resampling patients (all bags of a patient together).

    Bags of one patient (e.g. both breasts) are correlated, so resampling bags would
    understate the spread. A resample draws len(patients) patients with replacement and
    weights each bag by how often its patient was drawn; thresholds stay those fixed on
    validation. Resamples where a metric is undefined (one class drawn) are left out of that
    metric's interval.

    Args:
      y, p: [N] labels and probabilities of the split reported.
      patient_ids: [N] patient of each bag (any hashable dtype).
      metric_fns: name -> BootstrapMetric, e.g. BOOTSTRAP_METRICS or per_resample(fn).
      y_val, p_val: [M] validation labels and probabilities fixing the thresholds.
      n_boot: number of resamples; seed: numpy seed (same seed, same intervals);
      level: central coverage of the interval.

    Returns:
      name -> (low, high); (nan, nan) when no resample defined the metric.
    """
    y, p = as_binary_pair(y, p, "bootstrap_ci")
    _check_bootstrap_args(y, patient_ids, n_boot, level, "bootstrap_ci")
    thresholds = ValThresholds.from_validation(y_val, p_val)
    values = {name: [] for name in metric_fns}
    for w in patient_resamples(patient_ids, n_boot, seed):
        for name, fn in metric_fns.items():
            values[name].append(np.asarray(fn(y, p, w, thresholds), dtype=np.float64))

    return {name: _percentile_interval(np.concatenate(chunks), level)[1]
            for name, chunks in values.items()}


def _percentile_interval(values: np.ndarray, level: float) -> tuple[np.ndarray, tuple]:
    """(the finite resampled values, their central `level` interval (nan, nan) when none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return v, (float("nan"), float("nan"))
    tail = 0.5 * (1.0 - level)
    lo, hi = np.quantile(v, [tail, 1.0 - tail])
    return v, (float(lo), float(hi))


def _check_bootstrap_args(y, patient_ids, n_boot, level, where: str) -> None:
    if np.shape(patient_ids) != y.shape:
        raise ValueError(
            f"{where}: patient_ids must have one entry per bag, got shape"
            f" {np.shape(patient_ids)} for {y.size} bags"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"{where}: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"{where}: n_boot must be >= 1, got {n_boot}")


def patient_resamples(patient_ids, n_boot: int, seed: int):
    """Bootstrap weights [R, N] of the bags, in blocks of resamples: each resample draws as many
    patients as there are, with replacement, and weights a bag by how often its patient was
    drawn. Blocks keep each [R, N] work array near 32 MB however large N is.

    Sorted unique ids: the draw depends on the set of patients, not on the bag order, so two
    predictions of the same bags in another order get the same resamples.
    """
    _, bag_patient = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients = int(bag_patient.max()) + 1
    rng = np.random.default_rng(seed)
    # Drawing n patients with replacement == one multinomial count vector per resample.
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_boot)
    block = max(1, (1 << 22) // max(bag_patient.size, 1))
    for start in range(0, n_boot, block):
        yield counts[start : start + block, bag_patient].astype(np.float64)


def paired_bootstrap(
    y,
    p_a,
    p_b,
    patient_ids,
    metric_fns: Mapping[str, BootstrapMetric],
    *,
    val_a,
    val_b,
    n_boot=1000,
    seed=0,
    level=0.95,
) -> dict[str, dict]:
    """Difference a − b of each metric between two models scored on the same bags.

    Both models are evaluated on each resample of patients (the patient bootstrap of
    `bootstrap_ci`), so the interval is that of the difference itself: two heads read on one
    test set are correlated, and comparing their separate intervals would miss that. Each
    model keeps its own thresholds, fixed on its own validation predictions.

    The p-value is the two-sided bootstrap one for "no difference": twice the smaller share of
    resampled differences on either side of 0, counted as (k + 1) / (R + 1), so never below
    2 / (R + 1). It is one test; correct for several (`holm`).

    Args:
      y: [N] labels; p_a, p_b: [N] probabilities of the two models for the same bags.
      patient_ids: [N] patient of each bag.
      metric_fns: name -> BootstrapMetric.
      val_a, val_b: (y_val, p_val) of each model's validation split.

    Returns:
      name -> {"a": value, "b": value, "delta": a − b on all bags, "ci95": [low, high],
      "p_value": p}; NaNs where no resample defined the metric.
    """
    y, p_a = as_binary_pair(y, p_a, "paired_bootstrap (a)")
    _, p_b = as_binary_pair(y, p_b, "paired_bootstrap (b)")
    _check_bootstrap_args(y, patient_ids, n_boot, level, "paired_bootstrap")
    thr_a, thr_b = ValThresholds.from_validation(*val_a), ValThresholds.from_validation(*val_b)
    everyone = np.ones((1, y.size))
    deltas = {name: [] for name in metric_fns}
    for w in patient_resamples(patient_ids, n_boot, seed):
        for name, fn in metric_fns.items():
            deltas[name].append(np.asarray(fn(y, p_a, w, thr_a) - fn(y, p_b, w, thr_b)))
    out = {}
    for name, fn in metric_fns.items():
        a, b = float(fn(y, p_a, everyone, thr_a)[0]), float(fn(y, p_b, everyone, thr_b)[0])
        d, ci = _percentile_interval(np.concatenate(deltas[name]).astype(np.float64), level)
        p_value = float("nan")
        if d.size:
            below, above = (np.sum(d <= 0) + 1) / (d.size + 1), (np.sum(d >= 0) + 1) / (d.size + 1)
            p_value = float(min(1.0, 2.0 * min(below, above)))
        out[name] = {"a": a, "b": b, "delta": a - b, "ci95": list(ci), "p_value": p_value}
    return out


def holm(p_values) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error), in the order given; NaNs stay."""
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    out = p.copy()
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out

