"""Extract a cohort into an embeddings store: plan the tiles, then encode them, resumably.

    python experiments/extract.py --cohort mias:../shared/data/mias-dev \
        --encoder efficientnet-lite0 --out mias-lite0.zarr

gives 80 bags (the mini-MIAS dev subset: 80 views, 870 tiles at 224 px, 950 encoder inputs).
On a 2-core AMD EPYC CPU with avx512_bf16 (so bf16 autocast), shared with other jobs (load 2-6):
plan 9 s, encode 60-105 s, i.e. 9-17 tiles/s, at 0.9-1.0 of the encoder's own forward rate on
the same inputs (benchmarks/extract_throughput.py). A second run finds every bag done and
encodes nothing (under 1 s). A killed run, rerun with the same command, resumes and yields the same
arrays as an uninterrupted one. Several workers share one store with --shard i/n (or torchrun's
RANK/WORLD_SIZE); shard 0 plans it. Without --out the store goes to the cache
($MILPF_CACHE/stores/, default ~/.cache/milpf-jax), where experiments/sweep.py finds it.
Images that fail are listed in <store>.failures.csv beside the store.
"""

from __future__ import annotations

import argparse
import logging
import sys

from milpf_jax.reading.tiling import PRESETS
from milpf_jax.cli import add_config_flags, config_from_args
from milpf_jax.reading.cohort import resolve_cohort
from milpf_jax.extraction.encoders import ENCODERS, PRECISIONS, EncoderUnavailable
from milpf_jax.extraction.extract import (
    FIELD_HELP,
    ExtractConfig,
    ExtractionFailed,
    cache_root,
    extract,
    parse_shard,
    shard_from_env,
    store_name,
)
from milpf_jax.data.store import StoreMismatch


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cohort", required=True, help="manifest CSV, mias:DIR or phantom")
    parser.add_argument(
        "--out",
        help="store path (default: the cached store for these settings under $MILPF_CACHE/stores)",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        help="i/n: this worker's whole chunks of bags (default: "
        "RANK/WORLD_SIZE from torchrun, else 0/1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(
        parser,
        ExtractConfig,
        choices={"encoder": sorted(ENCODERS), "preset": PRESETS, "precision": PRECISIONS},
        help=FIELD_HELP,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = config_from_args(ExtractConfig, args, parser)
    cohort = resolve_cohort(args.cohort, progress=not args.quiet)
    out = args.out or str(cache_root() / "stores" / store_name(cohort, cfg))
    shard = args.shard or shard_from_env()
    try:
        r = extract(cohort, cfg, out, shard=shard, progress=not args.quiet)
    except (EncoderUnavailable, StoreMismatch, ExtractionFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    excluded = sum(r.excluded_views.values())
    print(f"store     {r.path}")
    print(
        f"bags      {r.n_bags}: {r.done} done, {r.failed} failed, {r.pending} pending; "
        f"{excluded} excluded views {r.excluded_views or ''}".rstrip()
    )
    print(f"tiles     {r.n_tiles} in the store")
    if r.encoded_rows or r.encoded_bags:
        print(
            f"encoded   {r.encoded_bags} bags, {r.encoded_rows} encoder inputs (views + tiles) "
            f"in {r.encode_s:.1f} s: {r.rows_per_s:.1f} tiles/s (forward pass "
            f"{r.embed_s:.1f} s)" + (f"; plan {r.plan_s:.1f} s" if r.planned else "")
        )
    else:
        print(f"encoded   nothing: every bag of shard {r.shard[0]}/{r.shard[1]} is done or failed")
    if r.failed:
        print(f"failures  {r.failures_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
