"""The tables a person reads: a run's results, repeated splits and folds, as text and Markdown.

Pure formatting of the dicts `milpf_jax.evaluation.results` computes; nothing is computed
here that results.json does not hold.
"""

from __future__ import annotations

import numpy as np

from milpf_jax.evaluation.metrics import TABLE_METRICS


def fmt_ci(entry) -> str:
    v, ci = entry["value"], entry.get("ci95")
    if ci is None or ci[0] is None or not np.isfinite(ci[0]):
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(results: dict) -> str:
    """Plain-text table: best-validation run (test, 95% CI) and mean +- std across runs."""
    b = results["best"]
    n = results["timing"]["runs"]
    rows = [f"{'metric':<24} {'best-val run (test, 95% CI)':<30} "
            f"{'all ' + str(n) + ' runs (test)':<18}"]
    for k in TABLE_METRICS:
        s = results["summary"][k]
        rows.append(f"{k:<24} {fmt_ci(b['test'][k]):<30} {s['mean']:.3f} ± {s['std']:.3f}")
    exam = b.get("test_exam")
    if exam:
        n_exams = results["data"]["exams"]["test"]["exams"]
        rows.append(f"{'auc, exam level':<24} {fmt_ci(exam['auc']):<30} "
                    f"(best-val run, {n_exams} test exams: max over breasts)")
    d = results["data"]
    head = results["head"]
    rows.insert(0, (f"head: global={head['global_pool']} local={head['local_pool']}  "
                    f"bags train/val/test = {d['bags']['train']}/{d['bags']['val']}/"
                    f"{d['bags']['test']}  best run: seed {b['seed']}, lr {b['lr']:g}, "
                    f"wd {b['weight_decay']:g}, epoch {b['best_epoch']}, "
                    f"val AUC {b['val']['auc']:.3f}"))
    return "\n".join(rows)


def format_markdown(results: dict) -> str:
    b = results["best"]
    lines = [
        "# MIL-PF sweep results",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Store: `{results['store']}` (encoder {results['store_attrs'].get('encoder')}, "
        f"cohort {results.get('cohort') or results['store_attrs'].get('cohort')}); mapping "
        f"{results['data']['mapping']}, "
        f"split seed {results['data']['split_seed']}"
        + (f", fold {results['data']['fold']}" if results["data"].get("fold") else "")
        + f"; bags {results['data']['bags']}, "
        f"positives {results['data']['positives']}.",
        "",
        f"Best validation run: seed {b['seed']}, lr {b['lr']:g}, weight decay "
        f"{b['weight_decay']:g}, epoch {b['best_epoch']}, validation AUC {b['val']['auc']:.4f}.",
        "",
        f"| metric | best-val run, test [95% CI] | mean ± std over {results['timing']['runs']} "
        "runs, test |",
        "|---|---|---|",
    ]
    for k in TABLE_METRICS + ("bacc_oracle",):
        s = results["summary"][k]
        lines.append(f"| {k} | {fmt_ci(b['test'][k])} | {s['mean']:.3f} ± {s['std']:.3f} |")
    exam = b.get("test_exam")
    if exam:
        n_exams = results["data"]["exams"]["test"]["exams"]
        lines += ["", f"Exam level (best-val run, {n_exams} test exams; an exam is positive when "
                  "any of its breasts is, scored by its highest breast probability; thresholds "
                  "on validation exams):", "", "| metric | test [95% CI] |", "|---|---|"]
        lines += [f"| {k} | {fmt_ci(exam[k])} |" for k in TABLE_METRICS]
    rel = b.get("test_reliability")
    if rel:
        lines += ["", "Calibration (best-val run, test bags; `brier` above):", "",
                  "| predicted probability | bags | mean predicted | observed positive |",
                  "|---|---|---|---|"]
        edges = rel["bin_edges"]
        for i, n in enumerate(rel["counts"]):
            if n:
                lines.append(f"| {'[(' [i > 0]}{edges[i]:.1f}, {edges[i + 1]:.1f}] | {n} | "
                             f"{rel['mean_predicted'][i]:.3f} | "
                             f"{rel['observed_fraction'][i]:.3f} |")
    t = results["timing"]
    lines += ["", f"Timing: compile {t['compile_seconds']:.1f} s, training "
              f"{t['train_seconds']:.1f} s ({t['epochs_run']} epochs, {t['runs']} runs in one "
              "program).", "", "Metric definitions:", ""]
    lines += [f"- `{k}`: {v}" for k, v in results["metric_definitions"].items()]
    return "\n".join(lines) + "\n"


_SHORT_NAMES = {"auc": "AUC", "bacc": "bACC", "spec_at_sens90_roc": "Sp@Se90 ROC",
                "spec_at_sens90_valthr": "Sp@Se90 val", "sens_at_spec90_roc": "Se@Sp90 ROC",
                "brier": "Brier", "exam_auc": "exam AUC"}


def format_splits(summary: dict) -> str:
    """Plain-text table of `summarize_splits`: one row per split (best-validation run, test
    metrics), then mean +- std across splits."""
    keys = list(TABLE_METRICS) + (["exam_auc"] if "exam_auc" in summary["summary"] else [])
    key = summary.get("key", "split_seed")
    rows = [f"{key.replace('_', ' '):>10} {'test bags':>9} {'val AUC':>8} "
            + " ".join(f"{_SHORT_NAMES[k]:>12}" for k in keys)]
    for r in summary["splits"]:
        values = [r["test"][k] for k in TABLE_METRICS] + (
            [r["test_exam_auc"]] if "exam_auc" in keys else [])
        rows.append(f"{r[key]:>10} {r['test_bags']:>9} {r['val_auc']:>8.3f} "
                    + " ".join(f"{v:>12.3f}" for v in values))
    s = summary["summary"]
    rows.append(f"{'mean ± std':>10} {'':>9} {'':>8} "
                + " ".join(f"{s[k]['mean']:.3f}±{s[k]['std']:.3f}".rjust(12) for k in keys))
    for name, entry in (summary.get("pooled") or {}).items():
        rows.append(f"pooled out-of-fold {name}: {fmt_ci(entry)} over {entry['n']} "
                    f"{'exams' if 'exam' in name else 'bags'}")
    return "\n".join(rows)

