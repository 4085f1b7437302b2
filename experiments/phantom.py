"""Write the phantom screening cohort: MG DICOMs with known lesions, manifest and ground truth.

    python experiments/phantom.py --out runs/phantom

Default: 260 patients x 1 exam x 2 breasts = 520 bags (1040 views, 1024 x 832 px at 0.2 mm,
~1.7 GB), ~40% BI-RADS 4/5, ~10% BI-RADS 2/3, the rest BI-RADS 1. Measured: 48 s of CPU in
all (~46 ms a view), so ~25 s on 2 idle cores; 43-91 s wall on a 2-core machine shared with
other jobs. A second run with the same settings returns at once (phantom.json is the cache key).
With `breast.plan_view` defaults (224-px tiles, no overlap) the cohort gives 14,394 tiles
(12-20 a view). The phantom tests the pipeline, not clinical accuracy. See `milpf_jax.synthetic.phantom`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter

from milpf_jax.synthetic.phantom import PhantomConfig
from milpf_jax.synthetic.phantom_files import make_phantom_cohort, read_lesions


def build_parser() -> argparse.ArgumentParser:
    """One flag per PhantomConfig field (--n-patients, --mass-contrast, ...), plus --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the cohort into")
    parser.add_argument("--workers", type=int, default=2, help="processes drawing images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    defaults = PhantomConfig()
    for field in dataclasses.fields(PhantomConfig):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(
                flag, type=type(default[0]), nargs=len(default), default=default,
                metavar=("LO", "HI"), help=f"default: {' '.join(map(str, default))}",
            )  # fmt: skip
        else:
            parser.add_argument(
                flag, type=type(default), default=default, help=f"default: {default}"
            )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = vars(build_parser().parse_args(argv))
    out, workers, quiet = args.pop("out"), args.pop("workers"), args.pop("no_progress")
    cfg = PhantomConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    manifest = make_phantom_cohort(out, cfg, workers=workers, progress=not quiet)
    kinds = Counter(les["kind"] for les in read_lesions(manifest.parent / "lesions.csv"))
    print(
        f"wrote {manifest}: {cfg.n_bags * 2} images, {cfg.n_bags} bags, {cfg.n_patients} patients; "
        f"lesion views per kind: {dict(sorted(kinds.items()))}"
    )


if __name__ == "__main__":
    main()
