"""Compare finished runs on their common test bags: each against the first, paired by patient.

    python experiments/compare.py runs/A runs/B [runs/C ...]

Runs made on one cohort with the same --split-seed and --mapping (e.g. one sweep per encoder,
or the ablation's heads) share their test bags. For each run against the reference (the first):
the difference of test AUC, bACC and Spec@Sens0.9 with 95% intervals and p-values from a
paired patient bootstrap (Holm-adjusted over the runs), at bag and, where the bag ids name
exams, at exam level. Writes OUT/comparison.json and OUT/comparison.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from milpf_jax.cli import command_line
from milpf_jax.evaluation.compare import compare_runs, format_comparison, write_comparison


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="finished sweep folders (each holds predictions.csv); the first is the "
                        "reference")
    p.add_argument("--out", help="folder for comparison.json and comparison.md "
                                 "(default: runs/compare-<UTC time>)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two run folders (the first is the reference)")
    try:
        result = compare_runs(args.runs, n_boot=args.bootstrap, seed=args.seed,
                              command=command_line("experiments/compare.py", argv))
    except (ValueError, FileNotFoundError) as err:  # runs not made on one split, no such run
        print(f"error: {err}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out or Path("runs") / f"compare-{stamp}")
    write_comparison(out, result)
    print(format_comparison(result))
    print(f"\nwrote {out}/comparison.json and comparison.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
