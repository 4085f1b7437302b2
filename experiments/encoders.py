"""Compare frozen encoders on one cohort: a sweep per encoder, then a paired comparison.

    python experiments/encoders.py --cohort manifest.csv --encoders dinov2-base,medsiglip,rad-dino
    python experiments/encoders.py --cohort manifest.csv --encoders dinov2-large=/models/dl,siglip2

Each encoder's store is extracted once into $MILPF_CACHE (reused after), then trained with the
same sweep (36 seeds, selected on validation, test read once) on the same patient-grouped split.
Every encoder after the first is compared with the first on the same test patients (paired
bootstrap: differences with 95% intervals, Holm-adjusted p-values). `NAME=DIR` loads that
encoder from a local folder (--model-dir). All training and extraction flags of sweep.py apply
to every encoder. Writes OUT/<encoder>/ (a run folder each), OUT/comparison.json and .md; an
encoder whose model is not available is skipped with its reason, and the command ends with
exit status 1 once the others are done.
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from milpf_jax.cli import (
    DEFAULT_COHORT,
    command_line,
    parse_sweep,
    resolve_store,
    run,
    sweep_parser,
)
from milpf_jax.errors import error_message
from milpf_jax.evaluation.compare import compare_runs, format_comparison, write_comparison
from milpf_jax.evaluation.tables import format_table
from milpf_jax.extraction.encoders import ENCODERS, EncoderUnavailable
from milpf_jax.paths import default_run_dir
from milpf_jax.sweep import run_sweep


def encoder_list(text: str) -> tuple[tuple[str, str | None], ...]:
    """'a,b=DIR' -> (('a', None), ('b', 'DIR')): registry names, each with an optional folder."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, _, folder = item.partition("=")
        if name not in ENCODERS:
            raise argparse.ArgumentTypeError(
                f"unknown encoder {name!r}; valid names: {', '.join(sorted(ENCODERS))}")
        out.append((name, folder or None))
    names = [n for n, _ in out]
    if len(out) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected two or more distinct encoders, "
                                         "e.g. dinov2-base,medsiglip")
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    parser = sweep_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", type=encoder_list, required=True, metavar="A,B[=DIR],...",
                        help="registry names to compare, the first is the reference; NAME=DIR "
                             "loads NAME from a local folder")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, opts, cfg, xcfg = parse_sweep(parser, argv)
    if opts.store or args.encoder or args.model_dir or args.split_seeds or opts.folds:
        parser.error("--encoders replaces --store, --encoder and --model-dir; "
                     "--split-seeds and --folds are not supported here")
    command = command_line("experiments/encoders.py", argv)
    t0 = time.perf_counter()
    cohort = opts.cohort or DEFAULT_COHORT
    out = Path(opts.out or default_run_dir("encoders", Path(cohort.split(":")[0]).stem))
    run_dirs, unavailable = [], []
    for name, folder in args.encoders:
        try:
            store, _, _ = resolve_store(opts, dataclasses.replace(xcfg, encoder=name,
                                                                  model_dir=folder))
        except EncoderUnavailable as err:  # offline, gated, not downloaded: go on with the rest
            print(f"{name}: skipped: {error_message(err)}", file=sys.stderr, flush=True)
            unavailable.append(name)
            continue
        run_dirs.append(out / name)
        results = run_sweep(store, cfg, run_dirs[-1], command=command, progress=not opts.quiet)
        print(f"{name}:\n{format_table(results)}\n", flush=True)
    if len(run_dirs) >= 2 and cfg.eval.bootstrap:
        comparison = compare_runs(run_dirs, n_boot=cfg.eval.bootstrap, command=command)
        write_comparison(out, comparison)
        print(format_comparison(comparison))
    print(f"\nrun folders (and comparison.json, comparison.md) under {out} "
          f"(total {time.perf_counter() - t0:.0f} s)")
    if unavailable:
        print(f"error: not compared, their models unavailable: {', '.join(unavailable)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
