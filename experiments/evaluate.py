"""Apply a finished sweep's best head to another store: an external test cohort.

    python experiments/evaluate.py --run runs/phantom-efficientnet-lite0-... --store other.zarr

Every bag of the store is a test bag; thresholds stay those fixed on the run's validation split.
Writes RUN/external/<store name>.json (the metrics, printed with 95% patient-bootstrap CIs) and
RUN/external/<store name>.predictions.csv (every bag's probability, e.g. for a reader study).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.cli import add_config_flags, command_line, config_from_args, run
from milpf_jax.config import option
from milpf_jax.data.packed import DataConfig
from milpf_jax.evaluation.metrics import TABLE_METRICS
from milpf_jax.evaluation.results import EvalConfig
from milpf_jax.evaluation.tables import fmt_ci
from milpf_jax.files import write_json
from milpf_jax.sweep import evaluate_external


@dataclass(frozen=True)
class EvaluateCommand:
    run: str = option(help="a sweep folder (holds best/ and predictions.csv)")
    store: str = option(help="the external cohort's embeddings store")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p, EvaluateCommand)
    add_config_flags(p, DataConfig, only=("task", "mapping", "allow_partial"),
                     switches=("allow_partial",),
                     help=dict(mapping="label mapping (default: the one the run trained with)",
                               task="the task (default: the run's own where the store holds it, "
                                    "else the store's first)"))
    add_config_flags(p, EvalConfig, skip=("report_images",))  # writes no report
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(EvaluateCommand, args, parser)
    data = config_from_args(DataConfig, args, parser)
    ev = config_from_args(EvalConfig, args, parser)
    command = command_line("experiments/evaluate.py", argv)
    out = Path(opts.run) / "external" / f"{Path(str(opts.store).rstrip('/')).stem}.json"
    res = evaluate_external(opts.run, opts.store, task=data.task, mapping=data.mapping,
                            n_boot=ev.bootstrap,
                            allow_partial=data.allow_partial, command=command,
                            predictions_path=out.with_suffix(".predictions.csv"))
    write_json(out, res)
    print(f"external test on {opts.store}: {res['data']['bags']} bags, "
          f"{res['data']['positives']} positive")
    for k in TABLE_METRICS:
        print(f"  {k:<24} {fmt_ci(res['test'][k])}")
    if res["test_exam"]:
        n = int(res["test_exam"]["n"]["value"])
        print(f"  {'auc, exam level':<24} {fmt_ci(res['test_exam']['auc'])}  ({n} exams)")
    print(f"wrote {out} and {out.with_suffix('.predictions.csv').name} (every bag's p)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
