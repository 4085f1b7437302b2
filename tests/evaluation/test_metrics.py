"""milpf_jax.evaluation.metrics and .bootstrap against scikit-learn and ROCs with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)

from milpf_jax.evaluation import bootstrap as mb
from milpf_jax.evaluation import metrics as m
from milpf_jax.learning.auc import auc_jax


def _scores(seed, n, ties=False, separation=1.0):
    """Labels [n] with both classes and probabilities [n]; rounded to one decimal when ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    return y, (np.round(p, 1) if ties else p)


# The hand-made ROC: 10 positives, 10 negatives. Calling the 9 highest positives (sensitivity
# 0.9) needs threshold 0.5, which also calls the negatives 0.95, 0.72 and 0.52: specificity 0.7.
# Allowing one false positive (specificity 0.9) stops at 0.75: sensitivity 0.4.
HAND_POS = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.05]
HAND_NEG = [0.95, 0.72, 0.52, 0.4, 0.3, 0.2, 0.15, 0.1, 0.08, 0.01]
HAND_Y = np.array([1] * 10 + [0] * 10)
HAND_P = np.array(HAND_POS + HAND_NEG)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_auc_jax_equals_sklearn(seed, ties):
    y, p = _scores(seed, 257, ties=ties)
    assert len(np.unique(p)) < 20 or not ties  # the tied case really has ties
    assert float(auc_jax(p, y)) == pytest.approx(roc_auc_score(y, p), abs=1e-6)


def test_auc_jax_accepts_float_and_bool_labels():
    y, p = _scores(2, 100, ties=True)
    want = roc_auc_score(y, p)
    assert float(auc_jax(p, y.astype(np.float32))) == pytest.approx(want, abs=1e-6)
    assert float(auc_jax(p, y.astype(bool))) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_auc_jax_mask_ignores_masked_rows_even_when_tied(seed):
    y, p = _scores(seed, 300, ties=True)
    mask = np.random.default_rng(seed + 10).random(300) < 0.4
    want = roc_auc_score(y[mask], p[mask])
    assert float(auc_jax(p, y, mask)) == pytest.approx(want, abs=1e-6)
    # Whatever the masked rows hold, the answer stays.
    p_junk = np.where(mask, p, np.random.default_rng(seed).random(300))
    y_junk = np.where(mask, y, 1 - y)
    assert float(auc_jax(p_junk, y_junk, mask)) == pytest.approx(want, abs=1e-6)


def test_auc_jax_one_class_gives_half_not_nan():
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert float(auc_jax(p, np.ones(4))) == 0.5
    assert float(auc_jax(p, np.zeros(4))) == 0.5
    y = np.array([0, 1, 0, 1])
    assert float(auc_jax(p, y, np.array([True, False, True, False]))) == 0.5
    assert float(auc_jax(p, y, np.zeros(4, bool))) == 0.5


def test_auc_jax_under_jit_and_vmap():
    y, _ = _scores(4, 120)
    rng = np.random.default_rng(4)
    runs = np.round(rng.random((5, 120)) + 0.3 * y, 1).astype(np.float32)  # [R, N], ties
    mask = rng.random(120) < 0.7
    fn = jax.jit(jax.vmap(auc_jax, in_axes=(0, None, None)))
    got = np.asarray(fn(jnp.asarray(runs), jnp.asarray(y), jnp.asarray(mask)))
    want = [roc_auc_score(y[mask], r[mask]) for r in runs]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(set(np.round(want, 6))) == 5  # the runs really differ


def test_auc_jax_large_n_stays_exact_in_float32():
    y, p = _scores(5, 50_000, separation=0.3)
    assert float(jax.jit(auc_jax)(p, y)) == pytest.approx(roc_auc_score(y, p), abs=1e-5)


def test_roc_auc_matches_sklearn_and_refuses_one_class():
    y, p = _scores(6, 80, ties=True)
    assert m.roc_auc(y, p) == roc_auc_score(y, p)
    with pytest.raises(ValueError, match="at least one negative"):
        m.roc_auc(np.ones(5), np.linspace(0, 1, 5))


@pytest.mark.parametrize("thr", [0.2, 0.5, 0.7])
def test_balanced_accuracy_equals_sklearn(thr):
    y, p = _scores(7, 150, ties=True)
    assert m.balanced_accuracy(y, p, thr) == pytest.approx(
        balanced_accuracy_score(y, p >= thr), abs=1e-12
    )


