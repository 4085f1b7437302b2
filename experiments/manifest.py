"""Build a manifest CSV from DICOM headers and a label sheet.

    python experiments/manifest.py --dicom-dir data/dicoms --labels data/labels.csv \
        --out data/manifest.csv

The label sheet is keyed by `accession_number` or `study_instance_uid`, has `birads` (0-6,
4A-4C) or `label` (0/1), and optionally `laterality` (breast-level labels) and `split`. The
manifest gets one row per image (path, patient_id, exam_id, laterality, view, label, ...) and is
read back and validated before this prints its counts. See `milpf_jax.reading.cohort`.

    python experiments/manifest.py ... --pseudonymize private/cohort.key

pseudonymises it after the label join: patient and exam ids become keyed hashes (HMAC-SHA256,
"P-..." and "E-..."), a `view_ref` column ("I-...") names each image in stores, failure lists and
reports instead of its path, and no accession number or DICOM UID is written. The key file is
created (32 random bytes, hex, mode 600) when it does not exist, else read, so a later run gives
the same ids. Keep the key and this manifest (it still holds the paths) private, off the disks
stores and run folders travel to.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter

from milpf_jax.reading.cohort import manifest_from_dicoms, read_or_create_key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom-dir", required=True, help="folder searched recursively")
    parser.add_argument("--labels", required=True, help="label sheet CSV")
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    parser.add_argument(
        "--pseudonymize",
        metavar="KEYFILE",
        help="replace patient/exam ids and image paths by keyed hashes; KEYFILE is created "
        "(mode 600) if missing. Keep it private and outside any store or run folder",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    key = None
    if args.pseudonymize:
        if os.path.realpath(args.pseudonymize) in map(os.path.realpath, (args.out, args.labels)):
            raise SystemExit("--pseudonymize: the key file must not be the manifest or labels")
        key, created = read_or_create_key(args.pseudonymize)
        verb = "created a new" if created else "read the"
        print(
            f"{verb} pseudonymisation key {args.pseudonymize}: keep it private, outside any "
            "store or run folder; the same key gives the same ids next time"
        )
    cohort = manifest_from_dicoms(args.dicom_dir, args.labels, args.out, key=key)
    n_images = sum(len(b.images) for b in cohort.bags)
    n_patients = len({b.patient_id for b in cohort.bags})
    labels = dict(sorted(Counter(b.raw_label for b in cohort.bags).items()))
    print(
        f"wrote {args.out}: {n_images} images, {len(cohort.bags)} bags, {n_patients} patients; "
        f"bags per {cohort.label_kind} label: {labels}"
    )


if __name__ == "__main__":
    main()
