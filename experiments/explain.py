"""Attention maps, lesion boxes and detection mAP@IoU 0.25 for a finished sweep.

The main job's run (the phantom, EfficientNet-Lite0), its test split, tiles re-cut with 75%
overlap (paper, section 3.2), ground truth from the phantom's lesions:

    python experiments/explain.py --run runs/phantom-efficientnet-lite0-<UTC time>

Maps from the tiles already in the run's store, nothing encoded again (seconds):

    python experiments/explain.py --run runs/<run> --maps store

Another cohort, a few bags, your own ground-truth CSV (y0, x0, y1, x1 in source pixels; path or
view_ref; kind):

    python experiments/explain.py --run runs/<run> --cohort manifest.csv --split all --bags 20 \\
        --lesions boxes.csv --out DIR

Writes OUT/overlays/<bag>_<view>.png, OUT/boxes.csv, OUT/bags.csv and OUT/detection.json (OUT:
--out, else RUN/explain/<retile|store>/, where the run's report finds them), and
prints AP overall, per lesion kind and per size bucket (see milpf_jax.explanation.explain for
the definitions).
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.cli import add_config_flags, command_line, config_from_args, run
from milpf_jax.config import option
from milpf_jax.explanation.explain import ExplainConfig, explain_run, format_report


@dataclass(frozen=True)
class ExplainCommand:
    run: str = option(help="a sweep folder (results.json, predictions.csv, best/)")
    out: str | None = option(None, "folder for overlays/, boxes.csv, bags.csv, detection.json "
                                   "(default RUN/explain/<store|retile>/, where the report finds "
                                   "it)")
    cohort: str | None = option(
        None, "manifest CSV, mias:DIR or phantom[:...] (default: the cohort the run was trained "
              "on, from its results.json)")
    quiet: bool = option(False, "no progress bar", switch=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, ExplainCommand)
    add_config_flags(p, ExplainConfig)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(ExplainCommand, args, parser)
    cfg = config_from_args(ExplainConfig, args, parser)
    command = command_line("experiments/explain.py", argv)
    t0 = time.perf_counter()
    out = opts.out or str(Path(opts.run) / "explain" / cfg.maps)
    summary = explain_run(opts.run, out, cfg, cohort=opts.cohort, progress=not opts.quiet,
                          command=command)
    print(format_report(summary))
    print(f"\nwrote {summary['out']}/overlays/, boxes.csv, bags.csv and detection.json "
          f"({time.perf_counter() - t0:.0f} s)")
    report = Path(opts.run) / "report.html"
    if report.is_file() and Path(out).resolve().parent == (Path(opts.run) / "explain").resolve():
        from milpf_jax.evaluation import report as pages
        from milpf_jax.evaluation.runs import read_results
        from milpf_jax.sweep import cohort_views

        results = read_results(opts.run)
        images = (results.get("config") or {}).get("eval", {}).get("report_images", "thumbnails")
        pages.write_run_report(opts.run, images=images, results=results, read_views=cohort_views)
        print(f"report: {report} (with these maps)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
