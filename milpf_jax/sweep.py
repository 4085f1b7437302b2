"""A head-training experiment on one store: train a grid, select on validation, test once.

`run_sweep` is what `experiments/sweep.py` runs: it loads a store (label mapping and split seed
applied), trains every (lr, weight decay, seed) run in one compiled program, picks the run with
the best validation AUC, evaluates the test split once, and writes

  results.json     versioned, machine-readable (see RESULTS_FORMAT_VERSION)
  results.md       the table a person reads, with the command that made it
  predictions.csv  bag, patient, split, label and p for the best run and for every run
  best/            the best run's head (orbax checkpoint, loadable with milpf_jax.load_head)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milpf_jax import __version__

from milpf_jax.data import labels

from milpf_jax.evaluation import metrics
from milpf_jax.learning.head import HeadConfig

RESULTS_FORMAT_VERSION = 1
# The metrics shown in the printed table (all of metrics.evaluate go to results.json).
TABLE_METRICS = ("auc", "bacc", "spec_at_sens90_roc", "spec_at_sens90_valthr",
                 "sens_at_spec90_roc", "brier")


@dataclass(frozen=True)
class SweepConfig:
    """One experiment. Defaults reproduce the paper's full MIL-PF head and the original code's
    training (Adam lr 2e-3, L2 1e-4, <= 700 epochs, patience 20); 36 runs (paper, section 3.1).

    lr and weight_decay are tuples: more than one value makes a grid, trained in the same
    program as the seeds. mode "instance" is the "inf. only" ablation (Table 4).
    """

    seeds: int = 36
    epochs: int = 700
    patience: int = 20
    min_delta: float = 1e-3
    lr: tuple[float, ...] = (2e-3,)
    weight_decay: tuple[float, ...] = (1e-4,)
    global_pool: str = "max"
    local_pool: str = "attn"
    mode: str = "mil"
    mapping: str | None = None
    split_seed: int = 0
    fold: str | None = None  # "k/n": fold k of an n-fold cross-validation instead of 70/10/20
    init_seed: int = 0
    first_layer_dtype: str = "auto"  # bfloat16 where native (f32 accumulation), else float32
    bootstrap: int = 1000
    allow_partial: bool = False

    def __post_init__(self):
        if self.fold is not None:
            labels.parse_fold(self.fold)

    def replace(self, **changes) -> SweepConfig:
        return dataclasses.replace(self, **changes)


def train_config(cfg: SweepConfig, dim: int):
    from milpf_jax.learning.train import TrainConfig

    dtype = cfg.first_layer_dtype
    if dtype == "auto":
        from milpf_jax.runtime import default_first_layer_dtype

        dtype = default_first_layer_dtype()
    head = HeadConfig(dim=dim, global_pool=cfg.global_pool, local_pool=cfg.local_pool,
                      first_layer_dtype=dtype)
    return TrainConfig(head=head, epochs=cfg.epochs, patience=cfg.patience,
                       min_delta=cfg.min_delta, mode=cfg.mode)


def _evaluate_split(y, p, y_val, p_val, name):
    if len(np.unique(y)) < 2:
        raise ValueError(f"the {name} split has labels {sorted(set(y.tolist()))} only: its "
                         "metrics need both classes (try another --split-seed)")
    return metrics.evaluate(y, p, y_val=y_val, p_val=p_val)


def evaluate_runs(probs: np.ndarray, packed, val_probs: np.ndarray | None = None):
    """Validation and test metrics of every run. probs: [R, B] over packed's bags.

    Thresholds are fixed on each run's own validation predictions. With `val_probs` [R, Bv]
    (an external test cohort), packed is all test and val_probs fix the thresholds.
    """
    val = packed.splits == labels.VAL
    test = packed.splits == labels.TEST
    y = packed.labels.astype(int)
    out = []
    for r in range(len(probs)):
        if val_probs is None:
            yv, pv = y[val], probs[r, val]
            row = dict(val=_evaluate_split(yv, pv, yv, pv, "validation"),
                       test=_evaluate_split(y[test], probs[r, test], yv, pv, "test"))
        else:
            yv, pv = val_probs
            row = dict(test=_evaluate_split(y, probs[r], yv, pv[r], "test"))
        out.append(row)
    return out


def summarize(run_metrics: list[dict], split: str = "test") -> dict:
    """Mean and (sample) standard deviation across runs of every metric of a split."""
    keys = run_metrics[0][split].keys()
    summary = {}
    for k in keys:
        v = np.array([m[split][k] for m in run_metrics], np.float64)
        summary[k] = dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return summary


def best_with_ci(y, p, patient_ids, y_val, p_val, *, n_boot, seed=0):
    """The best run's test metrics, each with a 95% patient-clustered bootstrap interval."""
    point = metrics.evaluate(y, p, y_val=y_val, p_val=p_val)
    ci = metrics.bootstrap_ci(y, p, patient_ids, metrics.BOOTSTRAP_METRICS, y_val=y_val,
                              p_val=p_val, n_boot=n_boot, seed=seed) if n_boot else {}
    return {k: dict(value=v, ci95=list(ci[k]) if k in ci else None) for k, v in point.items()}


