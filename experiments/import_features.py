"""Import embeddings another pipeline computed into a store, to train the head on them directly.

The original MIL-PF code's HDF5 file (one group per breast; bags.csv gives each group's ids):

    python experiments/import_features.py --format milpf-h5 --h5 embeddings.hdf5 \
        --bags bags.csv --encoder-name medsiglip --out medsiglip.zarr
    python experiments/sweep.py --store medsiglip.zarr

TRIDENT/CLAM-style features, one .h5 per image of a manifest (tiles only, unless
--global-dataset names each file's view embedding):

    python experiments/import_features.py --format h5-per-image --manifest manifest.csv \
        --h5-dir features/ --patch-size 448 --encoder-name uni2 --out uni2.zarr
    python experiments/sweep.py --store uni2.zarr --global-pool none

The store records encoder 'imported:<name>', the format, the source file and its SHA-256;
importing the same source to the same --out again finds the store and writes nothing. Reading
and writing a few thousand bags takes seconds; the encoder never runs.
"""

from __future__ import annotations

import argparse
import sys

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.extraction.imports import ImportConfig, import_features


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, ImportConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    cfg = config_from_args(ImportConfig, parser.parse_args(argv), parser)
    r = import_features(cfg)
    print(f"store     {r.path}" + (" (already imported from this source: nothing written)"
                                   if r.found else ""))
    print(f"bags      {r.n_bags}, tiles {r.n_tiles}, D={r.dim}, view embeddings: "
          + ("yes" if r.view_embeddings else "none (train with --global-pool none)"))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
