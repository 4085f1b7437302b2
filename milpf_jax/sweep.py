"""A head-training experiment on one store: train a grid, select on validation, test once.

    packed = load_packed(store, split_seed=0)
    result = train_grid(packed, SweepConfig())         # in memory: every run, the best, metrics
    write_run("runs/x", result, command="...")         # results.json, .md, predictions.csv, best/

`train_grid` trains every (lr, weight decay, seed) run in one compiled program, picks the run
with the best validation AUC, and evaluates the test split once. `run_sweep` is load, train and
write in one call (what `experiments/sweep.py` runs); `run_repeated` does it on several split
seeds or on every fold of a cross-validation and summarises across them; `evaluate_external`
applies a finished run's head to another store. The run folder's format is
`milpf_jax.evaluation.runs`.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milpf_jax import __version__
from milpf_jax.config import as_dict, check, option, with_leaves
from milpf_jax.data import labels
from milpf_jax.data.imported import has_view_embeddings
from milpf_jax.data.packed import DataConfig, PackedBags, load_packed
from milpf_jax.data.store import Store
from milpf_jax.evaluation import figures, metrics, runs, tables
from milpf_jax.evaluation import report as pages
from milpf_jax.evaluation.results import (
    FOLDS_DEFINITION,
    RESULT_DEFINITIONS,
    EvalConfig,
    best_with_ci,
    evaluate_runs,
    exam_counts,
    exam_metrics,
    packed_scores,
    pooled_out_of_fold,
    reliability,
    summarize,
    summarize_splits,
)
from milpf_jax.files import write_json
from milpf_jax.learning.train import TrainConfig


@dataclass(frozen=True)
class SweepConfig:
    """One experiment. Defaults reproduce the paper's full MIL-PF head and the original code's
    training (Adam lr 2e-3, L2 1e-4, <= 700 epochs, patience 20); 36 runs (paper, section 3.1).

    lr and weight_decay are tuples: more than one value makes a grid, trained in the same
    program as the seeds. data: the label mapping and split; train: the head and its training;
    eval: the intervals.
    """

    seeds: int = option(36, "runs per grid point")
    lr: tuple[float, ...] = option((2e-3,), "Adam learning rate(s), comma list = grid")
    weight_decay: tuple[float, ...] = option((1e-4,), "coupled L2, comma list")
    init_seed: int = option(0, "seed of every run's initialisation (run s: fold_in(seed, s)) "
                               "and of the bootstrap")
    data: DataConfig = option(DataConfig())
    train: TrainConfig = option(TrainConfig())
    eval: EvalConfig = option(EvalConfig())

    def __post_init__(self):
        check(self, self.seeds >= 1, "seeds", f"{self.seeds}; expected >= 1")
        check(self, len(self.lr) >= 1 and all(x > 0 for x in self.lr), "lr",
              f"{self.lr}; expected one or more rates > 0")
        check(self, len(self.weight_decay) >= 1 and all(x >= 0 for x in self.weight_decay),
              "weight_decay", f"{self.weight_decay}; expected one or more values >= 0")

    @classmethod
    def of(cls, **leaves) -> SweepConfig:
        """A SweepConfig from leaf names, as the flags name them:
        `SweepConfig.of(epochs=50, global_pool="mean", bootstrap=0)`."""
        return with_leaves(cls, **leaves)

    def replace(self, **changes) -> SweepConfig:
        """A copy with fields changed: top-level fields (`train=...`) or leaves by name
        (`split_seed=3`)."""
        top = {k: changes.pop(k) for k in list(changes) if k in ("data", "train", "eval")}
        return with_leaves(dataclasses.replace(self, **top) if top else self, **changes)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """A trained grid in memory: `train_grid`'s answer.

    config: the sweep as run (the head's dim and first-layer dtype made concrete); table: seed,
    lr and weight decay of each run; fit: the training's FitResult (state, history, timing);
    probs [R, B]: every run's best-validation head on every bag of `packed`; best: the run with
    the highest validation AUC; results: the JSON-ready summary that results.json holds.
    """

    packed: PackedBags
    config: SweepConfig
    table: list
    fit: object
    probs: np.ndarray
    best: int
    results: dict

    def best_params(self):
        """The best run's head parameters (numpy, no run axis)."""
        import jax

        return jax.tree_util.tree_map(lambda a: np.asarray(a[self.best]),
                                      self.fit.state.best_params)


def environment() -> dict:
    import jax

    return dict(package_version=__version__, jax=jax.__version__, python=platform.python_version(),
                backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()])