def exams_of(*splits: tuple) -> list[tuple] | None:
    """Each split's bags at exam level (metrics.exam_level), or None when the bag ids carry no
    exam or some split's exams lack a class. splits: (bag_ids, labels, p, patient_ids) each."""
    exams = [metrics.exam_level(*s) for s in splits]
    if any(e is None or len(np.unique(e[1])) < 2 for e in exams):
        return None
    return exams


def exam_metrics(test: tuple, val: tuple, *, n_boot: int, seed: int = 0) -> dict | None:
    """Test metrics at exam level (metrics.exam_level) with 95% CIs, thresholds fixed on the
    validation exams. test, val: (bag_ids, labels, probabilities, patient_ids) of the bags.
    None when the bag ids carry no exam or either split's exams lack a class."""
    exams = exams_of(test, val)
    if exams is None:
        return None
    (_, ye, pe, patients), (_, yv, pv, _) = exams
    return best_with_ci(ye, pe, patients, yv, pv, n_boot=n_boot, seed=seed)


def _reliability(y, p, n_bins: int = 10) -> dict:
    """metrics.reliability_curve as JSON-ready lists; an empty bin's means are null."""
    curve = metrics.reliability_curve(y, p, n_bins=n_bins)
    return {k: [None if isinstance(x, float) and not np.isfinite(x) else x
                for x in np.asarray(v).tolist()] for k, v in curve.items()}


def _exam_counts(packed) -> dict | None:
    """Exams and positive exams per split; None when the bag ids carry no exam."""
    y = packed.labels.astype(int)
    out = {}
    for i, name in enumerate(labels.SPLIT_NAMES):
        m = packed.splits == i
        exams = metrics.exam_level(packed.bag_ids[m], y[m], y[m], packed.patient_ids[m])
        if exams is None and m.any():
            return None
        out[name] = dict(exams=0 if exams is None else len(exams[0]),
                         positives=0 if exams is None else int(exams[1].sum()))
    return out


def write_predictions(path: Path, packed, probs: np.ndarray, best: int) -> None:
    """One row per bag: ids, split, raw and mapped label, p of the best run and of every run."""
    _write_csv(path, ["bag_id", "patient_id", "split", "raw_label", "label", "p_best"]
               + [f"p_run{r:03d}" for r in range(len(probs))],
               ([packed.bag_ids[b], packed.patient_ids[b], labels.SPLIT_NAMES[packed.splits[b]],
                 packed.raw_labels[b], int(packed.labels[b]), f"{probs[best, b]:.6f}"]
                + [f"{x:.6f}" for x in probs[:, b]] for b in range(packed.n_bags)))


