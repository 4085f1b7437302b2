"""Compare frozen encoders on one cohort: a sweep per encoder, then a paired comparison.

    python experiments/encoders.py --cohort manifest.csv --encoders dinov2-base,medsiglip,rad-dino
    python experiments/encoders.py --cohort manifest.csv --encoders dinov2-large=/models/dl,siglip2

Each encoder's store is extracted once into $MILPF_CACHE (reused after), then trained with the
same sweep (36 seeds, selected on validation, test read once) on the same patient-grouped split.
Every encoder after the first is compared with the first on the same test patients (paired
bootstrap: differences with 95% intervals, Holm-adjusted p-values). `NAME=DIR` loads that
encoder from a local folder (--model-dir). All training and extraction flags of sweep.py apply
to every encoder. Writes OUT/<encoder>/ (a run folder each), OUT/comparison.json and .md.
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import sys
import time
from pathlib import Path


def encoder_list(text: str) -> tuple[tuple[str, str | None], ...]:
    """'a,b=DIR' -> (('a', None), ('b', 'DIR')): registry names, each with an optional folder."""
    from milpf_jax.extraction.encoders import ENCODERS

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


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep

    from milpf_jax.cli import command_line, config_from_args
    from milpf_jax.evaluation.compare import compare_runs, format_comparison, write_comparison
    from milpf_jax.extraction.encoders import EncoderUnavailable
    from milpf_jax.sweep import SweepConfig, format_table, run_sweep

    parser = sweep.build_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--encoders", type=encoder_list, required=True, metavar="A,B[=DIR],...",
                        help="registry names to compare, the first is the reference; NAME=DIR "
                             "loads NAME from a local folder")
    args = parser.parse_args(argv)
    if args.store or args.encoder or args.model_dir or args.split_seeds:
        parser.error("--encoders replaces --store, --encoder and --model-dir; "
                     "--split-seeds is not supported here")
    cfg = config_from_args(SweepConfig, args, parser)
    command = command_line("experiments/encoders.py", argv)
    t0 = time.perf_counter()
    cohort = args.cohort or sweep.DEFAULT_COHORT
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out or Path("runs") / f"encoders-{Path(cohort.split(':')[0]).stem}-{stamp}")
    run_dirs, unavailable = [], []
    for name, folder in args.encoders:
        args.encoder, args.model_dir = name, folder
        try:
            store, _, _ = sweep.resolve_store(args, parser)
        except EncoderUnavailable as err:  # offline, gated, not downloaded: go on with the rest
            print(f"{name}: skipped: {err}", file=sys.stderr, flush=True)
            unavailable.append(name)
            continue
        run_dirs.append(out / name)
        results = run_sweep(store, cfg, run_dirs[-1], command=command, progress=not args.quiet)
        print(f"{name}:\n{format_table(results)}\n", flush=True)
    if len(run_dirs) >= 2 and cfg.bootstrap:
        comparison = compare_runs(run_dirs, n_boot=cfg.bootstrap, command=command)
        write_comparison(out, comparison)
        print(format_comparison(comparison))
    print(f"\nrun folders (and comparison.json, comparison.md) under {out} "
          f"(total {time.perf_counter() - t0:.0f} s)")
    if unavailable:
        print(f"not compared, their models unavailable: {', '.join(unavailable)}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
