"""Figures: each function's plotted arrays, read back from the matplotlib objects, equal the data
they were given; a run folder's figures are written as PNG and SVG files."""

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from helpers.runs import write_results
from milpf_jax.evaluation import figures


def _by_gid(fig, gid):
    found = [a for ax in fig.axes for a in (*ax.lines, *ax.collections) if a.get_gid() == gid]
    assert len(found) == 1, (gid, found)
    return found[0]


def _scores(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(size=n))))
    patients = np.repeat(np.arange(n // 2), 2).astype(str)  # two bags a patient
    return y, p, patients


def test_roc_band_is_the_percentiles_of_the_resampled_curves():
    """The band against a plain loop: each resample materialised (bags repeated by their
    patient's draw count), sklearn's ROC interpolated at the grid, then the percentiles."""
    from milpf_jax.evaluation.bootstrap import patient_resamples

    y, p, patients = _scores()
    lo, hi = figures.roc_band(y, p, patients, n_boot=60, seed=3)
    curves = []
    for w in patient_resamples(patients, 60, 3):
        for counts in w.astype(int):
            rows = np.repeat(np.arange(len(y)), counts)
            if 0 < y[rows].sum() < len(rows):
                fpr, tpr, _ = roc_curve(y[rows], p[rows], drop_intermediate=False)
                curves.append(np.interp(figures.FPR_GRID, fpr, tpr))
    want_lo, want_hi = np.quantile(np.stack(curves), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(lo, want_lo, atol=1e-12)
    np.testing.assert_allclose(hi, want_hi, atol=1e-12)
    assert (lo <= hi).all() and hi[-1] == 1.0 and lo[0] >= 0.0


def test_roc_figure_plots_the_curve_band_and_validation_operating_points():
    y, p, patients = _scores()
    thr = {"bacc": float(np.median(p)), "sens90": float(np.quantile(p, 0.2))}
    fig = figures.roc_figure(y, p, patients, thresholds=thr, n_boot=50, seed=1)
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(_by_gid(fig, "roc").get_xydata(), np.c_[fpr, tpr])
    lo, hi = figures.roc_band(y, p, patients, n_boot=50, seed=1)
    np.testing.assert_allclose(_by_gid(fig, "band-lo").get_ydata(), lo)
    np.testing.assert_allclose(_by_gid(fig, "band-hi").get_ydata(), hi)
    for name, t in thr.items():
        point = _by_gid(fig, f"point-{name}").get_xydata()[0]
        np.testing.assert_allclose(point, [np.mean(p[y == 0] >= t), np.mean(p[y == 1] >= t)])
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("max bACC" in s and f"{thr['bacc']:.3f}" in s for s in labels)


def test_runs_figure_marks_the_selected_run_and_its_test_rank():
    val = np.array([0.70, 0.90, 0.80, 0.85, 0.60])
    test = np.array([0.75, 0.80, 0.82, 0.79, 0.90])
    fig = figures.runs_figure(val, test, best=1)
    np.testing.assert_allclose(_by_gid(fig, "runs").get_offsets(), np.c_[val, test])
    np.testing.assert_allclose(_by_gid(fig, "selected").get_offsets(), [[0.90, 0.80]])
    assert figures.test_rank(test, 1) == 3  # 0.82 and 0.90 are above it
    assert "rank 3 of 5" in _by_gid(fig, "selected").get_label()


def test_curves_figure_ends_each_run_where_it_stopped():
    rng = np.random.default_rng(0)
    loss, val = rng.random((3, 10)), rng.random((3, 10))
    active = np.arange(10)[None] < np.array([[4], [10], [7]])
    fig = figures.curves_figure(loss, val, active, best=1)
    for r in range(3):
        got = _by_gid(fig, f"val-{r}").get_ydata()
        np.testing.assert_allclose(got[active[r]], val[r, active[r]])
        assert np.isnan(got[~active[r]]).all()
        np.testing.assert_allclose(_by_gid(fig, f"loss-{r}").get_ydata()[active[r]],
                                   loss[r, active[r]])
        stop = _by_gid(fig, f"stop-{r}").get_xydata()[0]
        last = int(active[r].sum())
        np.testing.assert_allclose(stop, [last, val[r, last - 1]])


def test_reliability_figure_plots_the_non_empty_bins_and_the_brier_score():
    curve = dict(bin_edges=list(np.linspace(0, 1, 6)), counts=[3, 0, 2, 1, 4],
                 mean_predicted=[0.1, None, 0.5, 0.7, 0.9],
                 observed_fraction=[0.0, None, 0.5, 1.0, 0.75])
    fig = figures.reliability_figure(curve, brier=0.1234)
    line = _by_gid(fig, "reliability")
    np.testing.assert_allclose(line.get_xydata(), [[0.1, 0.0], [0.5, 0.5], [0.7, 1.0],
                                                   [0.9, 0.75]])
    assert "0.123" in line.get_label()


def test_folds_comparison_and_subgroups_figures_plot_their_values():
    fig = figures.folds_figure(["fold 0/3", "fold 1/3", "fold 2/3"], [0.8, 0.7, 0.9],
                               [[0.7, 0.9], [0.6, 0.8], None],
                               pooled={"value": 0.81, "ci95": [0.75, 0.86]})
    got = _by_gid(fig, "values").get_offsets()
    np.testing.assert_allclose(got[:, 0], [0.8, 0.7, 0.9, 0.81])
    rows = {t.get_text(): y for t, y in zip(fig.axes[0].get_yticklabels(),
                                            fig.axes[0].get_yticks())}
    assert rows["fold 0/3"] > rows["fold 2/3"] > rows["pooled out-of-fold"]  # top to bottom

    entry = lambda d: dict(delta=d, ci95=[d - 0.1, d + 0.1], a=0.5, b=0.5, p_value=0.5)  # noqa
    comparison = dict(reference="full", comparisons=[
        dict(run="global-only", metrics={k: entry(-0.1) for k, _ in figures.COMPARED},
             exam=None),
        dict(run="local-only", metrics={k: entry(0.02) for k, _ in figures.COMPARED},
             exam=None)])
    fig = figures.comparison_figure(comparison)
    assert len(fig.axes) == 3
    np.testing.assert_allclose(_by_gid(fig, "delta-auc").get_offsets()[:, 0], [-0.1, 0.02])

    result = dict(column="density", reading="within", groups=[
        dict(value="A", positives=3, negatives=4, auc=0.75, ci95=[0.5, 1.0]),
        dict(value="B", positives=0, negatives=5, auc=None, ci95=None),
        dict(value="C", positives=2, negatives=2, auc=1.0, ci95=None)])
    fig = figures.subgroups_figure(result)
    np.testing.assert_allclose(_by_gid(fig, "values").get_offsets()[:, 0], [0.75, 1.0])


def test_run_figures_written_as_png_and_svg_and_curves_skipped_without_history(tmp_path):
    run = tmp_path / "run"
    write_results(run)
    done = figures.write_run_figures(run)
    assert done == {"written": ["roc", "runs", "curves", "reliability"], "skipped": []}
    for name in done["written"]:
        with Image.open(run / "figures" / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 300
        assert (run / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    (run / "history.npz").unlink()  # a run folder of results format 2
    said = []
    done = figures.write_run_figures(run, log=said.append)
    assert "curves" not in done["written"] and done["skipped"][0][0] == "curves"
    assert "history.npz is missing" in said[0]


def test_save_figure_leaves_no_temporary_file(tmp_path):
    fig = figures.runs_figure([0.5, 0.6], [0.5, 0.7], best=1)
    paths = figures.save_figure(fig, tmp_path / "f", "runs")
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["runs.png", "runs.svg"]
    assert [p.name for p in paths] == ["runs.png", "runs.svg"]


@pytest.mark.parametrize("bad", [np.array([0, 1, 2]), np.array([0, 1, 1])])
def test_roc_figure_refuses_bad_labels_before_drawing(bad):
    with pytest.raises(ValueError, match="roc_figure"):
        figures.roc_figure(bad, [0.1, 0.5, np.nan], ["a", "b", "c"], thresholds={}, n_boot=0)
