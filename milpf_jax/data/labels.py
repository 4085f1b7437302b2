"""Label mappings and patient-grouped splits, applied when a store is loaded.

A store keeps raw labels ("1", "4A", "M", ...) and the split a manifest gave. Mapping a raw
label to 0/1 and drawing the 70/10/20 split happen here, at load time, so a new mapping or a
new split seed costs seconds, not a re-extraction (DESIGN.md, "Embeddings store").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from milpf_jax.config import parse_k_of_n

SPLIT_NAMES = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2
TRAINVAL = 3  # given: a dataset's own training part; validation is drawn from it here
VAL_FRACTION = 0.1  # of all patients, in the 70/10/20 split and in every fold of a k-fold split
TRAINVAL_VAL_FRACTION = 1 / 8  # of a given trainval part's patients (70/10 of the paper's 80)

# Paper, section 3.1: "we use BI-RADS 1 as negative, and BI-RADS 4, 5 and 6 as positive";
# 0, 2 and 3 are left out of the task.
_BIRADS = {"1": 0, "4": 1, "4A": 1, "4B": 1, "4C": 1, "5": 1, "6": 1}
_BINARY = {"0": 0, "1": 1}
# mini-MIAS severity per image: N normal, B benign, M malignant.
_ABNORMAL = {"N": 0, "B": 1, "M": 1}
_MALIGNANT = {"N": 0, "M": 1}

MAPPINGS: dict[str, Mapping[str, int]] = {
    "none": {},  # unlabelled bags (new exams to score): every label -1, kept by load_packed
    "birads": _BIRADS,
    "binary": _BINARY,
    "abnormal": _ABNORMAL,
    "malignant": _MALIGNANT,
}
DEFAULT_MAPPING = {"birads": "birads", "binary": "binary", "mias": "abnormal", "none": "none"}


def resolve_mapping(name: str | None, label_kind: str) -> tuple[str, Mapping[str, int]]:
    """The mapping to use: `name` if given, else the default for the store's `label_kind`."""
    if name is None:
        if label_kind not in DEFAULT_MAPPING:
            raise ValueError(
                f"no default label mapping for label_kind {label_kind!r}; pass mapping= one of "
                f"{sorted(MAPPINGS)}"
            )
        name = DEFAULT_MAPPING[label_kind]
    if name not in MAPPINGS:
        raise ValueError(f"unknown label mapping {name!r}; valid: {sorted(MAPPINGS)}")
    return name, MAPPINGS[name]


def map_labels(raw_labels: Sequence[str], mapping: Mapping[str, int]) -> np.ndarray:
    """Map raw labels to 0/1; labels the mapping leaves out become -1. Returns int8 [B]."""
    norm = [str(r).strip().upper() for r in raw_labels]
    return np.array([mapping.get(r, -1) for r in norm], dtype=np.int8)


def excluded_counts(raw_labels: Sequence[str], mapped: np.ndarray) -> dict[str, int]:
    """How many bags each raw label lost to the mapping, e.g. {"2": 40, "3": 12}."""
    return dict(sorted(Counter(str(r) for r, m in zip(raw_labels, mapped) if m < 0).items()))


def _patient_strata(patient_ids: np.ndarray, raw_labels: np.ndarray) -> tuple[list, list]:
    """One stratum per patient: the sorted set of its raw labels (e.g. "1|4A")."""
    labels_of: dict[str, set] = {}
    for p, r in zip(patient_ids, raw_labels):
        labels_of.setdefault(str(p), set()).add(str(r))
    patients = sorted(labels_of)
    return patients, ["|".join(sorted(labels_of[p])) for p in patients]


def _split_patients(strata: list[str], seed: int, fractions: Sequence[float]) -> np.ndarray:
    """Assign patients to train/val/test, stratified by their raw-label set.

    Within each stratum the patients are shuffled (seeded) and cut by `fractions` using
    largest-remainder rounding accumulated across strata, so small strata do not all round
    into train and every raw label value is spread over the three splits proportionally.
    """
    rng = np.random.default_rng(seed)
    fractions = np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    split = np.full(len(strata), -1, dtype=np.int8)
    carry = np.zeros(len(fractions))
    by_stratum: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by_stratum.setdefault(s, []).append(i)
    for s in sorted(by_stratum):
        members = np.array(by_stratum[s])
        rng.shuffle(members)
        want = fractions * len(members) + carry
        counts = np.floor(want).astype(int)
        short = len(members) - counts.sum()
        order = np.argsort(-(want - counts), kind="stable")
        counts[order[:short]] += 1
        carry = want - counts
        split[members] = np.repeat(np.arange(len(fractions)), counts)
    return split


