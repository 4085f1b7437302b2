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

`auc_jax` is the exact AUC inside the compiled training loop (validation AUC each epoch).
`bootstrap_ci` resamples patients (all bags of a patient together) and evaluates every resample
at once: a resample is a row of integer weights over bags, so the scores are sorted once and each
metric is a weighted cumulative sum over all resamples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Float slack for comparing rates such as 9/10 against a target of 0.9.
_RATE_EPS = 1e-9

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


def _as_binary_pair(y, p, where: str) -> tuple[np.ndarray, np.ndarray]:
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


def auc_jax(scores, labels, mask=None) -> jax.Array:
    """Exact ROC AUC in JAX: jit- and vmap-able, O(N log N).

    Mann-Whitney statistic: each positive scores the fraction of negatives below it, plus one
    half of the negatives tied with it. Equals `sklearn.metrics.roc_auc_score` on the rows where
    `mask` is True. Scores must be finite.

    Args:
      scores: [N] float.
      labels: [N] in {0, 1} (int, float or bool).
      mask: [N] bool, rows to use; None uses all rows.

    Returns:
      [] float32 AUC; 0.5 (not NaN) when the masked rows lack a class.

    Example:
      aucs = jax.vmap(auc_jax, in_axes=(0, None, None))(scores_per_run, labels, val_mask)
    """
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels)
    n = scores.shape[0]
    valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    pos = (labels == 1) & valid
    neg = (labels == 0) & valid

    # Valid rows first, ascending score; masked rows sort last so they never share a rank.
    order = jnp.lexsort((scores, ~valid))
    s, v = scores[order], valid[order]
    is_pos, is_neg = pos[order], neg[order].astype(jnp.int32)

    idx = jnp.arange(n)
    starts_group = jnp.concatenate(
        [jnp.ones((1,), bool), (s[1:] != s[:-1]) | (v[1:] != v[:-1])]
    )  # [N]
    group_id = jnp.cumsum(starts_group) - 1  # [N]
    group_start = jax.lax.cummax(jnp.where(starts_group, idx, 0))  # [N]
    neg_below = (jnp.cumsum(is_neg) - is_neg)[group_start]  # negatives strictly lower, [N]
    neg_tied = jax.ops.segment_sum(is_neg, group_id, num_segments=n)[group_id]  # [N]

    n_pos = is_pos.sum()
    n_neg = is_neg.sum()
    # Normalise per positive before summing: every term is in [0, 1], so float32 stays exact
    # enough for large N where raw rank sums would not.
    per_pos = (neg_below + 0.5 * neg_tied) / jnp.maximum(n_neg, 1)  # [N]
    auc = jnp.where(is_pos, per_pos, 0.0).sum() / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, 0.5).astype(jnp.float32)


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of every distinct threshold, highest first: (fpr, tpr, thr), each [U + 1]."""
    from sklearn.metrics import roc_curve

    # drop_intermediate=False keeps every operating point, so maxima over points are exact.
    return roc_curve(y, p, drop_intermediate=False)


def roc_auc(y, p) -> float:
    """ROC AUC by scikit-learn. y [N] in {0, 1}, p [N]; raises when a class is absent."""
    from sklearn.metrics import roc_auc_score

    y, p = _as_binary_pair(y, p, "roc_auc")
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
    y_val, p_val = _as_binary_pair(y_val, p_val, "choose_threshold_bacc")
    _require_classes(y_val, "choose_threshold_bacc (validation labels)")
    fpr, tpr, thr = _roc(y_val, p_val)
    # Index 0 is sklearn's +inf "call nothing positive" point; it is never better than 0.5.
    bacc = 0.5 * (tpr[1:] + 1.0 - fpr[1:])
    return float(thr[1:][np.argmax(bacc)])


def sens_at_threshold(y, p, thr) -> float:
    """Sensitivity (true positive rate) at `p >= thr`. y [N], p [N]; needs a positive."""
    y, p = _as_binary_pair(y, p, "sens_at_threshold")
    _require_classes(y, "sens_at_threshold", neg=False)
    return float((p[y == 1] >= thr).mean())


def spec_at_threshold(y, p, thr) -> float:
    """Specificity (true negative rate) at `p >= thr`. y [N], p [N]; needs a negative."""
    y, p = _as_binary_pair(y, p, "spec_at_threshold")
    _require_classes(y, "spec_at_threshold", pos=False)
    return float((p[y == 0] < thr).mean())


def balanced_accuracy(y, p, threshold) -> float:
    """Mean of sensitivity and specificity at `p >= threshold`; y [N], p [N], both classes."""
    y, p = _as_binary_pair(y, p, "balanced_accuracy")
    _require_classes(y, "balanced_accuracy")
    return 0.5 * (sens_at_threshold(y, p, threshold) + spec_at_threshold(y, p, threshold))


def spec_at_sens_roc(y, p, sens=0.9) -> float:
    """The paper's Spec@Sens: highest specificity among ROC points with TPR >= sens.

    The ROC is this split's own (the threshold is effectively chosen on the data reported).
    y [N], p [N]; both classes needed.
    """
    _check_rate(sens, "sens", "spec_at_sens_roc")
    y, p = _as_binary_pair(y, p, "spec_at_sens_roc")
    _require_classes(y, "spec_at_sens_roc")
    fpr, tpr, _ = _roc(y, p)
    return float((1.0 - fpr)[tpr >= sens - _RATE_EPS].max())


def sens_at_spec_roc(y, p, spec=0.9) -> float:
    """Highest sensitivity among ROC points with specificity >= spec. y [N], p [N]."""
    _check_rate(spec, "spec", "sens_at_spec_roc")
    y, p = _as_binary_pair(y, p, "sens_at_spec_roc")
    _require_classes(y, "sens_at_spec_roc")
    fpr, tpr, _ = _roc(y, p)
    return float(tpr[1.0 - fpr >= spec - _RATE_EPS].max())


def threshold_at_sens(y_val, p_val, sens=0.9) -> float:
    """Highest threshold whose validation sensitivity is >= sens.

    That is the score of the k-th highest positive, k = ceil(sens * n_pos): at it, k or more
    positives are called; above it, fewer than k.
    """
    _check_rate(sens, "sens", "threshold_at_sens")
    y_val, p_val = _as_binary_pair(y_val, p_val, "threshold_at_sens")
    _require_classes(y_val, "threshold_at_sens (validation labels)", neg=False)
    pos_desc = np.sort(p_val[y_val == 1])[::-1]  # [n_pos]
    k = int(np.ceil(sens * pos_desc.size - _RATE_EPS))
    return float(pos_desc[k - 1])


def brier(y, p) -> float:
    """Brier score, mean((p - y)^2); y [N] in {0, 1}, p [N] probabilities in [0, 1]."""
    y, p = _as_binary_pair(y, p, "brier")
    return float(np.mean((p - y) ** 2))


def reliability_curve(y, p, n_bins=10) -> dict:
    """Calibration by equal-width bins on [0, 1], binned like sklearn's `calibration_curve`.

    Bins are right-closed, (a, b], the first also holding 0. Empty bins are kept (count 0,
    NaN means) so the arrays have a fixed length.

    Returns:
      dict of numpy arrays: "bin_edges" [n_bins + 1], "mean_predicted" [n_bins],
      "observed_fraction" [n_bins] (fraction of positives), "counts" [n_bins] int.
    """
    y, p = _as_binary_pair(y, p, "reliability_curve")
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
    y, p = _as_binary_pair(y, p, "evaluate")
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


def exam_of_bag(bag_id) -> str | None:
    """The exam of a bag id made by milpf_jax.reading.cohort, "patient/exam/laterality" -> "patient/exam";
    None for an id of another form."""
    parts = str(bag_id).split("/")
    return "/".join(parts[:2]) if len(parts) == 3 and parts[2] in ("L", "R") else None


def exam_level(bag_ids, y, p, patient_ids):
    """Breast bags -> exams: an exam is positive when any of its breasts is, and scores its
    breasts' highest probability (the usual screening read-out; a breast the label mapping left
    out takes no part).

    Returns (exam_ids, y [E], p [E], patient_ids [E]) in exam order, or None when some bag id is
    not "patient/exam/laterality" (a store not made from a manifest).
    """
    exams = [exam_of_bag(b) for b in bag_ids]
    if not exams or any(e is None for e in exams):
        return None
    names, index = np.unique(np.asarray(exams), return_inverse=True)
    y_exam = np.zeros(len(names), np.int64)
    p_exam = np.full(len(names), -np.inf)
    np.maximum.at(y_exam, index, np.asarray(y, np.int64))
    np.maximum.at(p_exam, index, np.asarray(p, np.float64))
    patients = np.empty(len(names), dtype=np.asarray(patient_ids).dtype)
    patients[index] = np.asarray(patient_ids)
    return names, y_exam, p_exam, patients


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
    ok = tpr >= 0.9 - _RATE_EPS
    best = np.max(np.where(ok, 1.0 - fpr, -np.inf), axis=1)
    return np.where(_both_classes(y, w), best, np.nan)


def _w_sens_at_spec90_roc(y, p, w, thr):
    fpr, tpr = weighted_roc(y, p, w)
    ok = 1.0 - fpr >= 0.9 - _RATE_EPS
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
    y, p = _as_binary_pair(y, p, "bootstrap_ci")
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
    y, p_a = _as_binary_pair(y, p_a, "paired_bootstrap (a)")
    _, p_b = _as_binary_pair(y, p_b, "paired_bootstrap (b)")
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
