"""The figures a researcher looks at: ROC with its band, runs, training curves, calibration,
folds, comparisons and subgroups (matplotlib, Agg; PNG and SVG).

Every `*_figure` function takes numbers (arrays, or the dicts results.json, folds.json,
comparison.json and subgroups.json hold) and returns a `matplotlib.figure.Figure` built without
pyplot, so nothing depends on a display or a global backend; `save_figure` writes it as
`<name>.png` and `<name>.svg`, each atomically. `run_figures` makes every figure of a finished
run folder from its files.

    fig = roc_figure(y, p, patients, thresholds={"bacc": 0.41, "sens90": 0.22}, n_boot=1000)
    save_figure(fig, "runs/x/figures", "roc")     # runs/x/figures/roc.png, roc.svg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from milpf_jax.evaluation import bootstrap, metrics
from milpf_jax.files import atomic_open

FPR_GRID = np.linspace(0.0, 1.0, 101)  # the band's false-positive rates
DPI = 110
SELECTED = "#d62728"  # the best-validation run, in every figure
OTHERS = "#7f7f7f"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig, out_dir, name: str) -> list[Path]:
    """`out_dir/<name>.png` and `.svg`, each written to a temporary name and renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "svg"):
        path = out / f"{name}.{fmt}"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=fmt, metadata={"Software": None} if fmt == "png" else
                        {"Creator": None, "Date": None})
        paths.append(path)
    return paths


# -- ROC ---------------------------------------------------------------------------------------


