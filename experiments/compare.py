"""Compare finished runs on their common test bags: each against the first, paired by patient.

    python experiments/compare.py runs/A runs/B [runs/C ...]

Runs made on one cohort with the same --split-seed and --mapping (e.g. one sweep per encoder,
or the ablation's heads) share their test bags. For each run against the reference (the first):
the difference of test AUC, bACC and Spec@Sens0.9 with 95% intervals and p-values from a
paired patient bootstrap (Holm-adjusted over the runs), at bag and, where the bags name exams,
at exam level. Writes OUT/comparison.json and OUT/comparison.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from milpf_jax.cli import add_config_flags, command_line, config_from_args, run
from milpf_jax.config import check, option
from milpf_jax.evaluation.compare import compare_runs, format_comparison, write_comparison
from milpf_jax.evaluation.results import EvalConfig
from milpf_jax.paths import default_run_dir


@dataclass(frozen=True)
class CompareCommand:
    runs: tuple[str, ...] = option(
        help="finished sweep folders (each holds predictions.csv); the first is the reference",
        positional=True, metavar="RUN")
    out: str | None = option(None, "folder for comparison.json and comparison.md "
                                   "(default: runs/compare-<UTC time>)")
    seed: int = option(0, "the bootstrap's seed")
    task: str | None = option(None, "the task every run must have been trained on (default: "
                                    "they must share one)")

    def __post_init__(self):
        check(self, len(self.runs) >= 2, "runs",
              "give at least two run folders (the first is the reference)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, CompareCommand)
    add_config_flags(p, EvalConfig, skip=("report_images",))  # no gallery here
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(CompareCommand, args, parser)
    ev = config_from_args(EvalConfig, args, parser)
    result = compare_runs(opts.runs, task=opts.task, n_boot=ev.bootstrap, seed=opts.seed,
                          command=command_line("experiments/compare.py", argv))
    out = opts.out or default_run_dir("compare")
    write_comparison(out, result)
    print(format_comparison(result))
    print(f"\nwrote {out}/comparison.json and comparison.md")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