def check_view_embeddings(attrs: dict, cfg: SweepConfig, store=None) -> None:
    """A store imported without view embeddings trains only heads without a global stream:
    refused, naming the store and the flag, before anything is loaded or trained."""
    pool = cfg.train.head.global_pool
    if not has_view_embeddings(attrs) and pool != "none":
        raise ValueError(
            f"store {store or attrs.get('cohort', '')} holds no view embeddings (its import had "
            f"tile features only), so only --global-pool none heads can train on it; this head "
            f"has global_pool {pool!r}")


def train_grid(packed: PackedBags, cfg: SweepConfig = SweepConfig(), *,
               progress: bool = True) -> SweepResult:
    """Train every run of the grid on packed bags, select on validation, test once, in memory.

    The training and validation splits train and select; the test split is predicted once, by
    every run's best-validation parameters, and the selected run's test metrics get 95%
    patient-bootstrap intervals (cfg.eval.bootstrap resamples).
    """
    import jax

    from milpf_jax.learning.batches import bag_batch
    from milpf_jax.learning.train import fit, hparam_grid, make_train_data, predict_runs

    check_view_embeddings(packed.info.get("attrs", {}), cfg, packed.info.get("store"))
    head = cfg.train.head.replace(dim=packed.dim).resolved()
    cfg = cfg.replace(train=cfg.train.replace(head=head))
    data = make_train_data(packed, cfg.train)
    keys, hp, table = hparam_grid(cfg.seeds, cfg.lr, cfg.weight_decay, seed=cfg.init_seed)
    result = fit(keys, hp, data, cfg.train, progress=progress)
    state = jax.device_get(result.state)

    # Selection reads validation only; the test split is evaluated once, below.
    best = int(np.argmax(state.best_val_auc))
    probs = predict_runs(result.state.best_params, bag_batch(packed, block=head.impl.tile_block),
                         head)  # [R, B]
    run_metrics = evaluate_runs(probs, packed)
    val, test = packed.splits == labels.VAL, packed.splits == labels.TEST
    test_scores, val_scores = (packed_scores(packed, probs[best], m) for m in (test, val))
    n_boot, seed = cfg.eval.bootstrap, cfg.init_seed
    best_test = best_with_ci(test_scores.labels, test_scores.p, test_scores.patients,
                             val_scores.labels, val_scores.p, n_boot=n_boot, seed=seed)
    per_run = [dict(t, best_epoch=int(state.best_epoch[r]),
                    val_auc_during_training=float(state.best_val_auc[r]), **run_metrics[r])
               for r, t in enumerate(table)]
    attrs = packed.info.get("attrs", {})
    results = dict(
        format_version=runs.RESULTS_FORMAT_VERSION,
        config=as_dict(cfg),
        head=as_dict(head),
        cohort=attrs.get("cohort_spec") or None,
        store=None if packed.info.get("store") is None else str(packed.info["store"]),
        store_attrs=attrs,
        data=dict(
            task=packed.info.get("task"), mapping=packed.info["mapping"],
            split_seed=cfg.data.split_seed, fold=cfg.data.fold,
            excluded_by_mapping=packed.info["excluded"], skipped_unfinished=packed.info["skipped"],
            bags={s: int(np.sum(packed.splits == i)) for i, s in enumerate(labels.SPLIT_NAMES)},
            positives={s: int(np.sum(packed.labels[packed.splits == i]))
                       for i, s in enumerate(labels.SPLIT_NAMES)},
            tiles=int(len(packed.tiles)), dim=int(packed.dim),
            exams=exam_counts(packed),
        ),
        runs=per_run,
        summary=summarize(run_metrics, "test"),
        summary_val=summarize(run_metrics, "val"),
        best=dict(run=best, **table[best], best_epoch=int(state.best_epoch[best]),
                  val=run_metrics[best]["val"], test=best_test,
                  test_exam=exam_metrics(test_scores, val_scores, n_boot=n_boot, seed=seed),
                  test_reliability=reliability(test_scores.labels, test_scores.p)),
        timing=dict(compile_seconds=result.compile_seconds, train_seconds=result.train_seconds,
                    epochs_run=result.epochs_run, runs=len(table)),
        environment=environment(),
        metric_definitions=dict(metrics.METRIC_DEFINITIONS, **RESULT_DEFINITIONS),
    )
    return SweepResult(packed=packed, config=cfg, table=table, fit=result, probs=probs,
                       best=best, results=results)