@pytest.mark.parametrize("ties", [False, True])
def test_choose_threshold_bacc_is_the_brute_force_maximum(ties):
    y, p = _scores(8, 200, ties=ties)
    thr = m.choose_threshold_bacc(y, p)
    candidates = np.append(np.unique(p), [p.max() + 1.0, p.min() - 1.0])
    best = max(balanced_accuracy_score(y, p >= t) for t in candidates)
    assert thr in p
    assert m.balanced_accuracy(y, p, thr) == pytest.approx(best, abs=1e-12)
    # Youden's J off sklearn's ROC is the same optimum.
    fpr, tpr, _ = roc_curve(y, p)
    assert m.balanced_accuracy(y, p, thr) == pytest.approx(0.5 * (1 + np.max(tpr - fpr)))


def test_spec_at_sens_off_hand_made_roc():
    assert m.spec_at_sens_roc(HAND_Y, HAND_P, 0.9) == pytest.approx(0.7)
    assert m.spec_at_sens_roc(HAND_Y, HAND_P, 1.0) == pytest.approx(0.1)
    assert m.sens_at_spec_roc(HAND_Y, HAND_P, 0.9) == pytest.approx(0.4)
    assert m.sens_at_spec_roc(HAND_Y, HAND_P, 1.0) == pytest.approx(0.0)


def test_threshold_at_sens_and_rates_off_hand_made_roc():
    assert m.threshold_at_sens(HAND_Y, HAND_P, 0.9) == 0.5
    # 0.7 * 10 is 7.000000000000001 in floats: the 7th positive, not the 8th.
    assert m.threshold_at_sens(HAND_Y, HAND_P, 0.7) == 0.6
    assert m.threshold_at_sens(HAND_Y, HAND_P, 1.0) == 0.05
    assert m.sens_at_threshold(HAND_Y, HAND_P, 0.5) == pytest.approx(0.9)
    assert m.spec_at_threshold(HAND_Y, HAND_P, 0.5) == pytest.approx(0.7)
    # Just above it, sensitivity drops below 0.9: 0.5 is the highest such threshold.
    assert m.sens_at_threshold(HAND_Y, HAND_P, 0.5 + 1e-9) == pytest.approx(0.8)


def test_spec_at_sens_roc_matches_brute_force_over_thresholds():
    y, p = _scores(9, 300, ties=True)
    specs = [
        m.spec_at_threshold(y, p, t)
        for t in np.unique(p)
        if m.sens_at_threshold(y, p, t) >= 0.9
    ]
    assert m.spec_at_sens_roc(y, p, 0.9) == pytest.approx(max(specs))


def test_brier_equals_sklearn():
    y, p = _scores(10, 90)
    assert m.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m.brier([0, 1], [0.0, 1.0]) == 0.0
    assert m.brier([0, 1], [1.0, 0.0]) == 1.0


