"""Paired comparison of finished runs on one test set: is head or encoder A better than B?

Runs made on the same cohort with the same split seed and label mapping score the same test
bags (stores of one cohort made with different encoders included). Each run's best-validation
head is compared with the reference run's on the test bags both scored, by the paired patient
bootstrap of `milpf_jax.evaluation.bootstrap.paired_bootstrap`: the difference of each metric
with its 95% interval
and a two-sided p-value, Holm-adjusted over the comparisons. Thresholds stay each run's own,
fixed on its validation split. Reads only the runs' `predictions.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milpf_jax.evaluation.bootstrap import BOOTSTRAP_METRICS, holm, paired_bootstrap
from milpf_jax.evaluation.metrics import EXAM_METRICS, TABLE_METRICS, Scores
from milpf_jax.evaluation.results import exams_of
from milpf_jax.evaluation.runs import check_task, prediction_arrays, read_predictions
from milpf_jax.files import write_json, write_text

COMPARISON_FORMAT_VERSION = 1
METHOD = (
    "best-validation run of each folder; differences run minus reference on the test bags both "
    "scored; 95% percentile intervals and two-sided p-values from a paired bootstrap over "
    "patients (both heads scored on each resample, each with its own validation thresholds); "
    "p_holm: Holm-adjusted over the comparisons, per metric"
)


@dataclass(frozen=True)
class RunPredictions:
    """The best-validation head's predictions of one run, by bag."""

    name: str
    rows: dict[str, dict]  # bag_id -> predictions.csv row

    @classmethod
    def read(cls, run_dir, name: str | None = None) -> RunPredictions:
        return cls(name or Path(run_dir).name, read_predictions(run_dir))

    def split(self, name: str, bags=None) -> Scores:
        """The Scores of a split's bags, in the order of `bags`."""
        bags = [b for b, r in self.rows.items() if r["split"] == name] if bags is None else bags
        return prediction_arrays([self.rows[b] for b in bags])


def _check_same_bags(ref: RunPredictions, other: RunPredictions) -> None:
    """The bags both runs scored must agree on patient, split and label: otherwise they were
    not made on one split (or label mapping), and a paired comparison means nothing."""
    for bag in ref.rows.keys() & other.rows.keys():
        a, b = ref.rows[bag], other.rows[bag]
        for field in ("patient_id", "split", "label"):
            if a[field] != b[field]:
                raise ValueError(
                    f"runs {ref.name} and {other.name} disagree on the {field} of bag {bag} "
                    f"({a[field]!r} vs {b[field]!r}): a paired comparison needs runs made with "
                    "the same --split-seed and --mapping on one cohort")


def _paired(ref: RunPredictions, other: RunPredictions, *, n_boot: int, seed: int) -> dict:
    _check_same_bags(ref, other)
    test_ref, test_other = ref.split("test").ids, other.split("test").ids
    common = sorted(set(test_ref) & set(test_other))
    if not common:
        raise ValueError(f"runs {ref.name} and {other.name} share no test bag")
    t_ref, t_other = ref.split("test", common), other.split("test", common)
    y, patients = t_ref.labels, t_ref.patients
    if len(np.unique(y)) < 2:
        raise ValueError(f"the {len(common)} test bags runs {ref.name} and {other.name} share "
                         "hold one class only: no AUC to compare")
    val_ref, val_other = ref.split("val"), other.split("val")
    fns = {k: BOOTSTRAP_METRICS[k] for k in TABLE_METRICS}
    bag_level = paired_bootstrap(
        y, t_other.p, t_ref.p, patients, fns, val_a=(val_other.labels, val_other.p),
        val_b=(val_ref.labels, val_ref.p), n_boot=n_boot, seed=seed)
    out = dict(run=other.name, reference=ref.name, test_bags=len(common),
               positives=int(y.sum()), patients=len(set(patients)),
               only_in_reference=len(set(test_ref) - set(common)),
               only_in_run=len(set(test_other) - set(common)), metrics=bag_level, exam=None)
    exams = exams_of(t_other, t_ref, val_other, val_ref)
    if exams is not None:
        e_other, e_ref, e_val_other, e_val_ref = exams
        out["exam"] = dict(test_exams=len(e_ref.labels), metrics=paired_bootstrap(
            e_ref.labels, e_other.p, e_ref.p, e_ref.patients,
            {k: BOOTSTRAP_METRICS[k] for k in EXAM_METRICS},
            val_a=(e_val_other.labels, e_val_other.p), val_b=(e_val_ref.labels, e_val_ref.p),
            n_boot=n_boot, seed=seed))
    return out


