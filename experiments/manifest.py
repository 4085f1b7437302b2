"""Build a manifest CSV from DICOM headers and a label sheet.

    python experiments/manifest.py --dicom-dir data/dicoms --labels data/labels.csv \
        --out data/manifest.csv

The label sheet is keyed by `accession_number` or `study_instance_uid`, has `birads` (0-6,
4A-4C) or `label` (0/1), and optionally `laterality` (breast-level labels) and `split`. The
manifest gets one row per image (path, patient_id, exam_id, laterality, view, label, ...) and is
read back and validated before this prints its counts. See `milpf_jax.cohort`.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

from milpf_jax.cohort import manifest_from_dicoms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom-dir", required=True, help="folder searched recursively")
    parser.add_argument("--labels", required=True, help="label sheet CSV")
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cohort = manifest_from_dicoms(args.dicom_dir, args.labels, args.out)
    n_images = sum(len(b.images) for b in cohort.bags)
    n_patients = len({b.patient_id for b in cohort.bags})
    labels = dict(sorted(Counter(b.raw_label for b in cohort.bags).items()))
    print(
        f"wrote {args.out}: {n_images} images, {len(cohort.bags)} bags, {n_patients} patients; "
        f"bags per {cohort.label_kind} label: {labels}"
    )


if __name__ == "__main__":
    main()