def test_reliability_curve_matches_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    y, p = _scores(11, 500)
    p = np.append(p, [0.0, 0.3, 1.0])  # values on bin edges
    y = np.append(y, [0, 1, 1])
    curve = m.reliability_curve(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = curve["counts"] > 0
    np.testing.assert_allclose(curve["observed_fraction"][full], prob_true)
    np.testing.assert_allclose(curve["mean_predicted"][full], prob_pred)
    assert curve["counts"].sum() == y.size
    assert curve["bin_edges"].shape == (11,)


def test_reliability_curve_keeps_empty_bins_and_refuses_logits():
    curve = m.reliability_curve([0, 1, 1], [0.05, 0.95, 0.9], n_bins=4)
    np.testing.assert_array_equal(curve["counts"], [1, 0, 0, 2])
    assert np.isnan(curve["mean_predicted"][1])
    assert curve["observed_fraction"][3] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.reliability_curve([0, 1], [-2.0, 3.0])


def test_evaluate_keys_values_and_val_fixed_thresholds():
    y_val, p_val = _scores(12, 200)
    y, p = _scores(13, 300)
    out = m.evaluate(y, p, y_val=y_val, p_val=p_val)
    assert set(out) == set(m.METRIC_DEFINITIONS)
    assert all(isinstance(v, float) for v in out.values())
    thr = m.choose_threshold_bacc(y_val, p_val)
    assert out["threshold"] == thr
    assert out["bacc"] == pytest.approx(balanced_accuracy_score(y, p >= thr))
    assert out["auc"] == pytest.approx(roc_auc_score(y, p))
    assert out["spec_at_sens90_valthr"] == m.spec_at_threshold(y, p, out["threshold_sens90"])
    assert out["n"] == 300 and out["n_pos"] == y.sum()


@pytest.mark.parametrize("seed", range(5))
def test_bacc_oracle_is_never_below_bacc(seed):
    y_val, p_val = _scores(100 + seed, 60, ties=True)
    y, p = _scores(200 + seed, 60, ties=True)
    out = m.evaluate(y, p, y_val=y_val, p_val=p_val)
    assert out["bacc_oracle"] >= out["bacc"]
    # On the validation split itself the two coincide.
    own = m.evaluate(y_val, p_val, y_val=y_val, p_val=p_val)
    assert own["bacc_oracle"] == own["bacc"]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        m.brier([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="equal length"):
        m.roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        m.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="sens must be in"):
        m.threshold_at_sens([0, 1], [0.1, 0.2], sens=0.0)
    with pytest.raises(ValueError, match="validation labels"):
        m.choose_threshold_bacc([1, 1], [0.1, 0.2])


def test_weighted_metrics_equal_scalar_metrics_on_materialised_resamples():
    y_val, p_val = _scores(14, 120, ties=True)
    y, p = _scores(15, 90, ties=True)
    thr = mb.ValThresholds.from_validation(y_val, p_val)
    w = np.random.default_rng(15).integers(0, 3, (6, 90)).astype(float)  # [R, N]
    for r in range(6):
        rows = np.repeat(np.arange(90), w[r].astype(int))
        want = m.evaluate(y[rows], p[rows], y_val=y_val, p_val=p_val)
        for name, fn in mb.BOOTSTRAP_METRICS.items():
            got = fn(y, p, w, thr)[r]
            assert got == pytest.approx(want[name], abs=1e-12), (name, r)


def test_weighted_metrics_are_nan_for_one_class_resample():
    y, p = _scores(16, 40)
    w = np.where(y == 1, 0.0, 1.0)[None, :]  # [1, N], negatives only
    thr = mb.ValThresholds(bacc=0.5, sens90=0.3)
    for name, fn in mb.BOOTSTRAP_METRICS.items():
        if name != "brier":
            assert np.isnan(fn(y, p, w, thr)[0]), name
    assert np.isfinite(mb.BOOTSTRAP_METRICS["brier"](y, p, w, thr)[0])


def _cohort(seed, n_patients=150):
    """Two bags per patient sharing the patient's label and a patient effect on the score."""
    rng = np.random.default_rng(seed)
    y_pat = rng.integers(0, 2, n_patients)
    effect = rng.normal(size=n_patients)
    pid = np.repeat(np.arange(n_patients), 2)
    y = y_pat[pid]
    logit = effect[pid] + 0.5 * rng.normal(size=2 * n_patients) + (2 * y - 1)
    return y, 1.0 / (1.0 + np.exp(-logit)), np.array([f"P{i:04d}" for i in pid])


def test_bootstrap_is_deterministic_per_seed_and_contains_the_point():
    y_val, p_val, _ = _cohort(17)
    y, p, pid = _cohort(18)
    args = dict(y_val=y_val, p_val=p_val, n_boot=300)
    a = mb.bootstrap_ci(y, p, pid, mb.BOOTSTRAP_METRICS, seed=3, **args)
    b = mb.bootstrap_ci(y, p, pid, mb.BOOTSTRAP_METRICS, seed=3, **args)
    c = mb.bootstrap_ci(y, p, pid, mb.BOOTSTRAP_METRICS, seed=4, **args)
    assert a == b
    assert a["auc"] != c["auc"]
    point = m.evaluate(y, p, y_val=y_val, p_val=p_val)
    for name, (lo, hi) in a.items():
        assert lo < hi, name
        assert lo <= point[name] <= hi, (name, lo, point[name], hi)
    # Shuffling the bag order does not change the draw of patients.
    perm = np.random.default_rng(0).permutation(y.size)
    d = mb.bootstrap_ci(y[perm], p[perm], pid[perm], mb.BOOTSTRAP_METRICS, seed=3, **args)
    for name in a:
        assert d[name] == pytest.approx(a[name], abs=1e-12)


def test_bootstrap_clusters_by_patient():
    y_val, p_val, _ = _cohort(19)
    y, p, pid = _cohort(20)
    args = dict(y_val=y_val, p_val=p_val, n_boot=400, seed=0)
    metrics = {k: mb.BOOTSTRAP_METRICS[k] for k in ("auc", "brier")}
    base = mb.bootstrap_ci(y, p, pid, metrics, **args)
    # Every bag twice: resampling patients sees the same information, the same width.
    y2, p2, pid2 = np.tile(y, 2), np.tile(p, 2), np.tile(pid, 2)
    dup = mb.bootstrap_ci(y2, p2, pid2, metrics, **args)
    # Treating each bag as its own patient pretends to twice the data: narrower.
    naive = mb.bootstrap_ci(y2, p2, np.arange(y2.size), metrics, **args)
    for name in metrics:
        width = base[name][1] - base[name][0]
        assert dup[name] == pytest.approx(base[name], abs=1e-12)
        assert naive[name][1] - naive[name][0] < 0.85 * width, name


def test_per_resample_adapter_matches_vectorised_auc_and_skips_one_class_draws():
    y_val, p_val, _ = _cohort(21, n_patients=30)
    # Six patients, one of them positive: many resamples draw no positive bag.
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    p = np.linspace(0.9, 0.1, 12)
    p[3] = 0.95
    pid = np.repeat(np.arange(6), 2)
    fns = {
        "vec": mb.BOOTSTRAP_METRICS["auc"],
        "loop": mb.per_resample(lambda yy, pp, thr: m.roc_auc(yy, pp)),
    }
    ci = mb.bootstrap_ci(y, p, pid, fns, y_val=y_val, p_val=p_val, n_boot=200, seed=1)
    assert ci["vec"] == pytest.approx(ci["loop"], abs=1e-12)
    assert np.isfinite(ci["vec"]).all() and ci["vec"][0] < ci["vec"][1]


def test_bootstrap_refuses_mismatched_patient_ids():
    y, p, pid = _cohort(22, n_patients=10)
    with pytest.raises(ValueError, match="one entry per bag"):
        mb.bootstrap_ci(y, p, pid[:-1], mb.BOOTSTRAP_METRICS, y_val=y, p_val=p)


def test_exam_level_takes_the_highest_breast_of_each_exam():
    from milpf_jax.evaluation.metrics import Scores, exam_level

    bags = Scores(ids=np.array(["a", "b", "c", "d", "e"], dtype=object),
                  labels=np.array([0, 1, 0, 0, 0]), p=np.array([0.9, 0.2, 0.4, 0.1, 0.3]),
                  patients=np.array(["P1", "P1", "P1", "P2", "P2"], dtype=object),
                  exams=np.array(["E1", "E1", "E2", "E1", "E1"], dtype=object))
    exams = exam_level(bags)
    assert exams.ids.tolist() == ["P1/E1", "P1/E2", "P2/E1"]  # exams are (patient, exam)
    assert exams.labels.tolist() == [1, 0, 0]  # positive when any breast is
    np.testing.assert_allclose(exams.p, [0.9, 0.4, 0.3])  # the exam's highest breast
    assert exams.patients.tolist() == ["P1", "P1", "P2"]
    assert exams.exams.tolist() == ["E1", "E2", "E1"]
    # Bags that name no exam (a synthetic store, a version-1 predictions file): no exam level.
    assert exam_level(bags._replace(exams=np.array(["E1", "", "E2", "E1", "E1"]))) is None


def _second_head(p, seed, noise):
    """Another head's probabilities for the same bags: p's logit plus noise (correlated)."""
    logit = np.log(p / (1 - p)) + noise * np.random.default_rng(seed).normal(size=p.size)
    return 1.0 / (1.0 + np.exp(-logit))


def test_paired_bootstrap_values_symmetry_and_a_head_against_itself():
    y, p_a, pid = _cohort(30)
    y_val, pv_a, _ = _cohort(31)
    p_b, pv_b = _second_head(p_a, 0, 1.5), _second_head(pv_a, 1, 1.5)
    fns = {k: mb.BOOTSTRAP_METRICS[k] for k in ("auc", "bacc", "spec_at_sens90_valthr", "brier")}
    args = dict(n_boot=300, seed=2)
    ab = mb.paired_bootstrap(y, p_a, p_b, pid, fns, val_a=(y_val, pv_a), val_b=(y_val, pv_b),
                            **args)
    # Point values are each head's own metrics, thresholds from its own validation predictions.
    point_a = m.evaluate(y, p_a, y_val=y_val, p_val=pv_a)
    point_b = m.evaluate(y, p_b, y_val=y_val, p_val=pv_b)
    for k in fns:
        assert ab[k]["a"] == pytest.approx(point_a[k], abs=1e-12), k
        assert ab[k]["b"] == pytest.approx(point_b[k], abs=1e-12), k
        assert ab[k]["delta"] == pytest.approx(point_a[k] - point_b[k], abs=1e-12)
    assert ab["auc"]["delta"] == pytest.approx(roc_auc_score(y, p_a) - roc_auc_score(y, p_b))
    assert ab["auc"]["delta"] > 0.05  # the noisier head is worse...
    lo, hi = ab["auc"]["ci95"]
    assert 0 < lo < ab["auc"]["delta"] < hi  # ...clearly, on 150 patients
    assert ab["auc"]["p_value"] == pytest.approx(2 / 301)  # no resample reverses it
    # b - a: the same resamples, every difference negated.
    ba = mb.paired_bootstrap(y, p_b, p_a, pid, fns, val_a=(y_val, pv_b), val_b=(y_val, pv_a),
                            **args)
    for k in fns:
        assert ba[k]["delta"] == pytest.approx(-ab[k]["delta"], abs=1e-12)
        assert ba[k]["ci95"] == pytest.approx([-x for x in ab[k]["ci95"][::-1]], abs=1e-12)
        assert ba[k]["p_value"] == pytest.approx(ab[k]["p_value"])
    # A head against itself: no difference on any resample.
    aa = mb.paired_bootstrap(y, p_a, p_a, pid, fns, val_a=(y_val, pv_a), val_b=(y_val, pv_a),
                            **args)
    assert all(aa[k]["delta"] == 0 and aa[k]["ci95"] == [0, 0] and aa[k]["p_value"] == 1
               for k in fns)


def test_paired_interval_is_much_narrower_than_either_heads_own():
    # Two heads that agree closely: their own intervals overlap almost entirely, yet the paired
    # difference is measured precisely (that is why comparisons must be paired).
    y, p_a, pid = _cohort(32)
    y_val, pv_a, _ = _cohort(33)
    p_b = _second_head(p_a, 3, 0.3)
    auc = {"auc": mb.BOOTSTRAP_METRICS["auc"]}
    args = dict(n_boot=400, seed=0)
    own = mb.bootstrap_ci(y, p_a, pid, auc, y_val=y_val, p_val=pv_a, **args)["auc"]
    paired = mb.paired_bootstrap(y, p_a, p_b, pid, auc, val_a=(y_val, pv_a),
                                val_b=(y_val, pv_a), **args)["auc"]
    assert paired["ci95"][1] - paired["ci95"][0] < 0.4 * (own[1] - own[0])
    assert paired["ci95"][0] <= paired["delta"] <= paired["ci95"][1]
    with pytest.raises(ValueError, match="paired_bootstrap: patient_ids must have one entry"):
        mb.paired_bootstrap(y, p_a, p_b, pid[1:], auc, val_a=(y_val, pv_a), val_b=(y_val, pv_a))
    with pytest.raises(ValueError, match=r"paired_bootstrap \(b\)"):
        mb.paired_bootstrap(y, p_a, p_b[1:], pid, auc, val_a=(y_val, pv_a), val_b=(y_val, pv_a))


def test_holm_adjusts_in_place_order_and_keeps_nan():
    # Sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the running 0.06.
    out = mb.holm([0.04, 0.01, np.nan, 0.03])
    np.testing.assert_allclose(out, [0.06, 0.03, np.nan, 0.06])
    assert mb.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1
    assert mb.holm([0.02]).tolist() == [0.02]