def make_splits(
    patient_ids: Sequence[str],
    raw_labels: Sequence[str],
    split_given: Sequence[int],
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> np.ndarray:
    """Split bags 70/10/20 by patient, stratified by raw label; a manifest's split wins.

    A manifest's `trainval` (a dataset's official training part, its test split kept) is cut
    here: TRAINVAL_VAL_FRACTION of its patients, stratified by raw label and drawn with `seed`,
    validate; the rest train.

    Args:
      patient_ids, raw_labels: [B] per bag.
      split_given: [B] int, 0/1/2 (or 3, trainval) where the manifest fixed the split, -1
        elsewhere.
      seed: the split seed; the same seed gives the same split.
    Returns:
      int8 [B] split codes (0 train, 1 val, 2 test). All bags of a patient share one split.
    """
    patient_ids = np.asarray(patient_ids, dtype=object)
    raw_labels = np.asarray(raw_labels, dtype=object)
    given = np.asarray(split_given, dtype=np.int8)
    fixed: dict[str, int] = {}
    for p, g in zip(patient_ids, given):
        if g < 0:
            continue
        if fixed.setdefault(str(p), int(g)) != g:
            names = (*SPLIT_NAMES, "trainval")
            raise ValueError(
                f"patient {p!r} has bags in two given splits "
                f"({names[fixed[str(p)]]} and {names[g]}): a patient must stay in one"
            )
    free = np.array([str(p) not in fixed for p in patient_ids])
    split = np.full(len(patient_ids), -1, dtype=np.int8)
    for i, p in enumerate(patient_ids):
        if not free[i]:
            split[i] = fixed[str(p)]
    if free.any():
        patients, strata = _patient_strata(patient_ids[free], raw_labels[free])
        assigned = dict(zip(patients, _split_patients(strata, seed, fractions)))
        split[free] = [assigned[str(p)] for p in patient_ids[free]]
    pooled = split == TRAINVAL
    if pooled.any():
        patients, strata = _patient_strata(patient_ids[pooled], raw_labels[pooled])
        share = (1.0 - TRAINVAL_VAL_FRACTION, TRAINVAL_VAL_FRACTION)
        inner = dict(zip(patients, _split_patients(strata, seed, share)))
        split[pooled] = [VAL if inner[str(p)] == 1 else TRAIN for p in patient_ids[pooled]]
    return split


def parse_fold(text: str) -> tuple[int, int]:
    """'k/n' -> (k, n): fold k (0-based) of an n-fold cross-validation, 0 <= k < n, n >= 3."""
    return parse_k_of_n(text, "fold", min_n=3, example="0/5")


def make_folds(
    patient_ids: Sequence[str],
    raw_labels: Sequence[str],
    split_given: Sequence[int],
    *,
    fold: int,
    n_folds: int,
    seed: int = 0,
) -> np.ndarray:
    """Fold `fold` of an n-fold patient-grouped cross-validation, stratified by raw label.

    Patients are dealt into n folds (the same for every `fold` of one seed); fold `fold` is the
    test split, and a validation split of VAL_FRACTION of all patients is drawn, stratified,
    from the others (seeded by seed and fold); the rest train. Over the n folds every patient
    is tested exactly once. With 5 folds: 70/10/20, as the default split.

    Returns:
      int8 [B] split codes (0 train, 1 val, 2 test).
    """
    parse_fold(f"{fold}/{n_folds}")
    if np.any(np.asarray(split_given) >= 0):
        raise ValueError("cross-validation assigns every split itself, but the manifest gives "
                         "splits: drop its split column (or use the given split without folds)")
    patient_ids = np.asarray(patient_ids, dtype=object)
    patients, strata = _patient_strata(patient_ids, np.asarray(raw_labels, dtype=object))
    dealt = _split_patients(strata, seed, np.full(n_folds, 1.0 / n_folds))  # [P] fold
    rest = np.flatnonzero(dealt != fold)
    val_share = VAL_FRACTION * n_folds / (n_folds - 1)  # of the patients outside the test fold
    inner = _split_patients([strata[i] for i in rest], seed * 1_000 + fold + 1,
                            (1.0 - val_share, val_share))
    code = np.full(len(patients), TEST, dtype=np.int8)
    code[rest] = np.where(inner == 1, VAL, TRAIN)
    by_patient = dict(zip(patients, code))
    return np.array([by_patient[str(p)] for p in patient_ids], dtype=np.int8)


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights N / (2 N_c) from the training labels (original code)."""
    labels = np.asarray(labels).astype(int)
    n = len(labels)
    counts = np.bincount(labels, minlength=2)
    if np.any(counts == 0):
        raise ValueError(f"the training split has {counts[0]} negative and {counts[1]} positive "
                         "bags: it needs both classes")
    return (n / (2.0 * counts))[labels].astype(np.float32)

