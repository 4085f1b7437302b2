"""Test AUC of a finished run by subgroup: any column of the cohort's manifest.

    python experiments/subgroups.py --run runs/<run> --by density,manufacturer
    python experiments/subgroups.py --run runs/<run> --by lesion_kinds      # the phantom's

Each bag takes the value its images share ("mixed" when they differ). Where the negative test
bags carry no value (a finding column such as lesion_kinds), each value's positive bags are scored
against all negative test bags; otherwise each subgroup's own positives and negatives. The
manifest is the run's cohort's (or --manifest). Writes RUN/subgroups.json and
RUN/figures/subgroups-<column>.png (and RUN/report.html again, where there is one).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.cli import add_config_flags, command_line, config_from_args, run
from milpf_jax.config import option
from milpf_jax.errors import error_message
from milpf_jax.evaluation.figures import save_figure, subgroups_figure
from milpf_jax.evaluation.report import write_run_report
from milpf_jax.evaluation.results import EvalConfig
from milpf_jax.evaluation.runs import read_results, recorded_cohort
from milpf_jax.evaluation.subgroups import format_subgroups, subgroup_aucs
from milpf_jax.files import write_json
from milpf_jax.reading.manifest import bag_values
from milpf_jax.reading.sources import manifest_of
from milpf_jax.sweep import cohort_views


@dataclass(frozen=True)
class SubgroupsCommand:
    run: str = option(help="a finished sweep folder")
    by: str = option(help="manifest column(s) to split the test bags by",
                     metavar="COLUMN[,COLUMN...]")
    manifest: str | None = option(None, "the cohort's manifest CSV (default: the run's "
                                         "cohort's)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, SubgroupsCommand)
    add_config_flags(p, EvalConfig, skip=("report_images",))  # no gallery here
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(SubgroupsCommand, args, parser)
    ev = config_from_args(EvalConfig, args, parser)
    if opts.manifest:
        manifest = opts.manifest
    else:
        try:
            manifest = manifest_of(recorded_cohort(opts.run))
        except (OSError, ValueError) as err:
            raise ValueError(f"{error_message(err)}; pass --manifest CSV") from None
    if manifest is None:
        raise ValueError(f"{opts.run}: its cohort is read without a manifest; pass --manifest")
    results = [subgroup_aucs(opts.run, bag_values(manifest, column.strip()),
                             column=column.strip(), n_boot=ev.bootstrap)
               for column in opts.by.split(",") if column.strip()]
    out = Path(opts.run) / "subgroups.json"
    write_json(out, dict(command=command_line("experiments/subgroups.py", argv),
                         manifest=str(manifest), subgroups=results))
    run_dir = Path(opts.run)
    for r in results:
        save_figure(subgroups_figure(r), run_dir / "figures",
                    f"subgroups-{re.sub(r'[^A-Za-z0-9._-]+', '_', r['column'])}")
        print(format_subgroups(r) + "\n")
    if (run_dir / "report.html").is_file():  # the run's page shows every figure: make it again
        images = read_results(run_dir).get("config", {}).get("eval", {}).get(
            "report_images", "thumbnails")
        write_run_report(run_dir, images=images, read_views=cohort_views)
    print(f"wrote {out} and figures/subgroups-<column>.png")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
