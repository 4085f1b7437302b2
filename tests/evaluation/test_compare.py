"""Paired comparison of finished runs (milpf_jax.evaluation.compare, experiments/compare.py), on run
folders written as a sweep writes them."""

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers.repo import load_script
from helpers.runs import cohort_rows, write_run
from milpf_jax.cli import run as run_cli
from milpf_jax.evaluation import bootstrap
from milpf_jax.evaluation.compare import compare_runs, format_comparison
from milpf_jax.evaluation.metrics import TABLE_METRICS


def test_compare_runs_pairs_bags_by_id_and_matches_the_paired_bootstrap(tmp_path):
    rows = cohort_rows()
    ref = write_run(tmp_path / "strong", rows, 2.0, 0)
    # The second run lists its bags in another order and lacks one test bag (failed extraction).
    order = [i for i in np.random.default_rng(1).permutation(len(rows)) if rows[i][0] !=
             "P050/E1/L"]
    weak = write_run(tmp_path / "weak", rows, 0.5, 2, order=order)
    res = compare_runs([ref, weak], n_boot=200, seed=5)
    (c,) = res["comparisons"]
    assert (c["run"], c["reference"], res["reference"]) == ("weak", "strong", "strong")
    assert (c["test_bags"], c["only_in_reference"], c["only_in_run"]) == (35, 1, 0)

    def test_split(path):
        with open(path / "predictions.csv", newline="") as f:
            r = {x["bag_id"]: x for x in csv.DictReader(f) if x["split"] == "test"}
        return r

    a, b = test_split(ref), test_split(weak)
    common = sorted(b)
    y = np.array([int(a[k]["label"]) for k in common])
    p_ref = np.array([float(a[k]["p_best"]) for k in common])
    p_run = np.array([float(b[k]["p_best"]) for k in common])
    assert c["metrics"]["auc"]["delta"] == pytest.approx(
        roc_auc_score(y, p_run) - roc_auc_score(y, p_ref), abs=1e-12)

    def val(r):
        with open(r / "predictions.csv", newline="") as f:
            v = [x for x in csv.DictReader(f) if x["split"] == "val"]
        return np.array([int(x["label"]) for x in v]), np.array([float(x["p_best"]) for x in v])

    expected = bootstrap.paired_bootstrap(
        y, p_run, p_ref, [k.split("/")[0] for k in common],
        {k: bootstrap.BOOTSTRAP_METRICS[k] for k in TABLE_METRICS},
        val_a=val(weak), val_b=val(ref), n_boot=200, seed=5)
    for k in TABLE_METRICS:
        got, want = c["metrics"][k], expected[k]
        flat = [got["delta"], *got["ci95"], got["p_value"]]
        assert flat == pytest.approx([want["delta"], *want["ci95"], want["p_value"]],
                                     abs=1e-12, nan_ok=True), k
        assert c["metrics"][k]["p_holm"] == c["metrics"][k]["p_value"]  # one comparison
    assert c["metrics"]["auc"]["delta"] < 0 and c["metrics"]["auc"]["ci95"][1] < 0
    # One exam per patient: exam level is the max over the two breasts.
    assert c["exam"]["test_exams"] == 18
    assert set(c["exam"]["metrics"]) == {"auc", "bacc", "spec_at_sens90_valthr"}
    text = format_comparison(res)
    assert "| weak | 35 |" in text and "1 test bags only in the reference" in text
    assert f"{c['metrics']['auc']['delta']:+.3f}" in text


def test_holm_over_several_runs_and_errors_name_the_problem(tmp_path):
    rows = cohort_rows()
    runs = [write_run(tmp_path / n, rows, s, i) for i, (n, s) in
            enumerate((("ref", 1.0), ("same", 1.0), ("better", 3.0)))]
    res = compare_runs(runs, n_boot=100)
    raw = [c["metrics"]["auc"]["p_value"] for c in res["comparisons"]]
    holm = [c["metrics"]["auc"]["p_holm"] for c in res["comparisons"]]
    np.testing.assert_allclose(holm, bootstrap.holm(raw))
    assert all(h >= r for h, r in zip(holm, raw, strict=True))

    moved = list(rows)
    moved[0] = (*rows[0][:2], "test", rows[0][3])  # a train bag in another run's test split
    other = write_run(tmp_path / "other-split", moved, 1.0, 9)
    with pytest.raises(ValueError, match=r"split of bag P000/E1/L.*--split-seed"):
        compare_runs([runs[0], other], n_boot=10)
    with pytest.raises(ValueError, match="at least two"):
        compare_runs(runs[:1])
    # Folds of two cross-validations share their folder names: the parents tell them apart.
    twins = [write_run(tmp_path / cv / "fold-0", rows, 1.0, i) for i, cv in enumerate("ab")]
    res = compare_runs(twins, n_boot=10)
    assert (res["reference"], res["comparisons"][0]["run"]) == ("a/fold-0", "b/fold-0")
    with pytest.raises(ValueError, match="given twice"):
        compare_runs([runs[0], runs[0]], n_boot=10)
    with pytest.raises(FileNotFoundError, match="no predictions.csv"):
        compare_runs([runs[0], tmp_path / "missing"])


def test_compare_cli_writes_json_and_markdown_with_the_command(tmp_path, capsys):
    cli = load_script("compare")
    rows = cohort_rows()
    a, b = write_run(tmp_path / "a", rows, 2.0, 0), write_run(tmp_path / "b", rows, 1.0, 1)
    out = tmp_path / "cmp"
    assert cli.main([str(a), str(b), "--out", str(out), "--bootstrap", "50"]) == 0
    res = json.loads((out / "comparison.json").read_text())
    assert res["n_boot"] == 50 and res["reference"] == "a"
    assert res["command"].startswith("python experiments/compare.py ")
    md = (out / "comparison.md").read_text()
    assert "| b | 36 |" in md and "Made by: `python experiments/compare.py" in md
    assert "| b | 36 |" in capsys.readouterr().out
    assert run_cli(cli.main, [str(a), str(tmp_path / "nothing"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no predictions.csv" in err


def test_runs_of_other_tasks_are_refused_naming_the_task(tmp_path):
    rows = cohort_rows()
    a = write_run(tmp_path / "mass", rows, skill=2.0, seed=1)
    b = write_run(tmp_path / "calc", rows, skill=1.0, seed=2)
    for run, task in ((a, "mass"), (b, "calcification")):
        (run / "results.json").write_text(json.dumps({"data": {"task": task}}))
    with pytest.raises(ValueError, match=r"trained on different tasks"):
        compare_runs([a, b], n_boot=10)
    with pytest.raises(ValueError, match=r"calc was trained on task 'calcification', not 'mass'"):
        compare_runs([a, b], task="mass", n_boot=10)
    (b / "results.json").write_text(json.dumps({"data": {"task": "mass"}}))
    assert compare_runs([a, b], task="mass", n_boot=10)["reference"] == "mass"
