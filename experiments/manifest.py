"""Build a manifest CSV from DICOM headers and a label sheet.

    python experiments/manifest.py --dicom-dir data/dicoms --labels data/labels.csv \
        --out data/manifest.csv

The label sheet is keyed by `accession_number` or `study_instance_uid`, has `birads` (0-6,
4A-4C) or `label` (0/1), and optionally `laterality` (breast-level labels) and `split`. The
manifest gets one row per image (path, patient_id, exam_id, laterality, view, label, ...) and is
read back and validated before this prints its counts. See `milpf_jax.reading.dicom_manifest`.

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
import sys
from collections import Counter
from dataclasses import dataclass

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import check, option
from milpf_jax.reading.dicom_manifest import manifest_from_dicoms
from milpf_jax.reading.pseudonym import read_or_create_key


@dataclass(frozen=True)
class ManifestCommand:
    dicom_dir: str = option(help="folder searched recursively")
    labels: str = option(help="label sheet CSV")
    out: str = option(help="manifest CSV to write")
    pseudonymize: str | None = option(
        None, "replace patient/exam ids and image paths by keyed hashes; KEYFILE is created "
              "(mode 600) if missing. Keep it private and outside any store or run folder",
        metavar="KEYFILE")

    def __post_init__(self):
        key = self.pseudonymize
        check(self, key is None or os.path.realpath(key) not in map(os.path.realpath,
                                                                    (self.out, self.labels)),
              "pseudonymize", "the key file must not be the manifest or the label sheet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(parser, ManifestCommand)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = config_from_args(ManifestCommand, parser.parse_args(argv), parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    key = None
    if opts.pseudonymize:
        key, created = read_or_create_key(opts.pseudonymize)
        verb = "created a new" if created else "read the"
        print(
            f"{verb} pseudonymisation key {opts.pseudonymize}: keep it private, outside any "
            "store or run folder; the same key gives the same ids next time"
        )
    cohort = manifest_from_dicoms(opts.dicom_dir, opts.labels, opts.out, key=key)
    n_images = sum(len(b.images) for b in cohort.bags)
    n_patients = len({b.patient_id for b in cohort.bags})
    labels = dict(sorted(Counter(b.raw_label for b in cohort.bags).items()))
    print(
        f"wrote {opts.out}: {n_images} images, {len(cohort.bags)} bags, {n_patients} patients; "
        f"bags per {cohort.label_kind} label: {labels}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
