"""Test AUC of a finished run by subgroup: any column of the cohort's manifest.

    python experiments/subgroups.py --run runs/<run> --by density,manufacturer
    python experiments/subgroups.py --run runs/<run> --by lesion_kinds      # the phantom's

Each bag takes the value its images share ("mixed" when they differ). Where the negative test
bags carry no value (a finding column such as lesion_kinds), each value's positive bags are scored
against all negative test bags; otherwise each subgroup's own positives and negatives. The
manifest is the run's cohort's (or --manifest). Writes RUN/subgroups.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from milpf_jax.cli import command_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished sweep folder")
    p.add_argument("--by", required=True, metavar="COLUMN[,COLUMN...]",
                   help="manifest column(s) to split the test bags by")
    p.add_argument("--manifest", help="the cohort's manifest CSV (default: the run's cohort's)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    return p


def main(argv=None) -> int:
    from milpf_jax.reading.cohort import bag_values, manifest_of
    from milpf_jax.sweep import write_json
    from milpf_jax.explanation.explain import run_cohort_spec
    from milpf_jax.evaluation.subgroups import format_subgroups, subgroup_aucs

    args = build_parser().parse_args(argv)
    try:
        manifest = args.manifest or manifest_of(run_cohort_spec(args.run))
    except ValueError as err:
        print(f"error: {err}; here, pass --manifest CSV", file=sys.stderr)
        return 2
    try:
        if manifest is None:
            raise ValueError(f"{args.run}: its cohort has no manifest; pass --manifest")
        results = [subgroup_aucs(args.run, bag_values(manifest, column.strip()),
                                 column=column.strip(), n_boot=args.bootstrap)
                   for column in args.by.split(",") if column.strip()]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.run) / "subgroups.json"
    write_json(out, dict(command=command_line("experiments/subgroups.py", argv),
                         manifest=str(manifest), subgroups=results))
    for r in results:
        print(format_subgroups(r) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