def _short_names(run_dirs: list[Path]) -> list[str]:
    """Each folder's name, with as many parent folders as it takes to tell them apart
    (`fold-0` of two cross-validations: `cv-a/fold-0`, `cv-b/fold-0`)."""
    for depth in range(1, max(len(d.resolve().parts) for d in run_dirs) + 1):
        names = ["/".join(d.resolve().parts[-depth:]) for d in run_dirs]
        if len(set(names)) == len(names):
            return names
    raise ValueError(f"compare_runs: a run folder is given twice: {[str(d) for d in run_dirs]}")


def compare_runs(run_dirs, *, task: str | None = None, n_boot: int = 1000, seed: int = 0,
                 command: str = "") -> dict:
    """Each run against the first (the reference), paired on their common test bags.

    Args:
      run_dirs: finished sweep folders (each with predictions.csv); the first is the reference.
      task: the task every run must have been trained on (None: they must share one).
      n_boot: patient-bootstrap resamples; seed: their numpy seed.

    Returns:
      A JSON-ready dict: per comparison, each metric's reference and run values, the
      difference (run − reference) with its 95% interval, p-value and Holm-adjusted p-value.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise ValueError("compare_runs: give at least two run folders (the first is the "
                         "reference)")
    names = _short_names(run_dirs)
    if n_boot < 1:
        raise ValueError(f"compare_runs: n_boot must be >= 1, got {n_boot}")
    tasks = {str(d): check_task(d, task) for d in run_dirs if (d / "results.json").is_file()}
    if len({t for t in tasks.values() if t is not None}) > 1:
        raise ValueError(f"compare_runs: the runs were trained on different tasks ({tasks}): "
                         "a paired comparison needs one task")
    runs = [RunPredictions.read(d, name) for d, name in zip(run_dirs, names, strict=True)]
    comparisons = [_paired(runs[0], r, n_boot=n_boot, seed=seed) for r in runs[1:]]
    for level in ("metrics", "exam"):
        tables = [c[level] if level == "metrics" else (c["exam"] or {}).get("metrics")
                  for c in comparisons]
        for name in {k for t in tables if t for k in t}:
            present = [t for t in tables if t and name in t]
            adjusted = holm([t[name]["p_value"] for t in present])
            for t, p in zip(present, adjusted, strict=True):
                t[name]["p_holm"] = float(p)
    return dict(format_version=COMPARISON_FORMAT_VERSION, command=command, method=METHOD,
                reference=names[0], runs=[str(d) for d in run_dirs], n_boot=n_boot, seed=seed,
                comparisons=comparisons)


def _delta(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _p(entry: dict) -> str:
    return f"{entry['p_value']:.3g} ({entry['p_holm']:.3g})"


def format_comparison(result: dict) -> str:
    """A Markdown table: each run's test AUC beside the reference's, the differences of AUC,
    bACC and Spec@Sens0.9 (validation threshold) with 95% intervals, p (Holm-adjusted)."""
    comps = result["comparisons"]
    exam = all(c["exam"] for c in comps)
    ref = comps[0]["metrics"]["auc"]["b"]
    head = ["run", "test bags", "AUC", "Δ AUC [95% CI]", "p (Holm)", "Δ bACC [95% CI]",
            "Δ Spec@Sens0.9, val thr"] + (["Δ exam AUC [95% CI]", "p (Holm)"] if exam else [])
    lines = [f"Reference: {result['reference']} (test AUC {ref:.3f}); differences are run − "
             "reference.", "", f"Method: {result['method']}; {result['n_boot']} resamples.", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for c in comps:
        m = c["metrics"]
        cells = [c["run"], str(c["test_bags"]), f"{m['auc']['a']:.3f}", _delta(m["auc"]),
                 _p(m["auc"]), _delta(m["bacc"]), _delta(m["spec_at_sens90_valthr"])]
        if exam:
            cells += [_delta(c["exam"]["metrics"]["auc"]), _p(c["exam"]["metrics"]["auc"])]
        lines.append("| " + " | ".join(cells) + " |")
    dropped = [c for c in comps if c["only_in_reference"] or c["only_in_run"]]
    lines += [f"\n{c['run']}: {c['only_in_reference']} test bags only in the reference and "
              f"{c['only_in_run']} only in the run are left out of its comparison"
              for c in dropped]
    return "\n".join(lines)


def write_comparison(out_dir, result: dict) -> Path:
    """OUT/comparison.json, OUT/comparison.md (the table, with the command that made it), and
    the forest plot OUT/figures/comparison.png with OUT/report.html."""
    from milpf_jax.evaluation.report import write_comparison_pictures

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "comparison.json", result)
    text = format_comparison(result)
    if result.get("command"):
        text = f"{text}\n\nMade by: `{result['command']}`"
    write_text(out_dir / "comparison.md", text + "\n")
    write_comparison_pictures(out_dir, result)
    return out_dir