def _write_csv(path: Path, header: list[str], rows) -> None:
    """A CSV written under another name, then moved into place (never half-written)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o)}")


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True))
    os.replace(tmp, path)


def environment() -> dict:
    import jax

    return dict(package_version=__version__, jax=jax.__version__, python=platform.python_version(),
                backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()])


def run_sweep(store, cfg: SweepConfig, out_dir, *, command: str = "", progress: bool = True):
    """Train, select on validation, evaluate test once, write the run folder. Returns results."""
    import jax

    from milpf_jax.learning.checkpoint import save_head
    from milpf_jax.learning.inference import Head
    from milpf_jax.data.store import load_packed
    from milpf_jax.learning.train import bag_batch, fit, hparam_grid, make_train_data, predict_runs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.perf_counter()
    packed = load_packed(store, mapping=cfg.mapping, split_seed=cfg.split_seed, fold=cfg.fold,
                         allow_partial=cfg.allow_partial)
    load_seconds = time.perf_counter() - t_load
    tcfg = train_config(cfg, packed.dim)
    data = make_train_data(packed, tcfg)
    keys, hp, table = hparam_grid(cfg.seeds, cfg.lr, cfg.weight_decay, seed=cfg.init_seed)
    result = fit(keys, hp, data, tcfg, progress=progress)
    state = jax.device_get(result.state)

    # Selection reads validation only; the test split is evaluated once, below.
    best = int(np.argmax(state.best_val_auc))
    probs = predict_runs(result.state.best_params, bag_batch(packed), tcfg.head)  # [R, B]
    run_metrics = evaluate_runs(probs, packed)
    val = packed.splits == labels.VAL
    test = packed.splits == labels.TEST
    y = packed.labels.astype(int)
    best_test = best_with_ci(y[test], probs[best, test], packed.patient_ids[test], y[val],
                             probs[best, val], n_boot=cfg.bootstrap, seed=cfg.init_seed)
    best_test_exam = exam_metrics(
        *[(packed.bag_ids[m], y[m], probs[best, m], packed.patient_ids[m]) for m in (test, val)],
        n_boot=cfg.bootstrap, seed=cfg.init_seed)
    runs = [dict(t, best_epoch=int(state.best_epoch[r]),
                 val_auc_during_training=float(state.best_val_auc[r]), **run_metrics[r])
            for r, t in enumerate(table)]
    store_attrs = packed.info["attrs"]
    results = dict(
        format_version=RESULTS_FORMAT_VERSION,
        command=command,
        config=dataclasses.asdict(cfg),
        head=dataclasses.asdict(tcfg.head),
        store=str(packed.info["store"]),
        store_attrs=store_attrs,
        data=dict(
            mapping=packed.info["mapping"], split_seed=cfg.split_seed, fold=cfg.fold,
            excluded_by_mapping=packed.info["excluded"], skipped_unfinished=packed.info["skipped"],
            bags={s: int(np.sum(packed.splits == i)) for i, s in enumerate(labels.SPLIT_NAMES)},
            positives={s: int(np.sum(packed.labels[packed.splits == i]))
                       for i, s in enumerate(labels.SPLIT_NAMES)},
            tiles=int(len(packed.tiles)), dim=int(packed.dim),
            exams=_exam_counts(packed),
        ),
        runs=runs,
        summary=summarize(run_metrics, "test"),
        summary_val=summarize(run_metrics, "val"),
        best=dict(run=best, **table[best], best_epoch=int(state.best_epoch[best]),
                  val=run_metrics[best]["val"], test=best_test, test_exam=best_test_exam,
                  test_reliability=_reliability(y[test], probs[best, test])),
        timing=dict(load_seconds=load_seconds, compile_seconds=result.compile_seconds,
                    train_seconds=result.train_seconds, epochs_run=result.epochs_run,
                    runs=len(table)),
        environment=environment(),
        metric_definitions=dict(
            metrics.METRIC_DEFINITIONS,
            ci95="95% percentile interval of a bootstrap over patients (all bags of a patient "
                 "resampled together), thresholds fixed on validation.",
            summary="Mean and sample standard deviation across all runs of the grid.",
            best="The run with the highest validation AUC; its test metrics are read once.",
            test_reliability="The best run's test calibration: 10 equal-width bins of "
                             "predicted probability, (a, b] (the first also holds 0), with the "
                             "bag count, mean predicted probability and observed fraction of "
                             "positives of each.",
            test_exam="The best run at exam level: an exam is positive when any of its "
                      "breasts is and scores its breasts' highest probability; thresholds "
                      "fixed on validation exams; null when bag ids are not "
                      "patient/exam/laterality or a split's exams lack a class.",
        ),
    )
    write_predictions(out / "predictions.csv", packed, probs, best)
    best_params = jax.tree_util.tree_map(lambda a: np.asarray(a[best]),
                                         result.state.best_params)
    save_head(out / "best", Head(params=best_params, config=tcfg.head.replace(
        first_layer_dtype="float32")), metadata=dict(
        store_attrs=store_attrs, seed=table[best]["seed"], lr=table[best]["lr"],
        weight_decay=table[best]["weight_decay"], val_auc=float(state.best_val_auc[best]),
        best_epoch=int(state.best_epoch[best]), mapping=packed.info["mapping"],
        split_seed=cfg.split_seed, fold=cfg.fold, command=command))
    write_json(out / "results.json", results)
    (out / "results.md").write_text(format_markdown(results))
    return results


def _fmt_ci(entry) -> str:
    v, ci = entry["value"], entry.get("ci95")
    if ci is None or ci[0] is None or not np.isfinite(ci[0]):
        return f"{v:.3f}"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(results: dict) -> str:
    """Plain-text table: best-validation run (test, 95% CI) and mean +- std across runs."""
    b = results["best"]
    n = results["timing"]["runs"]
    rows = [f"{'metric':<24} {'best-val run (test, 95% CI)':<30} {'all ' + str(n) + ' runs (test)':<18}"]
    for k in TABLE_METRICS:
        s = results["summary"][k]
        rows.append(f"{k:<24} {_fmt_ci(b['test'][k]):<30} {s['mean']:.3f} ± {s['std']:.3f}")
    exam = b.get("test_exam")
    if exam:
        n_exams = results["data"]["exams"]["test"]["exams"]
        rows.append(f"{'auc, exam level':<24} {_fmt_ci(exam['auc']):<30} "
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
        f"cohort {results['store_attrs'].get('cohort')}); mapping {results['data']['mapping']}, "
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
        lines.append(f"| {k} | {_fmt_ci(b['test'][k])} | {s['mean']:.3f} ± {s['std']:.3f} |")
    exam = b.get("test_exam")
    if exam:
        n_exams = results["data"]["exams"]["test"]["exams"]
        lines += ["", f"Exam level (best-val run, {n_exams} test exams; an exam is positive when "
                  "any of its breasts is, scored by its highest breast probability; thresholds "
                  "on validation exams):", "", "| metric | test [95% CI] |", "|---|---|"]
        lines += [f"| {k} | {_fmt_ci(exam[k])} |" for k in TABLE_METRICS]
    rel = b.get("test_reliability")
    if rel:
        lines += ["", "Calibration (best-val run, test bags; `brier` above):", "",
                  "| predicted probability | bags | mean predicted | observed positive |",
                  "|---|---|---|---|"]
        edges = rel["bin_edges"]
        for i, n in enumerate(rel["counts"]):
            if n:
                lines.append(f"| {'[(' [i > 0]}{edges[i]:.1f}, {edges[i + 1]:.1f}] | {n} | "
                             f"{rel['mean_predicted'][i]:.3f} | {rel['observed_fraction'][i]:.3f} |")
    t = results["timing"]
    lines += ["", f"Timing: compile {t['compile_seconds']:.1f} s, training "
              f"{t['train_seconds']:.1f} s ({t['epochs_run']} epochs, {t['runs']} runs in one "
              "program).", "", "Metric definitions:", ""]
    lines += [f"- `{k}`: {v}" for k, v in results["metric_definitions"].items()]
    return "\n".join(lines) + "\n"


SPLITS_DEFINITION = (
    "Each split seed draws its own patient-grouped 70/10/20 split; on each, the run with the "
    "highest validation AUC is tested once. Mean and sample std across splits of those test "
    "metrics.")
FOLDS_DEFINITION = (
    "Patient-grouped, label-stratified k-fold cross-validation: each fold is the test split once "
    "(a validation split of 10% of the patients drawn from the other folds); on each, the run "
    "with the highest validation AUC is tested once. Mean and sample std across folds of those "
    "test metrics; `pooled`: every bag scored once, by its own fold's selected head.")


def summarize_splits(results_by_seed: dict, *, key: str = "split_seed",
                     definition: str = SPLITS_DEFINITION) -> dict:
    """Repeated patient-grouped splits (or the folds of a cross-validation): per split the
    best-validation run's test metrics (and exam-level AUC where there is one), then their mean
    and sample std across splits.

    results_by_seed: split seed (or fold) -> the results dict of `run_sweep` on that split.
    key: the name of that first column ("split_seed" or "fold").
    """
    per_split = []
    for seed, res in sorted(results_by_seed.items()):
        b = res["best"]
        row = {key: int(seed), "run": b["run"], "seed": b["seed"], "lr": b["lr"],
               "weight_decay": b["weight_decay"], "val_auc": b["val"]["auc"],
               "test": {k: b["test"][k]["value"] for k in TABLE_METRICS},
               "test_bags": res["data"]["bags"]["test"]}
        if b.get("test_exam"):
            row["test_exam_auc"] = b["test_exam"]["auc"]["value"]
        per_split.append(row)

    def spread(values) -> dict:
        v = np.asarray(values, np.float64)
        return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    min=float(v.min()), max=float(v.max()))

    summary = {k: spread([r["test"][k] for r in per_split]) for k in TABLE_METRICS}
    if all("test_exam_auc" in r for r in per_split):
        summary["exam_auc"] = spread([r["test_exam_auc"] for r in per_split])
    return dict(format_version=RESULTS_FORMAT_VERSION, key=key, splits=per_split,
                summary=summary, definition=definition)


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
        rows.append(f"pooled out-of-fold {name}: {_fmt_ci(entry)} over {entry['n']} "
                    f"{'exams' if 'exam' in name else 'bags'}")
    return "\n".join(rows)


def pooled_out_of_fold(run_dirs, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC over every bag of a cross-validation, each scored once by its own fold's selected
    head (the test split of that fold's predictions.csv), with a patient-bootstrap 95% CI; and
    the same at exam level where bag ids name exams."""
    ids, y, p, patients = prediction_arrays(
        [r for d in run_dirs for r in read_predictions(d).values() if r["split"] == "test"])
    if len(set(ids)) != len(ids):
        raise ValueError("pooled_out_of_fold: a bag is in the test split of two folds")
    auc = {"auc": metrics.BOOTSTRAP_METRICS["auc"]}

    def entry(y, p, patients) -> dict:
        # AUC needs no threshold, so no validation split: the y_val/p_val given are unused.
        ci = metrics.bootstrap_ci(y, p, patients, auc, y_val=y, p_val=p, n_boot=n_boot,
                                  seed=seed)["auc"] if n_boot else None
        return dict(value=metrics.roc_auc(y, p), ci95=list(ci) if ci else None, n=int(y.size))

    out = {"auc": entry(y, p, patients)}
    exams = exams_of((ids, y, p, patients))
    if exams is not None:
        out["exam_auc"] = entry(*exams[0][1:])
    return out


