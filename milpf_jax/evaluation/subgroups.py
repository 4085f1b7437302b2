"""Test AUC by subgroup: breast density, vendor, age band, lesion type, any manifest column.

A column of the cohort's manifest gives each bag a value (`reading.manifest.bag_values`): the one
its images share, or "mixed" when they differ. Two readings, chosen by the data:

- within: the AUC of each value's own positive and negative test bags (density, vendor, ...);
- against all negatives: when the negative test bags carry no value at all (a finding column,
  e.g. the phantom's `lesion_kinds`), the AUC of each value's positive bags against every
  negative test bag.

The scores are the run's best-validation head's (predictions.csv); intervals come from the
patient bootstrap of the whole report (`bootstrap.bootstrap_ci`), restricted to the subgroup.
"""

from __future__ import annotations

import numpy as np

from milpf_jax.evaluation import metrics
from milpf_jax.evaluation.bootstrap import BOOTSTRAP_METRICS, bootstrap_ci
from milpf_jax.evaluation.runs import prediction_arrays, read_predictions, read_split_predictions

NONE = ""  # the column is empty for the bag's images (reading.manifest.bag_values)


def subgroup_aucs(run_dir, values: dict[str, str], *, column: str = "", n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """The best run's test AUC in each subgroup of `values` (bag_id -> value), with 95% CIs.

    Returns a JSON-ready dict: column, reading ("within" or "against all negatives"), the test
    bags the manifest did not know, and per value: bags, positives, negatives, auc, ci95 (None
    where the subgroup lacks a class).
    """
    rows = [r for r in read_predictions(run_dir).values() if r["split"] == "test"]
    known = [r for r in rows if r["bag_id"] in values]
    if not known:
        raise ValueError(f"{run_dir}: none of its {len(rows)} test bags is in the manifest "
                         "given (another cohort, or other bag ids?)")
    ids, y, p, patients, _ = prediction_arrays(known)
    value = np.array([values[b] for b in ids], dtype=object)
    val = read_split_predictions(run_dir, "val")
    y_val, p_val = val.labels, val.p
    against_negatives = bool((y == 0).any() and (value[y == 0] == NONE).all())
    groups = []
    for v in sorted(set(value[y == 1]) if against_negatives else set(value)):
        member = (((value == v) & (y == 1)) | (y == 0)) if against_negatives else value == v
        yy, pp = y[member], p[member]
        entry = dict(value=v, bags=int(member.sum()), positives=int(yy.sum()),
                     negatives=int((yy == 0).sum()), auc=None, ci95=None)
        if 0 < yy.sum() < yy.size:
            entry["auc"] = metrics.roc_auc(yy, pp)
            if n_boot:
                ci = bootstrap_ci(yy, pp, patients[member], {"auc": BOOTSTRAP_METRICS["auc"]},
                                  y_val=y_val, p_val=p_val, n_boot=n_boot, seed=seed)
                entry["ci95"] = list(ci["auc"])
        groups.append(entry)
    return dict(column=column, run=str(run_dir),
                reading="against all negatives" if against_negatives else "within",
                test_bags=len(rows), not_in_manifest=len(rows) - len(known), groups=groups)


def format_subgroups(result: dict) -> str:
    """A Markdown table of one column's subgroups."""
    vs = result["reading"] == "against all negatives"
    lines = [f"Test AUC by `{result['column']}` ("
             + ("each value's positive bags against all negative test bags" if vs else
                "each value's own positive and negative test bags")
             + "; best-validation run; 95% patient-bootstrap CI):", "",
             "| value | bags | positives | negatives | AUC [95% CI] |", "|---|---|---|---|---|"]
    for g in result["groups"]:
        auc = "n/a (one class)" if g["auc"] is None else f"{g['auc']:.3f}" + (
            f" [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]" if g["ci95"] else "")
        lines.append(f"| {g['value'] or '(empty)'} | {g['bags']} | {g['positives']} | "
                     f"{g['negatives']} | {auc} |")
    if result["not_in_manifest"]:
        lines.append(f"\n{result['not_in_manifest']} of {result['test_bags']} test bags are not "
                     "in the manifest and are left out.")
    return "\n".join(lines)