def write_run(out_dir, result: SweepResult, *, command: str = "") -> dict:
    """The run folder of a trained grid (`milpf_jax.evaluation.runs`); returns results.json's
    dict (with `command`)."""
    from milpf_jax.learning.checkpoint import save_head
    from milpf_jax.learning.inference import Head

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(result.results, command=command, timing=dict(result.results["timing"]))
    runs.write_predictions(out / "predictions.csv", result.packed, result.probs, result.best)
    best, state, info = result.best, result.fit.state, result.packed.info
    cfg = result.config
    save_head(out / "best", Head(params=result.best_params(), config=cfg.train.head.replace(
        first_layer_dtype="float32")), metadata=dict(
        store_attrs=info.get("attrs", {}), seed=result.table[best]["seed"],
        lr=result.table[best]["lr"], weight_decay=result.table[best]["weight_decay"],
        val_auc=float(np.asarray(state.best_val_auc)[best]),
        best_epoch=int(np.asarray(state.best_epoch)[best]), task=info.get("task"),
        mapping=info["mapping"],
        split_seed=cfg.data.split_seed, fold=cfg.data.fold, cohort=results["cohort"],
        command=command))
    history = result.fit.history
    runs.write_history(out / runs.HISTORY_FILE, history.loss, history.val_auc, history.active)
    markdown = tables.format_markdown(results)
    runs.write_results(out, results, markdown)  # first: a figure's failure loses no result
    write_pictures(out, results, images=cfg.eval.report_images)
    runs.write_results(out, results, markdown)  # again, with the figures' and report's timing
    return results


def write_pictures(run_dir, results: dict, *, images: str = "thumbnails") -> dict:
    """RUN/figures/ and RUN/report.html of a run folder; their seconds go into
    results["timing"] (figures_seconds, report_seconds). Returns results."""
    t0 = time.perf_counter()
    figures.write_run_figures(run_dir, results)
    t1 = time.perf_counter()
    pages.write_run_report(run_dir, images=images, results=results, read_views=cohort_views)
    results["timing"] = dict(results.get("timing") or {}, figures_seconds=t1 - t0,
                             report_seconds=time.perf_counter() - t1)
    return results


