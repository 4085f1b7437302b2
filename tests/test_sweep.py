import csv
import json

import numpy as np
import pytest

import milpf_jax
from helpers.repo import load_script
from milpf_jax.sweep import SweepConfig, evaluate_external, run_sweep
from milpf_jax.synthetic.embeddings import SyntheticConfig, write_synthetic_store

SWEEP = dict(seeds=3, epochs=30, patience=10, bootstrap=200)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    write_synthetic_store(root / "s.zarr", SyntheticConfig(n_bags=160, dim=16, max_tiles=24))
    cfg = SweepConfig.of(lr=(2e-3, 1e-2), **SWEEP)
    res = run_sweep(root / "s.zarr", cfg, root / "run", command="sweep test", progress=False)
    return root, res


def test_results_json_schema_and_honest_selection(finished_run):
    root, res = finished_run
    on_disk = json.loads((root / "run" / "results.json").read_text())
    assert on_disk["format_version"] == 3 and on_disk["command"] == "sweep test"
    assert on_disk["cohort"] is None  # a synthetic store records no cohort spec
    for key in ("config", "store_attrs", "runs", "summary", "best", "timing",
                "metric_definitions"):
        assert key in on_disk
    runs = on_disk["runs"]
    assert len(runs) == 6 and {r["lr"] for r in runs} == {2e-3, 1e-2}
    # The best run is the one with the highest validation AUC, whatever its test AUC.
    val_aucs = [r["val"]["auc"] for r in runs]
    assert on_disk["best"]["run"] == int(np.argmax(val_aucs))
    assert on_disk["best"]["test"]["auc"]["value"] == pytest.approx(
        runs[on_disk["best"]["run"]]["test"]["auc"])
    for r in runs:  # validation AUC tracked in JAX equals the sklearn AUC of the best params
        assert r["val"]["auc"] == pytest.approx(r["val_auc_during_training"], abs=1e-6)
    lo, hi = on_disk["best"]["test"]["auc"]["ci95"]
    assert lo <= on_disk["best"]["test"]["auc"]["value"] <= hi
    test_aucs = np.array([r["test"]["auc"] for r in runs])
    assert on_disk["summary"]["auc"]["mean"] == pytest.approx(test_aucs.mean())
    assert on_disk["summary"]["auc"]["std"] == pytest.approx(test_aucs.std(ddof=1))
    assert "bacc_oracle" in on_disk["metric_definitions"]
    # Calibration of the best run on the test bags: counts add up, means match predictions.
    rel = on_disk["best"]["test_reliability"]
    with open(root / "run" / "predictions.csv", newline="") as f:
        p_test = np.array([float(r["p_best"]) for r in csv.DictReader(f) if r["split"] == "test"])
    assert sum(rel["counts"]) == len(p_test) == on_disk["data"]["bags"]["test"]
    top = int(np.argmax(rel["counts"]))
    lo, hi = rel["bin_edges"][top], rel["bin_edges"][top + 1]
    in_top = p_test[(p_test <= hi) & ((p_test > lo) | (top == 0))]
    assert rel["mean_predicted"][top] == pytest.approx(in_top.mean(), abs=1e-5)
    assert all(m is None for m, n in zip(rel["mean_predicted"], rel["counts"]) if n == 0)
    md = (root / "run" / "results.md").read_text()
    assert "sweep test" in md and "| auc |" in md


