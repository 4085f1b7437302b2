"""Extraction throughput against the encoder's raw forward pass, float32 and bf16 side by side.

    python benchmarks/extract_throughput.py --cohort mias:../shared/data/mias-dev --max-bags 24

For each precision the cohort's first --max-bags bags are extracted into a fresh store (reading
and tiling in --workers processes, overlapped with the forward pass), then the same encoder
inputs, held in memory, are embedded alone (`measure_throughput`).

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
import dataclasses
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import option
from milpf_jax.data.store import DONE, Store
from milpf_jax.extraction import encoders
from milpf_jax.extraction.config import ExtractConfig, tiling_config
from milpf_jax.extraction.encode import bag_views, image_locations
from milpf_jax.extraction.encoders import Precision
from milpf_jax.extraction.extract import extract
from milpf_jax.extraction.inputs import bag_inputs
from milpf_jax.reading.cohort import Cohort
from milpf_jax.reading.sources import read_cohort


def measure_throughput(
    cohort,
    cfg: ExtractConfig,
    work_dir,
    *,
    precisions: Sequence[str] = ("float32", "bfloat16"),
    max_bags: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Extraction throughput against the encoder's raw forward pass on the same inputs.

    For each precision: extract the cohort (its first `max_bags` bags) into a fresh store under
    `work_dir` (the encode pass is timed: reading and tiling in cfg.workers processes, overlapped
    with the forward pass), then embed the same inputs, already in memory, in batches of
    cfg.batch_size (timed after one warm-up batch).

    Returns:
      One dict per precision: precision, device, inputs (views + tiles), extract_per_s,
      forward_per_s, ratio (extract / forward), plan_s, encode_s, embed_s (forward time inside
      the extraction), forward_s.
    """
    cohort = cohort if isinstance(cohort, Cohort) else read_cohort(cohort)
    if max_bags is not None:
        cohort = dataclasses.replace(cohort, bags=cohort.bags[: int(max_bags)])
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for precision in precisions:
        pcfg = dataclasses.replace(cfg, precision=precision)
        folder = Path(tempfile.mkdtemp(dir=work, prefix=f"throughput-{precision}-"))
        result = extract(cohort, pcfg, folder / "store.zarr", progress=progress)
        store = Store.open(result.path)
        arrays = {name: store.array(name) for name in (
            "global_mask", "tiles_mask", "tile_boxes", "view_path", "view_name")}  # fmt: skip
        spec = encoders.ENCODERS[pcfg.encoder]
        tiling = tiling_config(pcfg, spec.input_size)
        done = np.flatnonzero(store.status() == DONE)
        locate = image_locations(cohort)
        inputs = np.concatenate(
            [bag_inputs(bag_views(arrays, b, locate), tiling, spec.input_size) for b in done]
        )  # [N, S, S]
        encoder = encoders.get_encoder(pcfg.encoder, model_dir=pcfg.model_dir,
                                       device=encoders.resolve_device(pcfg.device),
                                       precision=pcfg.precision)
        step = pcfg.batch_size
        encoder.embed(inputs[:step], batch_size=step)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        for i in range(0, len(inputs), step):
            encoder.embed(inputs[i : i + step], batch_size=step)
        forward_s = time.perf_counter() - t0
        forward = len(inputs) / forward_s
        rows.append({
            "precision": getattr(encoder, "precision", precision),
            "device": str(getattr(encoder, "device", pcfg.device)),
            "inputs": len(inputs),
            "extract_per_s": result.rows_per_s,
            "forward_per_s": forward,
            "ratio": result.rows_per_s / forward,
            "plan_s": result.plan_s,
            "encode_s": result.encode_s,
            "embed_s": result.embed_s,
            "forward_s": forward_s,
        })  # fmt: skip
    return rows




@dataclasses.dataclass(frozen=True)
class ThroughputCommand:
    cohort: str = option(help="manifest CSV, mias:DIR or phantom")
    max_bags: int | None = option(None, "use the cohort's first N bags")
    precisions: tuple[Precision, ...] = option(("float32", "bfloat16"), "comma list")
    work_dir: str | None = option(None, "where the stores go (default: a temporary folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_flags(parser, ThroughputCommand)
    add_config_flags(parser, ExtractConfig, skip=("precision", "strict"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = config_from_args(ThroughputCommand, args, parser)
    cfg = config_from_args(ExtractConfig, args, parser)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_throughput(opts.cohort, cfg, opts.work_dir or tmp,
                                  precisions=opts.precisions, max_bags=opts.max_bags)
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
    sys.exit(run(main))
