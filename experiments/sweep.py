"""Train the MIL-PF head, 36 seeds in one compiled program, on a store or a cohort.

The main job (offline, no arguments): build the phantom cohort, extract it with
EfficientNet-Lite0 from PyPI, train 36 seeds, select on validation, test once:

    python experiments/sweep.py

A real cohort with a hub encoder (extracted once into $MILPF_CACHE, reused after):

    python experiments/sweep.py --cohort manifest.csv --encoder medsiglip

An existing store, a grid of learning rates, an ablation:

    python experiments/sweep.py --store X.zarr --lr 1e-3,2e-3,5e-3 --local-pool max

Five patient-grouped splits, or 5-fold cross-validation (a run folder each, then a summary):

    python experiments/sweep.py --split-seeds 0,1,2,3,4
    python experiments/sweep.py --folds 5

Writes DIR/results.json, DIR/results.md, DIR/predictions.csv and DIR/best/ (the best head).
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import os
import sys
import time
from pathlib import Path

from milpf_jax.cli import add_config_flags, command_line, config_from_args
from milpf_jax.sweep import SweepConfig, format_table, run_sweep
from milpf_jax.learning.head import GLOBAL_POOLS, LOCAL_POOLS
from milpf_jax.data.labels import MAPPINGS
from milpf_jax.learning.train import MODES

DEFAULT_COHORT = "phantom"
DEFAULT_ENCODER = "efficientnet-lite0"


def cache_dir() -> Path:
    return Path(os.environ.get("MILPF_CACHE", Path.home() / ".cache" / "milpf-jax"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data: either --store, or --cohort/--encoder (extract if needed)")
    src.add_argument("--store", help="an embeddings store (local folder or fsspec URL)")
    src.add_argument("--cohort", help=f"manifest CSV, mias:DIR or phantom "
                                      f"(default: {DEFAULT_COHORT})")
    try:
        from milpf_jax.extraction.extract import FIELD_HELP, ExtractConfig
    except ImportError:  # the imaging half is optional for --store runs
        ExtractConfig = None
    if ExtractConfig is not None:
        from milpf_jax.reading.tiling import PRESETS
        from milpf_jax.extraction.encoders import ENCODERS, PRECISIONS

        add_config_flags(src, ExtractConfig, help=FIELD_HELP, choices={
            "encoder": sorted(ENCODERS), "preset": PRESETS, "precision": PRECISIONS})
    p.add_argument("--out", help="run folder (default: runs/<cohort>-<encoder>-<UTC time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--split-seeds", type=_int_list, metavar="S1,S2,...",
                   help="repeat the sweep on each of these patient-grouped splits (one run "
                        "folder each, OUT/split-<seed>/) and summarise the best-validation "
                        "runs' test metrics across splits in OUT/splits.json")
    p.add_argument("--folds", type=int, metavar="N",
                   help="N-fold patient-grouped cross-validation instead: the sweep once per "
                        "fold (OUT/fold-<k>/), each fold the test split once; OUT/folds.json "
                        "holds per-fold results, mean ± std and the pooled out-of-fold AUC")
    train = p.add_argument_group("training (defaults reproduce the paper)")
    add_config_flags(train, SweepConfig, choices=dict(
        global_pool=GLOBAL_POOLS, local_pool=LOCAL_POOLS, mode=MODES, mapping=sorted(MAPPINGS),
        first_layer_dtype=("auto", "float32", "bfloat16")), help=dict(
        lr="Adam learning rate(s), comma list = grid", weight_decay="coupled L2, comma list",
        seeds="runs per grid point", mode="mil, or instance (Table 4 'inf. only')",
        bootstrap="bootstrap resamples for the 95%% intervals (0: none)",
        fold="k/n: train and test on fold k of an n-fold cross-validation (see --folds)"))
    return p


def resolve_store(args, parser) -> tuple[str, str, str]:
    """(store path, cohort name, encoder name) from --store or --cohort/--encoder."""
    given_extract = any(getattr(args, k, None) is not None for k in ("cohort", "encoder"))
    if args.store and given_extract:
        parser.error("give either --store or --cohort/--encoder, not both")
    if args.store:
        from milpf_jax.data.store import Store

        attrs = Store.open(args.store).attrs
        return args.store, str(attrs.get("cohort", "store")), str(attrs.get("encoder", "unknown"))
    from milpf_jax.extraction.extract import ExtractConfig, ensure_store

    xcfg = config_from_args(ExtractConfig, args, parser, **(
        {} if args.encoder else {"encoder": DEFAULT_ENCODER}))
    spec = args.cohort or DEFAULT_COHORT
    path = ensure_store(spec, xcfg, cache_dir(), progress=not args.quiet)
    from milpf_jax.data.store import Store

    return str(path), str(Store.open(path).attrs.get("cohort", spec)), xcfg.encoder


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers, e.g. 0,1,2") from None
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct whole numbers, e.g. 0,1,2")
    return values


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.split_seeds and args.split_seed is not None:
        parser.error("give --split-seed or --split-seeds, not both")
    if args.folds is not None and (args.split_seeds or args.fold or args.folds < 3):
        parser.error("--folds N needs N >= 3 and goes without --split-seeds and --fold")
    cfg = config_from_args(SweepConfig, args, parser)
    command = command_line("experiments/sweep.py", argv)
    t0 = time.perf_counter()
    store, cohort, encoder = resolve_store(args, parser)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out or Path("runs") / f"{cohort}-{encoder}-{stamp}")
    if args.split_seeds or args.folds:
        return _repeated_splits(store, cfg, out, args, command, t0)
    results = run_sweep(store, cfg, out, command=command, progress=not args.quiet)
    print(format_table(results))
    print(f"\nwrote {out}/results.json, results.md, predictions.csv and best/ "
          f"(total {time.perf_counter() - t0:.0f} s)")
    return 0


def _repeated_splits(store, cfg, out: Path, args, command: str, t0: float) -> int:
    """The sweep on several split seeds (--split-seeds) or on every fold (--folds)."""
    from milpf_jax.sweep import (
        FOLDS_DEFINITION,
        format_splits,
        pooled_out_of_fold,
        summarize_splits,
        write_json,
    )

    if args.folds:
        splits = {k: (f"fold {k}/{args.folds}", out / f"fold-{k}",
                      cfg.replace(fold=f"{k}/{args.folds}")) for k in range(args.folds)}
    else:
        splits = {seed: (f"split seed {seed}", out / f"split-{seed}",
                         cfg.replace(split_seed=seed)) for seed in args.split_seeds}
    results = {}
    for key, (name, run_dir, split_cfg) in splits.items():
        results[key] = run_sweep(store, split_cfg, run_dir, command=command,
                                 progress=not args.quiet)
        print(f"{name}:\n{format_table(results[key])}\n")
    if args.folds:
        summary = summarize_splits(results, key="fold", definition=FOLDS_DEFINITION)
        summary["pooled"] = pooled_out_of_fold([d for _, d, _ in splits.values()],
                                               n_boot=cfg.bootstrap, seed=cfg.init_seed)
        name = "folds.json"
    else:
        summary, name = summarize_splits(results), "splits.json"
    summary["command"] = command
    write_json(out / name, summary)
    print(format_splits(summary))
    print(f"\nwrote {out}/{name} and a run folder per {'fold' if args.folds else 'split'} "
          f"(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
