"""Write the phantom screening cohort: MG DICOMs with known lesions, manifest and ground truth.

    python experiments/phantom.py --out runs/phantom

Default: 280 patients x 1 exam x 2 breasts = 560 bags (1,120 views of 768 x 624 px at 0.2 mm),
~40% BI-RADS 4/5, ~8% BI-RADS 2/3, the rest BI-RADS 1. A second run with the same settings
returns at once (phantom.json is the cache key). The phantom tests the pipeline, not clinical
accuracy. See `milpf_jax.synthetic.phantom`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import option
from milpf_jax.synthetic.phantom import PhantomConfig
from milpf_jax.synthetic.phantom_files import make_phantom_cohort, read_lesions


@dataclass(frozen=True)
class PhantomCommand:
    out: str = option(help="folder to write the cohort into")
    workers: int = option(2, "processes drawing images")
    no_progress: bool = option(False, "no progress bar", switch=True)


def build_parser() -> argparse.ArgumentParser:
    """One flag per PhantomConfig field (--n-patients, --mass-contrast, ...), plus --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(parser, PhantomCommand)
    add_config_flags(parser, PhantomConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(PhantomCommand, args, parser)
    cfg = config_from_args(PhantomConfig, args, parser)
    manifest = make_phantom_cohort(opts.out, cfg, workers=opts.workers,
                                   progress=not opts.no_progress)
    kinds = Counter(les["kind"] for les in read_lesions(manifest.parent / "manifest.lesions.csv"))
    print(
        f"wrote {manifest}: {cfg.n_bags * 2} images, {cfg.n_bags} bags, {cfg.n_patients} patients; "
        f"lesion views per kind: {dict(sorted(kinds.items()))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
