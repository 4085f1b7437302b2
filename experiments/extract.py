"""Extract a cohort into an embeddings store: plan the tiles, then encode them, resumably.

    python experiments/extract.py --cohort mias:../shared/data/mias-dev \
        --encoder efficientnet-lite0 --out mias-lite0.zarr

gives 80 bags (the mini-MIAS dev subset: 80 views, 870 tiles at 224 px, 950 encoder inputs). A
second run finds every bag done and encodes nothing. A killed run, rerun with the same command,
resumes and yields the same arrays as an uninterrupted one. Several workers share one store
with --shard i/n (or a SLURM array task, or torchrun's RANK/WORLD_SIZE); shard 0 plans it.
`--submit slurm --jobs 16 --partition gpu` submits 16 shards as one job array through submitit,
shows one progress bar, resubmits a failed shard up to --retries times (README, "On a SLURM
cluster"). --out may be an object-store URL (s3://bucket/x.zarr). Without --out the store goes
to the cache ($MILPF_CACHE/stores/, default ~/.cache/milpf-jax), where experiments/sweep.py finds
it. Images that fail are listed in <store>.failures/shard-<i>-of-<n>.csv beside the store.
Throughput is measured by benchmarks/extract_throughput.py (README, "Performance").
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import option, parse_k_of_n
from milpf_jax.extraction.config import ExtractConfig
from milpf_jax.extraction.extract import extract, shard_from_env, store_name
from milpf_jax.extraction.failures import ExtractionFailed
from milpf_jax.extraction.submit import SubmitConfig, submit_extraction
from milpf_jax.paths import stores_dir
from milpf_jax.reading.sources import read_cohort


@dataclass(frozen=True)
class ExtractCommand:
    cohort: str = option(help="manifest CSV, mias:DIR or phantom")
    out: str | None = option(
        None, "store path (default: the cached store for these settings under "
              "$MILPF_CACHE/stores)")
    shard: str | None = option(
        None, "i/n: this worker's whole chunks of bags (default: the SLURM array task, else "
              "RANK/WORLD_SIZE from torchrun, else 0/1)")
    quiet: bool = option(False, "no progress bars", switch=True)

    def __post_init__(self):
        if self.shard is not None:
            parse_k_of_n(self.shard, "shard", example="0/4")  # ConfigError naming --shard


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, ExtractCommand)
    add_config_flags(parser, ExtractConfig)
    add_config_flags(parser.add_argument_group("job array through submitit"), SubmitConfig)
    return parser


def report_submitted(r) -> None:
    print(f"store     {r.path}")
    print(f"bags      {r.n_bags}: {r.done} done, {r.failed} failed, {r.pending} pending")
    tries = sum(r.attempts.values())
    print(f"jobs      {len(r.attempts)} shard(s) run, {tries} job(s) in all; logs in {r.log_dir}")
    if r.failed:
        print(f"failures  {r.failures}")
    for i, why in sorted(r.gave_up.items()):
        print(f"gave up   shard {i}: {why}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(ExtractCommand, args, parser)
    cfg = config_from_args(ExtractConfig, args, parser)
    sub = config_from_args(SubmitConfig, args, parser)
    if sub.submit and opts.shard:
        parser.error("--submit runs every shard as a job; give it without --shard")
    if not sub.submit and sub.jobs != 1:
        parser.error("--jobs: needs --submit slurm or --submit local")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cohort = read_cohort(opts.cohort, progress=not opts.quiet)
    out = opts.out or str(stores_dir() / store_name(cohort, cfg))
    if sub.submit:
        r = submit_extraction(opts.cohort, cfg, out, sub, cohort_read=cohort,
                              progress=not opts.quiet)
        report_submitted(r)
        if r.gave_up or not r.complete:
            raise ExtractionFailed(f"{r.pending} bag(s) of {r.path} are still pending: "
                                   f"{len(r.gave_up)} shard(s) gave up (logs above); rerun the "
                                   "same command to resume")
        return 0
    # --shard, then a SLURM array task, then torchrun's RANK/WORLD_SIZE
    shard = parse_k_of_n(opts.shard, "shard") if opts.shard else shard_from_env()
    r = extract(cohort, cfg, out, shard=shard, progress=not opts.quiet)
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
        print(f"failures  {r.failures}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