def roc_band(y, p, patient_ids, *, n_boot: int, seed: int = 0, level: float = 0.95,
             grid=FPR_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of the TPR at each FPR of `grid`, over the patient-bootstrap
    resamples of `bootstrap.bootstrap_ci` (same n_boot and seed: the AUC interval's resamples).

    Each resample's ROC is interpolated linearly at the grid; resamples lacking a class are left
    out. Returns (lo [G], hi [G]); NaNs where no resample has both classes.
    """
    y, p = metrics.as_binary_pair(y, p, "roc_band")
    curves = []
    for w in bootstrap.patient_resamples(patient_ids, n_boot, seed):
        fpr, tpr = bootstrap.weighted_roc(y, p, w)  # [R, U + 1]
        for f, t in zip(fpr, tpr):
            if np.isfinite(f).all() and np.isfinite(t).all():
                curves.append(np.interp(grid, f, t))
    if not curves:
        return np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    tail = 0.5 * (1.0 - level)
    lo, hi = np.quantile(np.stack(curves), [tail, 1.0 - tail], axis=0)  # [G] each
    return lo, hi


def operating_point(y, p, threshold: float) -> tuple[float, float]:
    """(FPR, TPR) of calling `p >= threshold` positive."""
    y, p = metrics.as_binary_pair(y, p, "operating_point")
    return float(np.mean(p[y == 0] >= threshold)), float(np.mean(p[y == 1] >= threshold))


THRESHOLD_NAMES = {
    "bacc": "validation threshold, max bACC",
    "sens90": "validation threshold, sens 0.9",
}


def roc_figure(y, p, patient_ids, *, thresholds: dict, n_boot: int, seed: int = 0,
               title: str = "Test ROC, best-validation run", unit: str = "bags"):
    """The ROC of one head on one split with its 95% band and the validation operating points.

    thresholds: {"bacc": t, "sens90": t} (results.json's best.test.threshold and
    threshold_sens90); n_boot = 0 draws no band. Line gids: "roc", "band-lo", "band-hi",
    "point-bacc", "point-sens90".
    """
    from sklearn.metrics import RocCurveDisplay

    y, p = metrics.as_binary_pair(y, p, "roc_figure")
    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    disp = RocCurveDisplay.from_predictions(y, p, drop_intermediate=False, ax=ax,
                                            name="ROC")
    disp.line_.set(gid="roc", color=SELECTED)
    if n_boot:
        lo, hi = roc_band(y, p, patient_ids, n_boot=n_boot, seed=seed)
        ax.fill_between(FPR_GRID, lo, hi, color=SELECTED, alpha=0.18, linewidth=0,
                        label="95% band (patient bootstrap)")
        for gid, band in (("band-lo", lo), ("band-hi", hi)):
            ax.plot(FPR_GRID, band, color=SELECTED, linewidth=0.5, alpha=0.6, gid=gid)
    for (name, thr), marker in zip(thresholds.items(), ("o", "s")):
        if thr is None:
            continue
        fpr, tpr = operating_point(y, p, thr)
        ax.plot([fpr], [tpr], marker, color="black", markerfacecolor="white", markersize=8,
                gid=f"point-{name}", label=f"{THRESHOLD_NAMES.get(name, name)} ({thr:.3f}): "
                                           f"sens {tpr:.2f}, spec {1 - fpr:.2f}")
    ax.plot([0, 1], [0, 1], ":", color=OTHERS, linewidth=0.8)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="false positive rate (1 − specificity)",
           ylabel="true positive rate (sensitivity)",
           title=f"{title}\n{int(np.sum(y))} positive, {int(np.sum(y == 0))} negative {unit}")
    ax.legend(loc="lower right", fontsize=7.5)
    return fig


# -- runs, curves, calibration ----------------------------------------------------------------


def test_rank(test_auc, best: int) -> int:
    """1 + the number of runs whose test AUC is strictly above the selected run's."""
    test_auc = np.asarray(test_auc, np.float64)
    return 1 + int(np.sum(test_auc > test_auc[best]))


def runs_figure(val_auc, test_auc, best: int):
    """Test AUC against validation AUC for every run, the selected run marked, and where its
    test AUC ranks among all runs (is selecting on validation near the best test run?).
    Collection gids: "runs", "selected"."""
    val_auc, test_auc = np.asarray(val_auc, np.float64), np.asarray(test_auc, np.float64)
    fig = _figure(5.2, 4.6)
    ax = fig.add_subplot()
    ax.scatter(val_auc, test_auc, s=22, color=OTHERS, alpha=0.7, gid="runs",
               label=f"{len(val_auc)} runs")
    rank = test_rank(test_auc, best)
    ax.scatter([val_auc[best]], [test_auc[best]], s=90, marker="*", color=SELECTED, zorder=3,
               gid="selected", label=f"selected on validation: test AUC {test_auc[best]:.3f},"
                                     f" rank {rank} of {len(test_auc)}")
    ax.set(xlabel="validation AUC (selection)", ylabel="test AUC",
           title="Every run of the grid: validation against test")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def curves_figure(loss, val_auc, active, best: int):
    """Validation AUC and training loss per epoch of every run; a run's line ends where it
    stopped (x: its last epoch), the selected run in colour. loss, val_auc, active: [R, E]
    (history.npz). Line gids: "val-<r>", "loss-<r>", "stop-<r>"."""
    loss, val_auc = np.asarray(loss, np.float64), np.asarray(val_auc, np.float64)
    active = np.asarray(active, bool)
    epochs = np.arange(1, loss.shape[1] + 1)
    fig = _figure(9.0, 3.8)
    ax_auc, ax_loss = fig.subplots(1, 2)
    order = [r for r in range(len(loss)) if r != best] + [best]  # the selected run on top
    for r in order:
        style = dict(color=SELECTED, linewidth=1.6, zorder=3) if r == best else dict(
            color=OTHERS, linewidth=0.6, alpha=0.5)
        for ax, values, name in ((ax_auc, val_auc, "val"), (ax_loss, loss, "loss")):
            ax.plot(epochs, np.where(active[r], values[r], np.nan), gid=f"{name}-{r}", **style)
        last = np.flatnonzero(active[r])
        if last.size:
            e = last[-1]
            ax_auc.plot([epochs[e]], [val_auc[r, e]], "x", color=style["color"], markersize=4,
                        gid=f"stop-{r}")
    ax_auc.plot([], [], color=SELECTED, label=f"selected run ({best})")
    ax_auc.plot([], [], "x", color=OTHERS, label="last epoch (stopped)")
    ax_auc.set(xlabel="epoch", ylabel="validation AUC", title="Validation AUC per epoch")
    ax_loss.set(xlabel="epoch", ylabel="training loss (weighted BCE)",
                title="Training loss per epoch")
    ax_auc.legend(loc="lower right", fontsize=8)
    for ax in (ax_auc, ax_loss):
        ax.grid(alpha=0.3)
    return fig


def reliability_figure(curve: dict, brier: float):
    """The reliability diagram of results.json's best.test_reliability (empty bins left out),
    through scikit-learn's CalibrationDisplay, with the Brier score. Line gid: "reliability"."""
    from sklearn.calibration import CalibrationDisplay

    pred = np.array([np.nan if v is None else v for v in curve["mean_predicted"]], np.float64)
    frac = np.array([np.nan if v is None else v for v in curve["observed_fraction"]], np.float64)
    keep = np.asarray(curve["counts"]) > 0
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    disp = CalibrationDisplay(frac[keep], pred[keep], pred[keep],
                              estimator_name=f"best run, Brier {brier:.3f}")
    disp.plot(ax=ax)
    disp.line_.set(gid="reliability", color=SELECTED)
    for x, yv, n in zip(pred[keep], frac[keep], np.asarray(curve["counts"])[keep]):
        ax.annotate(str(int(n)), (x, yv), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color=OTHERS)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", title="Test calibration (bags per bin)")
    return fig


# -- several splits, comparisons, subgroups ---------------------------------------------------


def _interval_rows(ax, names, values, cis, *, colors=None, gid="values"):
    """Horizontal intervals, one row per name (top to bottom); NaN-free CIs only drawn."""
    ypos = np.arange(len(names))[::-1]
    values = np.asarray(values, np.float64)
    lo = np.array([c[0] if c else np.nan for c in cis], np.float64)
    hi = np.array([c[1] if c else np.nan for c in cis], np.float64)
    err = np.vstack([values - lo, hi - values])
    ax.errorbar(values, ypos, xerr=np.where(np.isfinite(err), err, 0), fmt="none",
                ecolor="black", elinewidth=1, capsize=3)
    ax.scatter(values, ypos, c=colors or "black", s=30, zorder=3, gid=gid)
    ax.set_yticks(ypos, names)
    ax.grid(axis="x", alpha=0.3)
    return ypos


def folds_figure(names, values, cis, *, pooled: dict | None = None, mean: float | None = None,
                 metric: str = "test AUC", title: str = "Per split"):
    """One row per fold or split (its value with the 95% interval), and the pooled value (a
    cross-validation's out-of-fold AUC) or the mean. Collection gid: "values"."""
    names, values, cis = list(names), list(values), list(cis)
    colors = ["black"] * len(names)
    if pooled is not None:
        names.append("pooled out-of-fold")
        values.append(pooled["value"])
        cis.append(pooled.get("ci95"))
        colors.append(SELECTED)
    fig = _figure(6.0, 1.2 + 0.35 * len(names))
    ax = fig.add_subplot()
    _interval_rows(ax, names, values, cis, colors=colors)
    if mean is not None:
        ax.axvline(mean, color=SELECTED, linestyle="--", linewidth=1,
                   label=f"mean {mean:.3f}")
        ax.legend(loc="lower left", fontsize=8)
    ax.set(xlabel=f"{metric} (95% CI)", title=title)
    return fig


COMPARED = (("auc", "Δ AUC"), ("bacc", "Δ bACC"), ("spec_at_sens90_valthr",
                                                   "Δ Spec@Sens0.9 (val thr)"))


def comparison_figure(comparison: dict):
    """A forest plot of comparison.json: each run's paired difference from the reference (run −
    reference) with its 95% interval, per metric (and exam AUC where there is one). Collection
    gids: "delta-<metric>"."""
    comps = comparison["comparisons"]
    panels = [(k, label, [c["metrics"][k] for c in comps]) for k, label in COMPARED]
    if all(c.get("exam") for c in comps):
        panels.append(("exam_auc", "Δ exam AUC", [c["exam"]["metrics"]["auc"] for c in comps]))
    fig = _figure(3.0 * len(panels), 1.4 + 0.4 * len(comps))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    names = [c["run"] for c in comps]
    for ax, (key, label, entries) in zip(axes, panels):
        _interval_rows(ax, names, [e["delta"] for e in entries], [e["ci95"] for e in entries],
                       gid=f"delta-{key}")
        ax.axvline(0.0, color=OTHERS, linewidth=1)
        ax.set(xlabel=f"{label} (95% CI)")
    fig.suptitle(f"Paired differences from {comparison['reference']} on the same test patients")
    return fig


def subgroups_figure(result: dict):
    """Test AUC per subgroup of subgroups.json's entry for one column, with 95% intervals;
    groups with one class are left out. Collection gid: "values"."""
    groups = [g for g in result["groups"] if g["auc"] is not None]
    vs = result["reading"] == "against all negatives"
    names = [f"{g['value'] or '(empty)'} ({g['positives']}+/{g['negatives']}−)" for g in groups]
    fig = _figure(6.0, 1.3 + 0.35 * max(len(groups), 1))
    ax = fig.add_subplot()
    if groups:
        _interval_rows(ax, names, [g["auc"] for g in groups], [g["ci95"] for g in groups])
    ax.set(xlabel="test AUC (95% CI)", title=f"By {result['column']}"
           + (" (positives of each value against all negatives)" if vs else ""))
    return fig


# -- a run folder's figures -------------------------------------------------------------------


def froc_figure(detection: dict):
    """FROC curves (sensitivity against false positives per image, log x) of the head's maps and
    of every baseline of an explain detection.json, the LUNA16 rates marked."""
    fig = _figure(5.6, 4.2)
    ax = fig.add_subplot()
    curves = [("head", detection["detection"])] + [
        (kind, b["detection"]) for kind, b in (detection.get("baselines") or {}).items()]
    for name, det in curves:
        froc = det.get("froc")
        if not froc or froc["mean_sensitivity"] is None:
            continue
        fpi = np.asarray(froc["curve"]["fp_per_image"][1:], float)
        sens = np.asarray(froc["curve"]["sensitivity"][1:], float)
        ax.step(np.maximum(fpi, 1 / 16), sens, where="post", gid=f"froc-{name}",
                label=f"{name} (mean sensitivity {froc['mean_sensitivity']:.3f})")
        ax.plot(froc["rates"], froc["sensitivity"], "o", ms=4, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity (lesions found)")
    ax.set_title(f"FROC, IoU >= {detection['detection']['iou_threshold']:g} "
                 f"(maps: {detection.get('settings', {}).get('maps', 'retile')})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def write_run_figures(run_dir, results: dict | None = None, *, log=print) -> dict[str, list]:
    """Every figure of a finished run folder into RUN/figures/: roc, roc-exam (where the bags
    name exams), runs, curves (from history.npz; a folder written before results format 3 has
    none, and the figure is skipped with a message to `log`) and reliability.

    results: results.json's dict when the caller holds it (else read). Returns {"written":
    [figure names], "skipped": [(name, reason)]}.
    """
    from milpf_jax.evaluation import runs

    run_dir = Path(run_dir)
    results = runs.read_results(run_dir) if results is None else results
    out = run_dir / "figures"
    best = results["best"]
    n_boot = int(results.get("config", {}).get("eval", {}).get("bootstrap", 1000))
    seed = int(results.get("config", {}).get("init_seed", 0))
    written, skipped = [], []

    def thresholds(block):
        return {"bacc": block["threshold"]["value"], "sens90": block["threshold_sens90"]["value"]}

    test = runs.read_split_predictions(run_dir, "test")
    save_figure(roc_figure(test.labels, test.p, test.patients, thresholds=thresholds(best["test"]),
                           n_boot=n_boot, seed=seed), out, "roc")
    written.append("roc")
    exams = metrics.exam_level(test) if best.get("test_exam") else None
    if exams is not None:
        save_figure(roc_figure(exams.labels, exams.p, exams.patients,
                               thresholds=thresholds(best["test_exam"]), n_boot=n_boot,
                               seed=seed, title="Test ROC at exam level, best-validation run",
                               unit="exams"), out, "roc-exam")
        written.append("roc-exam")
    val_auc = [r["val"]["auc"] for r in results["runs"]]
    test_auc = [r["test"]["auc"] for r in results["runs"]]
    save_figure(runs_figure(val_auc, test_auc, best["run"]), out, "runs")
    written.append("runs")
    history = runs.read_history(run_dir)
    if history is None:
        reason = (f"{run_dir / runs.HISTORY_FILE} is missing (a run folder of results format "
                  f"{results.get('format_version')}; the per-epoch history is written from "
                  f"format {runs.HISTORY_SINCE_VERSION} on)")
        log(f"figures: curves skipped: {reason}")
        skipped.append(("curves", reason))
    else:
        save_figure(curves_figure(history["loss"], history["val_auc"], history["active"],
                                  best["run"]), out, "curves")
        written.append("curves")
    save_figure(reliability_figure(best["test_reliability"], best["test"]["brier"]["value"]),
                out, "reliability")
    written.append("reliability")
    return {"written": written, "skipped": skipped}
