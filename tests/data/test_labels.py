import numpy as np
import pytest

from milpf_jax.data import labels


def test_birads_mapping_follows_the_paper():
    raw = ["1", "2", "3", "4", "4a", "4B", "4C", "5", "6", "0"]
    mapped = labels.map_labels(raw, labels.MAPPINGS["birads"])
    assert mapped.tolist() == [0, -1, -1, 1, 1, 1, 1, 1, 1, -1]
    assert labels.excluded_counts(raw, mapped) == {"0": 1, "2": 1, "3": 1}


def test_default_mapping_per_label_kind_and_unknown_names():
    assert labels.resolve_mapping(None, "birads")[0] == "birads"
    assert labels.resolve_mapping(None, "mias")[0] == "abnormal"
    assert labels.map_labels(["N", "B", "M"], labels.MAPPINGS["malignant"]).tolist() == [0, -1, 1]
    with pytest.raises(ValueError, match="unknown label mapping 'nope'"):
        labels.resolve_mapping("nope", "birads")
    with pytest.raises(ValueError, match="no default label mapping"):
        labels.resolve_mapping(None, "custom")


def _cohort(n_patients=300, seed=0):
    rng = np.random.default_rng(seed)
    pats, raws = [], []
    for p in range(n_patients):
        r = rng.choice(["1", "2", "4", "5"], p=[0.6, 0.2, 0.15, 0.05])
        for _ in range(rng.integers(1, 4)):
            pats.append(f"P{p}")
            raws.append(str(r))
    return np.array(pats), np.array(raws)


def test_splits_group_patients_stratify_labels_and_are_deterministic():
    pats, raws = _cohort()
    split = labels.make_splits(pats, raws, np.full(len(pats), -1), seed=3)
    for p in np.unique(pats):
        assert len(set(split[pats == p].tolist())) == 1, p
    # Per raw label, the patient fractions are 70/10/20 within rounding.
    for r in np.unique(raws):
        ps = np.unique(pats[raws == r])
        first = {p: split[np.flatnonzero(pats == p)[0]] for p in ps}
        frac = np.bincount(list(first.values()), minlength=3) / len(ps)
        np.testing.assert_allclose(frac, [0.7, 0.1, 0.2], atol=1.5 / len(ps) + 0.01)
    again = labels.make_splits(pats, raws, np.full(len(pats), -1), seed=3)
    other = labels.make_splits(pats, raws, np.full(len(pats), -1), seed=4)
    assert np.array_equal(split, again)
    assert not np.array_equal(split, other)


def test_given_split_wins_and_contradictions_are_refused():
    pats = np.array(["A", "A", "B", "C", "C"])
    raws = np.array(["1", "4", "1", "1", "5"])
    given = np.array([2, -1, 1, -1, -1])
    split = labels.make_splits(pats, raws, given, seed=0)
    assert split[0] == split[1] == 2 and split[2] == 1
    with pytest.raises(ValueError, match="patient 'A' has bags in two given splits"):
        labels.make_splits(pats, raws, np.array([2, 0, -1, -1, -1]))


def test_folds_test_every_patient_once_keep_patients_whole_and_stratify():
    pats, raws = _cohort()
    free = np.full(len(pats), -1)
    folds = [labels.make_folds(pats, raws, free, fold=k, n_folds=5, seed=3) for k in range(5)]
    tested = np.sum([f == labels.TEST for f in folds], axis=0)
    assert (tested == 1).all()  # every bag is in exactly one test fold
    for f in folds:
        for p in np.unique(pats):
            assert len(set(f[pats == p].tolist())) == 1, p
        # Per raw label, 70/10/20 of the patients within rounding (as the default split).
        for r in np.unique(raws):
            ps = np.unique(pats[raws == r])
            first = [f[np.flatnonzero(pats == p)[0]] for p in ps]
            frac = np.bincount(first, minlength=3) / len(ps)
            np.testing.assert_allclose(frac, [0.7, 0.1, 0.2], atol=1.5 / len(ps) + 0.02)
    again = labels.make_folds(pats, raws, free, fold=2, n_folds=5, seed=3)
    other = labels.make_folds(pats, raws, free, fold=2, n_folds=5, seed=4)
    assert np.array_equal(folds[2], again) and not np.array_equal(folds[2], other)
    with pytest.raises(ValueError, match="manifest gives splits"):
        labels.make_folds(pats, raws, np.where(np.arange(len(pats)) == 0, 2, -1), fold=0,
                          n_folds=5)
    for bad in ("5/5", "-1/5", "0/2", "a/b", "3"):
        with pytest.raises(ValueError, match="expected k/n"):
            labels.parse_fold(bad)
    assert labels.parse_fold("4/10") == (4, 10)


def test_trainval_is_cut_into_train_and_val_and_the_given_test_is_kept():
    from milpf_jax.data.labels import TRAINVAL

    n = 400  # patients 0..319 in the official training part, 320..399 its test
    patients = [f"P{i:03d}" for i in range(n) for _ in range(2)]  # two bags per patient
    raw = [("1" if i % 5 else "4") for i in range(n) for _ in range(2)]
    given = [(TRAINVAL if i < 320 else 2) for i in range(n) for _ in range(2)]
    splits = labels.make_splits(patients, raw, given, seed=3)
    by_patient = {}
    for p, s in zip(patients, splits):
        by_patient.setdefault(p, set()).add(int(s))
    assert all(len(s) == 1 for s in by_patient.values())  # patients stay whole
    codes = {p: s.pop() for p, s in by_patient.items()}
    assert all(codes[f"P{i:03d}"] == 2 for i in range(320, n))  # the given test is kept
    inner = [codes[f"P{i:03d}"] for i in range(320)]
    assert set(inner) == {0, 1} and inner.count(1) == 40  # 1/8 of the 320 validate
    positives_val = sum(1 for i in range(320) if codes[f"P{i:03d}"] == 1 and i % 5 == 0)
    assert positives_val == 8  # stratified: 1/8 of the 64 positive patients
    assert (labels.make_splits(patients, raw, given, seed=3) == splits).all()
    assert (labels.make_splits(patients, raw, given, seed=4) != splits).any()