def read_predictions(run_dir) -> dict[str, dict]:
    """bag_id -> its row of a finished run's predictions.csv (split, label, p_best, ...)."""
    path = Path(run_dir) / "predictions.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a finished sweep folder (no predictions.csv)")
    with open(path, newline="") as f:
        return {row["bag_id"]: row for row in csv.DictReader(f)}


def prediction_arrays(rows) -> tuple[np.ndarray, ...]:
    """(bag_ids, labels, p_best, patient_ids) of predictions.csv rows, in their order (the
    argument order of metrics.exam_level)."""
    return (np.array([r["bag_id"] for r in rows], dtype=object),
            np.array([int(r["label"]) for r in rows], dtype=np.int64),
            np.array([float(r["p_best"]) for r in rows], dtype=np.float64),
            np.array([r["patient_id"] for r in rows], dtype=object))


def read_split_predictions(run_dir, split: str) -> tuple[np.ndarray, ...]:
    """`prediction_arrays` of one split ("train", "val", "test") of a finished run."""
    return prediction_arrays([r for r in read_predictions(run_dir).values()
                              if r["split"] == split])


def evaluate_external(run_dir, store, *, mapping=None, n_boot=1000, allow_partial=False,
                      command="", predictions_path=None):
    """Apply a run's best head to every bag of another store (an external test cohort).

    Thresholds stay those fixed on the run's own validation split. Returns a results dict
    (best: test metrics with 95% CIs); writes only `predictions_path`, if given: a CSV of
    every bag's ids, label and probability (`bag_id, patient_id, raw_label, label, p`).
    """
    import jax

    from milpf_jax.learning.checkpoint import load_head, read_metadata
    from milpf_jax.data.store import load_packed
    from milpf_jax.learning.train import bag_batch, predict_runs

    run_dir = Path(run_dir)
    head = load_head(run_dir / "best")
    meta = read_metadata(run_dir / "best")
    packed = load_packed(store, mapping=mapping or meta.get("mapping"),
                         allow_partial=allow_partial)
    if packed.dim != head.dim:
        raise ValueError(f"store {store} holds D={packed.dim} embeddings but the head in "
                         f"{run_dir} was trained on D={head.dim}")
    trained_on = meta.get("store_attrs", {})
    attrs = packed.info["attrs"]
    mismatch = {k: (trained_on.get(k), attrs.get(k)) for k in ("encoder", "preprocessing")
                if trained_on.get(k) != attrs.get(k)}
    if mismatch:
        raise ValueError(f"store {store} was made with other settings than the head's training "
                         f"store (trained, this): {mismatch}")
    params = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], head.params)  # a run axis
    probs = predict_runs(params, bag_batch(packed), head.config)[0]
    val = read_split_predictions(run_dir, "val")
    y_val, p_val = val[1], val[2]
    y = packed.labels.astype(int)
    if predictions_path is not None:
        _write_csv(Path(predictions_path), ["bag_id", "patient_id", "raw_label", "label", "p"],
                   ([packed.bag_ids[b], packed.patient_ids[b], packed.raw_labels[b], y[b],
                     f"{probs[b]:.6f}"] for b in range(packed.n_bags)))
    test_exam = exam_metrics((packed.bag_ids, y, probs, packed.patient_ids), val,
                             n_boot=n_boot)
    return dict(
        format_version=RESULTS_FORMAT_VERSION, command=command, run=str(run_dir),
        store=str(packed.info["store"]), store_attrs=attrs, mapping=packed.info["mapping"],
        data=dict(bags=int(packed.n_bags), positives=int(y.sum()),
                  excluded_by_mapping=packed.info["excluded"]),
        test=best_with_ci(y, probs, packed.patient_ids, y_val, p_val, n_boot=n_boot),
        test_exam=test_exam,
        metric_definitions=metrics.METRIC_DEFINITIONS,
    )

