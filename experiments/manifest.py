"""Build a manifest CSV: from a public dataset's tables, or from DICOM headers and a label sheet.

    python experiments/manifest.py --dataset vindr --root /data/vindr-mammo --out vindr.csv
    python experiments/manifest.py --dicom-dir data/dicoms --labels data/labels.csv \
        --out data/manifest.csv

`--dataset NAME --root DIR` (vindr, rsna, embed, cbis, inbreast) reads the dataset's tables as
distributed and writes one row per image with every task's raw label (`--task` picks one when
the store is loaded), `<stem>.lesions.csv` and `<stem>.excluded.csv` beside it, and prints a
summary: images, bags and patients per split, bags per label of every task, exclusions by
reason. `--split seeded` (default) leaves the split to load time (the paper's 70/10/20 split
from `--split-seed`); `--split official` keeps the dataset's test split and writes its training
part as `trainval` (validation, 1/8 of its patients, is drawn at load time). See
`milpf_jax.reading.public`.

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
from typing import Literal

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import check, option
from milpf_jax.reading.dicom_manifest import manifest_from_dicoms
from milpf_jax.reading.pseudonym import read_or_create_key


@dataclass(frozen=True)
class ManifestCommand:
    out: str = option(help="manifest CSV to write")
    dataset: Literal["vindr", "rsna", "embed", "cbis", "inbreast"] | None = option(
        None, "a public dataset, read from its own tables under --root (instead of --dicom-dir "
              "and --labels)")
    root: str | None = option(None, "the dataset's folder, as distributed (with --dataset)")
    split: Literal["seeded", "official"] = option(
        "seeded", "seeded: the split is drawn at load time (--split-seed); official: the "
                  "dataset's test split is kept, its training part written as trainval")
    include_cview: bool = option(False, "EMBED: also the synthetic 2D (C-view) images, marked "
                                        "in the image_type column", switch=True)
    dicom_dir: str | None = option(None, "folder of DICOMs searched recursively (with --labels)")
    labels: str | None = option(None, "label sheet CSV (with --dicom-dir)")
    pseudonymize: str | None = option(
        None, "replace patient/exam ids and image paths by keyed hashes; KEYFILE is created "
              "(mode 600) if missing. Keep it private and outside any store or run folder",
        metavar="KEYFILE")

    def __post_init__(self):
        public = self.dataset is not None or self.root is not None
        headers = self.dicom_dir is not None or self.labels is not None
        check(self, not (public and headers), ("dataset", "dicom_dir"),
              "give --dataset and --root, or --dicom-dir and --labels, not both")
        check(self, public or headers, ("dataset", "dicom_dir"),
              "give --dataset and --root (a public dataset), or --dicom-dir and --labels")
        if public:
            check(self, self.dataset is not None and self.root is not None,
                  ("dataset", "root"), "--dataset and --root go together")
        else:
            check(self, self.dicom_dir is not None and self.labels is not None,
                  ("dicom_dir", "labels"), "--dicom-dir and --labels go together")
            check(self, self.split == "seeded" and not self.include_cview,
                  ("split", "include_cview"), "only with --dataset")
        key = self.pseudonymize
        others = [p for p in (self.out, self.labels) if p]
        check(self, key is None or os.path.realpath(key) not in map(os.path.realpath, others),
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
    if opts.dataset is not None:
        from milpf_jax.reading.public import build_manifest
        from milpf_jax.reading.public.common import DatasetOptions

        _, summary = build_manifest(opts.dataset, opts.root, opts.out, split=opts.split, key=key,
                                    options=DatasetOptions(include_cview=opts.include_cview))
        print("\n".join(summary.lines()))
        return 0
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