def test_predictions_and_checkpoint_agree(finished_run):
    root, res = finished_run
    with open(root / "run" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 160
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    best = res["best"]["run"]
    assert all(r["p_best"] == r[f"p_run{best:03d}"] for r in rows)
    head = milpf_jax.load_head(root / "run" / "best")
    store = milpf_jax.Store.open(root / "s.zarr")
    bag = store.read_bag(5)
    p = milpf_jax.predict(head, milpf_jax.Bag(bag["global_emb"], np.ones(2, bool),
                                              bag["tile_emb"], np.ones(len(bag["tile_emb"]),
                                                                       bool)))
    row = next(r for r in rows if r["bag_id"] == bag["bag_id"])
    assert float(p) == pytest.approx(float(row["p_best"]), abs=2e-6)


def test_external_cohort_uses_the_saved_head(finished_run, tmp_path):
    root, res = finished_run
    # Same task (lesion direction), other bags: the head transfers.
    write_synthetic_store(tmp_path / "ext.zarr", SyntheticConfig(n_bags=80, dim=16,
                                                                 max_tiles=24, seed=9))
    ext = evaluate_external(root / "run", tmp_path / "ext.zarr", n_boot=100,
                            predictions_path=tmp_path / "ext.csv")
    assert ext["data"]["bags"] == 80
    assert ext["test"]["auc"]["value"] > 0.7
    with open(tmp_path / "ext.csv", newline="") as f:  # every bag's probability, for a reader
        rows = list(csv.DictReader(f))
    from sklearn.metrics import roc_auc_score

    assert len(rows) == 80 and list(rows[0]) == ["bag_id", "patient_id", "exam_id", "laterality",
                                                  "raw_label", "label", "p"]
    assert roc_auc_score([int(r["label"]) for r in rows], [float(r["p"]) for r in rows]) == \
        pytest.approx(ext["test"]["auc"]["value"], abs=1e-4)
    assert ext["test_exam"] is None  # synthetic bag ids name no exam
    # The CLI writes both beside the run: RUN/external/<store>.json and .predictions.csv.
    assert load_script("evaluate").main(["--run", str(root / "run"), "--store",
                                         str(tmp_path / "ext.zarr"), "--bootstrap", "100"]) == 0
    written = json.loads((root / "run" / "external" / "ext.json").read_text())
    assert written["test"]["auc"] == ext["test"]["auc"]
    assert (root / "run" / "external" / "ext.predictions.csv").read_text() == \
        (tmp_path / "ext.csv").read_text()
    write_synthetic_store(tmp_path / "d8.zarr", SyntheticConfig(n_bags=20, dim=8))
    with pytest.raises(ValueError, match="D=8 embeddings but the head .* D=16"):
        evaluate_external(root / "run", tmp_path / "d8.zarr")


def test_sweep_cli_flags(tmp_path):

    sweep = load_script("sweep")
    parser = sweep.build_parser()
    args = parser.parse_args(["--store", "x.zarr", "--lr", "1e-3,2e-3", "--seeds", "4",
                              "--local-pool", "max"])
    from milpf_jax.cli import config_from_args

    cfg = config_from_args(SweepConfig, args)
    assert cfg.lr == (1e-3, 2e-3) and cfg.seeds == 4 and cfg.train.head.local_pool == "max"
    assert cfg.train.epochs == 700 and cfg.train.patience == 20 and cfg.weight_decay == (1e-4,)
    with pytest.raises(SystemExit):
        parser.parse_args(["--local-pool", "sum"])
    write_synthetic_store(tmp_path / "s.zarr", SyntheticConfig(n_bags=120, dim=8, max_tiles=8))
    rc = sweep.main(["--store", str(tmp_path / "s.zarr"), "--seeds", "2", "--epochs", "5",
                     "--bootstrap", "50", "--quiet", "--out", str(tmp_path / "run")])
    assert rc == 0 and (tmp_path / "run" / "results.json").exists()
    # Repeated splits: a run folder per split seed, each test split a different set of
    # patients, and splits.json summarising the best-validation runs across them.
    rc = sweep.main(["--store", str(tmp_path / "s.zarr"), "--seeds", "2", "--epochs", "5",
                     "--bootstrap", "0", "--quiet", "--out", str(tmp_path / "rep"),
                     "--split-seeds", "0,4"])
    summary = json.loads((tmp_path / "rep" / "splits.json").read_text())
    per_run = [json.loads((tmp_path / "rep" / f"split-{s}" / "results.json").read_text())
               for s in (0, 4)]
    assert rc == 0 and [r["split_seed"] for r in summary["splits"]] == [0, 4]
    assert [r["data"]["split_seed"] for r in per_run] == [0, 4]
    aucs = [r["best"]["test"]["auc"]["value"] for r in per_run]
    assert [r["test"]["auc"] for r in summary["splits"]] == aucs
    assert summary["summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert summary["summary"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert (tmp_path / "rep" / "figures" / "folds.png").is_file()
    assert "split seed 4" in (tmp_path / "rep" / "report.html").read_text()
    test_patients = []
    for s in (0, 4):
        with open(tmp_path / "rep" / f"split-{s}" / "predictions.csv", newline="") as f:
            test_patients.append({r["patient_id"] for r in csv.DictReader(f)
                                  if r["split"] == "test"})
    assert test_patients[0] != test_patients[1]
    # Cross-validation: every bag tested once, by its own fold's selected head; the pooled
    # out-of-fold AUC is over all of them.
    rc = sweep.main(["--store", str(tmp_path / "s.zarr"), "--seeds", "2", "--epochs", "5",
                     "--bootstrap", "50", "--quiet", "--out", str(tmp_path / "cv"),
                     "--folds", "3"])
    cv = json.loads((tmp_path / "cv" / "folds.json").read_text())
    assert rc == 0 and cv["key"] == "fold" and [r["fold"] for r in cv["splits"]] == [0, 1, 2]
    tested = []
    for k in range(3):
        res = json.loads((tmp_path / "cv" / f"fold-{k}" / "results.json").read_text())
        assert res["data"]["fold"] == f"{k}/3" and res["config"]["data"]["fold"] == f"{k}/3"
        with open(tmp_path / "cv" / f"fold-{k}" / "predictions.csv", newline="") as f:
            tested += [r for r in csv.DictReader(f) if r["split"] == "test"]
    assert len(tested) == len({r["bag_id"] for r in tested}) == 120  # each bag once
    from sklearn.metrics import roc_auc_score

    pooled = cv["pooled"]["auc"]
    assert pooled["n"] == 120 and pooled["ci95"][0] <= pooled["value"] <= pooled["ci95"][1]
    assert pooled["value"] == pytest.approx(roc_auc_score(
        [int(r["label"]) for r in tested], [float(r["p_best"]) for r in tested]))
    with pytest.raises(SystemExit):  # one of the two split flags
        sweep.main(["--store", "x.zarr", "--split-seeds", "0,1", "--split-seed", "2"])
    with pytest.raises(SystemExit):
        sweep.main(["--store", "x.zarr", "--folds", "5", "--split-seeds", "0,1"])
    with pytest.raises(ValueError, match="expected k/n"):
        SweepConfig.of(fold="5/5")
    with pytest.raises(SystemExit):
        parser.parse_args(["--split-seeds", "1,1"])


def test_exam_level_metrics_of_the_best_run(finished_run):
    """Synthetic bag ids carry no exam: null. Ids "patient/exam/laterality": the best run's
    exam-level metrics, AUC equal to sklearn's on the exams' highest breast probabilities."""
    import dataclasses

    from sklearn.metrics import roc_auc_score

    from milpf_jax.data.packed import load_packed
    from milpf_jax.evaluation.results import exam_counts, exam_metrics, packed_scores

    root, res = finished_run
    assert res["best"]["test_exam"] is None and res["data"]["exams"] is None
    packed = load_packed(root / "s.zarr")
    # Two breasts per exam, one exam per patient (bags come two per patient here): the exam
    # comes from the exam id the store records, never from the bag id.
    ids = np.array([f"{p}/E1/{'LR'[b % 2]}" for b, p in enumerate(packed.patient_ids)])
    packed = dataclasses.replace(packed, exam_ids=np.full(packed.n_bags, "E1", dtype=object))
    rng = np.random.default_rng(0)
    p = np.clip(packed.labels + rng.normal(0, 0.6, packed.n_bags), 0, 1)
    test, val = packed.splits == 2, packed.splits == 1
    out = exam_metrics(packed_scores(packed, p, test), packed_scores(packed, p, val), n_boot=50)
    y_exam, p_exam = {}, {}
    for b in np.flatnonzero(test):
        e = ids[b].rsplit("/", 1)[0]
        y_exam[e] = max(y_exam.get(e, 0), int(packed.labels[b]))
        p_exam[e] = max(p_exam.get(e, 0.0), float(p[b]))
    keys = sorted(y_exam)
    assert out["n"]["value"] == len(keys) < test.sum()
    assert out["auc"]["value"] == pytest.approx(
        roc_auc_score([y_exam[k] for k in keys], [p_exam[k] for k in keys]))
    lo, hi = out["auc"]["ci95"]
    assert lo <= out["auc"]["value"] <= hi
    counts = exam_counts(packed)
    assert counts["test"]["exams"] == len(keys)
    assert counts["test"]["positives"] == sum(y_exam.values())


def test_a_value_a_config_refuses_is_a_usage_error_naming_it(capsys):
    sweep = load_script("sweep")
    for argv, reason in ((["--store", "x.zarr", "--fold", "7/5"], "--fold: '7/5': expected k/n"),
                         (["--cohort", "phantom", "--batch-size", "0"],
                          "--batch-size: 0; expected >= 1")):
        with pytest.raises(SystemExit) as exit_:
            sweep.main(argv)
        assert exit_.value.code == 2 and reason in capsys.readouterr().err


def test_history_figures_and_report_beside_the_results(finished_run):
    """history.npz holds what training recorded (the best epoch's validation AUC is the best
    one seen), every figure is there, and the report's seconds are in results.json."""
    from milpf_jax.evaluation.runs import read_history

    root, res = finished_run
    run = root / "run"
    history = read_history(run)
    runs = res["runs"]
    assert history["loss"].shape == history["val_auc"].shape == history["active"].shape
    assert history["loss"].shape[0] == len(runs) and history["active"][:, 0].all()
    for r, entry in enumerate(runs):
        seen = history["val_auc"][r][history["active"][r]]
        assert entry["val_auc_during_training"] == pytest.approx(float(seen.max()), abs=1e-6)
        assert history["val_auc"][r, entry["best_epoch"] - 1] == pytest.approx(seen.max())
    names = sorted(p.name for p in (run / "figures").iterdir())
    assert names == sorted(f"{n}.{x}" for n in ("roc", "runs", "curves", "reliability")
                           for x in ("png", "svg"))
    timing = json.loads((run / "results.json").read_text())["timing"]
    assert timing["figures_seconds"] > 0 and timing["report_seconds"] > 0
    assert "records no cohort" in (run / "report.html").read_text()

