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

Writes DIR/results.json, DIR/results.md, DIR/predictions.csv, DIR/history.npz, DIR/figures/,
DIR/best/ (the best head) and DIR/report.html (one self-contained page; --report-images none
leaves the mammograms out of it), and prints the report's path last.
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import sys
import time

from milpf_jax.cli import command_line, parse_sweep, resolve_store, run, sweep_parser
from milpf_jax.evaluation.tables import format_splits, format_table
from milpf_jax.paths import default_run_dir
from milpf_jax.sweep import run_repeated, run_sweep


def build_parser():
    return sweep_parser(__doc__.split("\n\n")[0])


def main(argv=None) -> int:
    args, opts, cfg, xcfg = parse_sweep(build_parser(), argv)
    command = command_line("experiments/sweep.py", argv)
    t0 = time.perf_counter()
    store, cohort, encoder = resolve_store(opts, xcfg)
    out = opts.out or default_run_dir(cohort, encoder)
    if args.split_seeds or opts.folds:
        summary = run_repeated(store, cfg, out, split_seeds=args.split_seeds or (),
                               folds=opts.folds, command=command, progress=not opts.quiet)
        print(format_splits(summary))
        name = "folds.json" if opts.folds else "splits.json"
        print(f"\nwrote {out}/{name}, figures/ and a run folder per "
              f"{'fold' if opts.folds else 'split'} (total {time.perf_counter() - t0:.0f} s)")
        print(f"report: {out}/report.html")
        return 0
    results = run_sweep(store, cfg, out, command=command, progress=not opts.quiet)
    print(format_table(results))
    print(f"\nwrote {out}/results.json, results.md, predictions.csv, history.npz, figures/ and "
          f"best/ (total {time.perf_counter() - t0:.0f} s)")
    print(f"report: {out}/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
