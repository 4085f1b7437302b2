"""Apply a finished sweep's best head to another store: an external test cohort.

    python experiments/evaluate.py --run runs/phantom-efficientnet-lite0-... --store other.zarr

Every bag of the store is a test bag; thresholds stay those fixed on the run's validation split.
Writes RUN/external/<store name>.json (the metrics, printed with 95% patient-bootstrap CIs) and
RUN/external/<store name>.predictions.csv (every bag's probability, e.g. for a reader study).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from milpf_jax.cli import command_line
from milpf_jax.sweep import TABLE_METRICS, _fmt_ci, evaluate_external, write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a sweep folder (holds best/ and predictions.csv)")
    p.add_argument("--store", required=True, help="the external cohort's embeddings store")
    p.add_argument("--mapping", help="label mapping (default: the one the run trained with)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--allow-partial", action="store_true", help="skip unfinished bags")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = command_line("experiments/evaluate.py", argv)
    out = Path(args.run) / "external" / f"{Path(str(args.store).rstrip('/')).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = evaluate_external(args.run, args.store, mapping=args.mapping, n_boot=args.bootstrap,
                            allow_partial=args.allow_partial, command=command,
                            predictions_path=out.with_suffix(".predictions.csv"))
    write_json(out, res)
    print(f"external test on {args.store}: {res['data']['bags']} bags, "
          f"{res['data']['positives']} positive")
    for k in TABLE_METRICS:
        print(f"  {k:<24} {_fmt_ci(res['test'][k])}")
    if res["test_exam"]:
        n = int(res["test_exam"]["n"]["value"])
        print(f"  {'auc, exam level':<24} {_fmt_ci(res['test_exam']['auc'])}  ({n} exams)")
    print(f"wrote {out} and {out.with_suffix('.predictions.csv').name} (every bag's p)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
