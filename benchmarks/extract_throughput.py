"""Extraction throughput against the encoder's raw forward pass, float32 and bf16 side by side.

    python benchmarks/extract_throughput.py --cohort mias:../shared/data/mias-dev --max-bags 24

For each precision the cohort's first --max-bags bags are extracted into a fresh store (reading
and tiling in --workers processes, overlapped with the forward pass), then the same encoder
inputs, held in memory, are embedded alone (`milpf_jax.extraction.extract.measure_throughput`).

Measured on the phantom's first 200 bags (`--cohort phantom --max-bags 200`: 3,788 inputs),
EfficientNet-Lite0, batch 32, 2 workers, on the 2-core AMD EPYC CPU (avx512_bf16, no AMX),
otherwise idle, 2026-11-26, 6 min wall:

    precision  extraction/s  forward/s  ratio
    float32            32.6       33.9   0.96
    bfloat16           81.1      104.3   0.78

Reading and tiling run in the workers beside the forward pass. Rates depend on the machine and
its load: compare rows of one run only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from milpf_jax.reading.tiling import PRESETS
from milpf_jax.cli import add_config_flags, config_from_args
from milpf_jax.extraction.encoders import ENCODERS
from milpf_jax.extraction.extract import FIELD_HELP, ExtractConfig, measure_throughput


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cohort", required=True, help="manifest CSV, mias:DIR or phantom")
    parser.add_argument("--max-bags", type=int, help="use the cohort's first N bags")
    parser.add_argument("--precisions", default="float32,bfloat16", help="comma list")
    parser.add_argument("--work-dir", help="where the stores go (default: a temporary folder)")
    add_config_flags(
        parser, ExtractConfig, skip=("precision", "strict"),
        choices={"encoder": sorted(ENCODERS), "preset": PRESETS}, help=FIELD_HELP,
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = config_from_args(ExtractConfig, args, parser)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_throughput(
            args.cohort, cfg, args.work_dir or tmp, precisions=precisions,
            max_bags=args.max_bags,
        )  # fmt: skip
    print(f"{cfg.encoder}, batch {cfg.batch_size}, {cfg.workers} reading workers")
    print("precision  device  inputs  extraction/s  forward/s  ratio  (forward inside extraction)")
    for r in rows:
        print(
            f"{r['precision']:<10} {r['device']:<7} {r['inputs']:>6} {r['extract_per_s']:>13.1f} "
            f"{r['forward_per_s']:>10.1f} {r['ratio']:>6.2f}  ({r['embed_s']:.1f} of "
            f"{r['encode_s']:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
