"""Score new exams with a finished run: DICOMs in, breast and exam scores out.

A folder of MG DICOMs, no label sheet needed (patient = PatientID, exam = StudyInstanceUID,
laterality = ImageLaterality else Laterality, view = ViewPosition else the View Code Sequence):

    python experiments/predict.py --run runs/phantom-efficientnet-lite0-<UTC time> \\
        --dicom-dir new-exams/ --out scored/

Or any cohort spec (a manifest CSV, `phantom`, `mias:DIR`); the run's own cohort reuses the
run's store and encodes nothing:

    python experiments/predict.py --run runs/<run> --cohort manifest.csv --out scored/

Images are read, tiled and encoded as the run's training store was, into a cached store (a
rerun encodes nothing). Writes OUT/predictions.csv (bag_id, patient_id, exam_id, laterality,
views, p, flag_bacc, flag_sens90), OUT/exams.csv (an exam's p is the maximum over its breasts),
OUT/failures.csv (bag_id, path, stage, reason: files and bags left out) and OUT/summary.json
(counts, thresholds, and the new scores' distribution against the run's validation scores,
also printed: thresholds fixed on one site's validation split may not transfer to another).
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import check, check_choices, option
from milpf_jax.extraction.config import ExtractConfig
from milpf_jax.paths import run_stamp


@dataclass(frozen=True)
class PredictCommand:
    run: str = option(help="a finished sweep folder (best/, results.json, predictions.csv)")
    dicom_dir: str | None = option(None, "a folder of MG DICOMs to score (searched recursively; "
                                         "no labels needed)")
    cohort: str | None = option(None, "a cohort spec to score instead: a manifest CSV, "
                                      "phantom, mias:DIR, ...")
    out: str | None = option(None, "output folder; default RUN/predict/<input name>-<UTC time>")
    maps: Literal["store", "retile"] = option(
        "store", "attention maps from the tiles in the store (store: nothing encoded again) or "
                 "from the views re-tiled at 75% overlap and encoded again (retile: the paper's)")
    dicom_out: bool = option(False, "also write OUT/dicom/<exam>/: a Secondary Capture and a "
                                    "Segmentation per view, one SR per exam")
    copy_identity: bool = option(False, "copy patient name, birth date, sex, accession number "
                                        "and referring physician into the DICOM outputs")
    thresholds_from: str | None = option(
        None, "flag at other thresholds: a results.json, or a JSON with threshold, "
              "threshold_sens90 (and exam_threshold, exam_threshold_sens90)", metavar="FILE")
    quiet: bool = option(False, "no progress bars")

    def __post_init__(self):
        check_choices(self)
        check(self, (self.dicom_dir is None) != (self.cohort is None), ("dicom_dir", "cohort"),
              "give exactly one of --dicom-dir and --cohort")
        check(self, self.dicom_out or not self.copy_identity, "copy_identity",
              "goes with --dicom-out")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p, PredictCommand, switches=("quiet", "dicom_out", "copy_identity"))
    add_config_flags(p, ExtractConfig, only=("model_dir", "workers", "device"),
                     help=dict(device="torch device for the encoder, or auto"))
    return p


def default_out(opts: PredictCommand) -> Path:
    source = opts.dicom_dir or opts.cohort
    name = Path(str(source).rstrip("/")).stem or "input"
    return Path(opts.run) / "predict" / f"{name.replace(':', '-')}-{run_stamp()}"


def main(argv=None) -> int:
    from milpf_jax.explanation.predict import (
        NoUsableImages,
        explain_scored,
        format_summary,
        predict_images,
        read_thresholds,
        write_maps,
        write_predictions,
    )
    from milpf_jax.files import write_dict_csv

    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(PredictCommand, args, parser)
    settings = {k: getattr(args, k) for k in ("model_dir", "workers", "device")
                if getattr(args, k, None) is not None}
    out = Path(opts.out) if opts.out else default_out(opts)
    thresholds = read_thresholds(opts.thresholds_from) if opts.thresholds_from else None
    try:
        result = predict_images(opts.run, opts.dicom_dir or opts.cohort, thresholds=thresholds,
                                progress=not opts.quiet, **settings)
    except NoUsableImages as err:
        from milpf_jax.extraction.failures import FAILURE_COLUMNS

        out.mkdir(parents=True, exist_ok=True)
        write_dict_csv(out / "failures.csv", FAILURE_COLUMNS, err.failures)
        raise ValueError(f"{err} (every file and its reason: {out / 'failures.csv'})") from None
    paths = write_predictions(out, result)
    print(format_summary(result.summary))
    explained = explain_scored(opts.run, result, result.cohort, maps=opts.maps,
                               progress=not opts.quiet, **{k: v for k, v in settings.items()
                                                           if k == "device"})
    drawn = write_maps(out, result, explained, dicom_out=opts.dicom_out,
                       copy_identity=opts.copy_identity)
    print(f"maps ({opts.maps}): {drawn['overlays']} overlays in {out / 'overlays'}"
          + (f"; {len(drawn['dicom'])} DICOM objects in {out / 'dicom'} (index.csv lists them)"
             if opts.dicom_out else ""))
    for bag in result.summary["unscored_breasts"][:10]:
        reasons = sorted({f["reason"] for f in result.failures if f["bag_id"] == bag})
        print(f"  no score for {bag}: {'; '.join(reasons) or 'every view failed'}")
    print(f"wrote {paths['predictions']}, {paths['exams'].name}, {paths['failures'].name} and "
          f"{paths['summary'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