def _plain_view(ref, images: str):
    """(view code, caption, data URI or None, note) of one view read through the reader, in
    the file's own frame (as radiologists hang it)."""
    from PIL import Image

    from milpf_jax.reading.imaging import ImageReadError, read_image

    caption = ref.ref or ref.view
    try:
        im = read_image(ref.path, laterality=ref.laterality, view=ref.view,
                        allow_excluded=True)
    except (ImageReadError, OSError) as err:
        reason = "not readable" if ref.ref else str(err)
        return ref.view, caption, None, reason.replace(ref.path, "(file)")
    pixels = im.pixels[:, ::-1] if im.flipped else im.pixels  # [H, W] source frame
    grey = Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "L")
    if images == "thumbnails":  # shrink before encoding: most of the time is here
        grey = grey.reduce(max(1, max(grey.size) // (2 * pages.THUMBNAIL_PX)))
    return ref.view, caption, pages.encode_image(grey, images), ""


def cohort_views(results: dict, bag_ids, images: str) -> tuple[dict[str, list], str]:
    """bag_id -> its views read through the reader from the run's recorded cohort (the plain
    views of report.html's gallery, `write_run_report`'s read_views); and a note when there
    are none (no cohort recorded, or it cannot be read)."""
    spec = results.get("cohort")
    if not spec:
        return {}, "the run records no cohort (a store made without one): no views to show"
    from milpf_jax.reading.imaging import READER_VERSION
    from milpf_jax.reading.sources import read_cohort

    try:
        cohort = read_cohort(spec, progress=False)
    except (OSError, ValueError) as err:
        return {}, f"the run's cohort could not be read ({type(err).__name__}): no views shown"
    wanted = set(bag_ids)
    specs = [b for b in cohort.bags if b.bag_id in wanted]
    refs = [(b.bag_id, ref) for b in specs for ref in b.images]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # I/O, decoding
        views = list(pool.map(lambda br: _plain_view(br[1], images), refs))
    out: dict[str, list] = {}
    for (bag, _), view in zip(refs, views):
        out.setdefault(bag, []).append(view)
    note = ""
    stored = str(((results.get("store_attrs") or {}).get("preprocessing") or {})
                 .get("reader_version", READER_VERSION))
    if stored != str(READER_VERSION):
        note = (f"the store was read under reading rule {stored}, these views under rule "
                f"{READER_VERSION}")
    return out, note


def run_sweep(store, cfg: SweepConfig, out_dir, *, command: str = "", progress: bool = True):
    """Load the store, train the grid, write the run folder; returns results.json's dict."""
    if not isinstance(store, Store):
        store = Store.open(store)
    check_view_embeddings(store.attrs, cfg, store.path)
    t_load = time.perf_counter()
    packed = load_packed(store, **dataclasses.asdict(cfg.data))
    load_seconds = time.perf_counter() - t_load
    result = train_grid(packed, cfg, progress=progress)
    result.results["timing"]["load_seconds"] = load_seconds
    return write_run(out_dir, result, command=command)


def run_repeated(store, cfg: SweepConfig, out_dir, *, split_seeds=(), folds: int | None = None,
                 command: str = "", progress: bool = True, report=print) -> dict:
    """The sweep on several split seeds (OUT/split-<seed>/, OUT/splits.json) or on every fold of
    an n-fold cross-validation (OUT/fold-<k>/, OUT/folds.json, with the pooled out-of-fold AUC).
    `report` gets each split's table as it finishes. OUT/figures/folds.png and OUT/report.html
    show every split's test AUC. Returns the summary written."""
    out = Path(out_dir)
    if folds:
        splits = {k: (f"fold {k}/{folds}", out / f"fold-{k}",
                      cfg.replace(data=cfg.data.replace(fold=f"{k}/{folds}")))
                  for k in range(folds)}
    else:
        splits = {seed: (f"split seed {seed}", out / f"split-{seed}",
                         cfg.replace(data=cfg.data.replace(split_seed=seed)))
                  for seed in split_seeds}
    results = {}
    for key, (name, run_dir, split_cfg) in splits.items():
        results[key] = run_sweep(store, split_cfg, run_dir, command=command, progress=progress)
        report(f"{name}:\n{tables.format_table(results[key])}\n")
    if folds:
        summary = summarize_splits(results, key="fold", definition=FOLDS_DEFINITION)
        summary["pooled"] = pooled_out_of_fold(
            [runs.read_split_predictions(d, "test") for _, d, _ in splits.values()],
            n_boot=cfg.eval.bootstrap, seed=cfg.init_seed)
        name = "folds.json"
    else:
        summary, name = summarize_splits(results), "splits.json"
    summary = dict(format_version=runs.RESULTS_FORMAT_VERSION, command=command, **summary)
    write_json(out / name, summary)
    pages.write_splits_pictures(out, summary, results,
                                 {key: name for key, (name, _, _) in splits.items()})
    return summary


def evaluate_external(run_dir, store, *, task=None, mapping=None, n_boot=1000,
                      allow_partial=False, command="", predictions_path=None) -> dict:
    """Apply a run's best head to every bag of another store (an external test cohort).

    Thresholds stay those fixed on the run's own validation split. The task is `task`, else the
    run's own where the store holds it, else the store's default. Returns a results dict
    (test: metrics with 95% CIs); writes only `predictions_path`, if given: every bag's ids,
    label and probability (`milpf_jax.evaluation.runs.SCORE_COLUMNS`).
    """
    from milpf_jax.learning.checkpoint import load_head, read_metadata
    from milpf_jax.learning.train import predict_head

    run_dir = Path(run_dir)
    head = load_head(runs.best_dir(run_dir))
    meta = read_metadata(runs.best_dir(run_dir))
    if not isinstance(store, Store):
        store = Store.open(store)
    held = [t for t, _ in store.tasks()]
    if task is None and meta.get("task") in held:
        task = meta["task"]
    packed = load_packed(store, task=task, mapping=mapping or meta.get("mapping"),
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
    probs = predict_head(head, packed)
    val = runs.read_split_predictions(run_dir, "val")
    if predictions_path is not None:
        Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
        runs.write_scores(predictions_path, packed, probs)
    scores = packed_scores(packed, probs)
    return dict(
        format_version=runs.RESULTS_FORMAT_VERSION, command=command, run=str(run_dir),
        cohort=attrs.get("cohort_spec") or None,
        store=str(packed.info["store"]), store_attrs=attrs, task=packed.info["task"],
        mapping=packed.info["mapping"],
        data=dict(bags=int(packed.n_bags), positives=int(scores.labels.sum()),
                  excluded_by_mapping=packed.info["excluded"]),
        test=best_with_ci(scores.labels, scores.p, scores.patients, val.labels, val.p,
                          n_boot=n_boot),
        test_exam=exam_metrics(scores, val, n_boot=n_boot),
        metric_definitions=metrics.METRIC_DEFINITIONS,
    )
