"""Where one GPU suffices: the packed training data of EMBED in bf16, against 80 and 141 GB.

    python benchmarks/embed_memory.py        # mini-MIAS from MILPF_MIAS_DIR, and the phantom

Tiles per view are measured with the project's own tiling (`milpf_jax.reading.tiling.plan_view`:
breast mask, encoder-sized grid without overlap, tissue threshold 0.05) at the tile sizes of
the two encoders the paper's EMBED rows use (Table 4: MedSigLIP 448 px, D = 1152; DINOv2 ViT-g
518 px, D = 1536), on real-sized views: mini-MIAS's 80 (1024 x 1024 px at 0.2 mm: whole
breasts) and the phantom's first 80 (768 x 624 px at 0.2 mm: small breasts). A file of finer
pixels gives more tiles of the same pixel size; `--spacing-mm` measures that too, by tiling the
same views with the tile's physical side (a 448-px tile at 0.1 mm is 224 px at 0.2 mm).

The packed training data (`milpf_jax.data.packed.PackedBags`, bf16 embeddings as `fit` holds
them with a bf16 first layer) is, per image, one view embedding and t tile embeddings of D
values at 2 bytes, plus 8 bytes of indices per tile (bag and view): bytes = images x (1 + t) x
2D + images x t x 8. EMBED's counts (each with its source):

  - 2D images: about 365,000 (the estimate of the issue this script answers); the release's
    metadata table has about 480,000 rows, every image kind (`milpf_jax/reading/public/embed.py`,
    docstring), and the paper (section 3.1) says "~0.5M mammograms": 500,000 is the upper bound.
  - bags left after the BI-RADS mapping: neither source publishes it; a breast has at least 2
    views, so at most images / 2 bags, and the mapping only removes bags. Bags do not change the
    tile bytes (tiles are packed, not padded); every bag kept is the upper bound used here.

The training step also needs working memory beyond its data: XLA's temp buffer for the 36-run
bf16 step was 0.99 GiB at 175,883 tiles, D = 1152 (README, "Performance", CPU), about 6 KB per
tile, which this script scales by the tile count as an estimate (a GPU's XLA may differ).

`--spacing-mm 0.2,0.1,0.07`: 30 s on 2 CPU cores (README, "Performance", gives the table).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GB = 1e9
GPUS_GB = {"80 GB (A100/H100)": 80.0, "141 GB (H200)": 141.0}
ENCODERS = {"medsiglip": (448, 1152), "dinov2-giant": (518, 1536)}  # tile px, D (Table 4)
EMBED_IMAGES = {"2D, the issue's estimate": 365_000, "the paper's ~0.5M": 500_000}
INDEX_BYTES_PER_TILE = 8  # tile_bag, tile_view: int32 each
STEP_TEMP_BYTES_PER_TILE = 0.99 * 2**30 / 175_883  # README "Performance": XLA temp, 36 runs
SOURCE_SPACING_MM = 0.2  # mini-MIAS and the phantom


@dataclass(frozen=True)
class Budget:
    """The packed training data of a cohort, and what training adds to it, in bytes."""

    images: int
    tiles_per_view: float
    dim: int
    data_bytes: float  # embeddings (bf16) and tile indices
    step_bytes: float  # data + the step's working memory (estimate)


def packed_bytes(images: int, tiles_per_view: float, dim: int) -> float:
    """Bytes of the packed bf16 training data: a view embedding and t tile embeddings per
    image, plus the tiles' bag and view indices."""
    tiles = images * tiles_per_view
    return (images + tiles) * dim * 2 + tiles * INDEX_BYTES_PER_TILE


def budget(images: int, tiles_per_view: float, dim: int) -> Budget:
    data = packed_bytes(images, tiles_per_view, dim)
    return Budget(images, tiles_per_view, dim, data,
                  data + images * tiles_per_view * STEP_TEMP_BYTES_PER_TILE)


def max_tiles_per_view(images: int, dim: int, capacity_bytes: float, *, step: bool) -> float:
    """The most tiles per view whose training data (and, with `step`, working memory) fit."""
    per_tile = dim * 2 + INDEX_BYTES_PER_TILE + (STEP_TEMP_BYTES_PER_TILE if step else 0.0)
    return (capacity_bytes - images * dim * 2) / (images * per_tile)


def tiles_per_view(paths, tile_size: int) -> np.ndarray:
    """Tissue tiles of each view at `tile_size` px, by the project's tiling (no overlap)."""
    from milpf_jax.reading.imaging import read_image
    from milpf_jax.reading.tiling import TilingConfig, plan_view

    cfg = TilingConfig(tile_size=int(tile_size))
    return np.array([plan_view(read_image(p), cfg)[0].n_tiles for p in paths])


def sample_views(mias_dir: Path | None, n_phantom: int) -> dict[str, list[str]]:
    """Paths of the views to measure: every mini-MIAS image, the phantom's first n views."""
    out = {}
    if mias_dir is not None and (mias_dir / "images").is_dir():
        out["mini-MIAS"] = sorted(str(p) for p in (mias_dir / "images").glob("mdb*.png"))
    if n_phantom:
        from milpf_jax.reading.sources import read_cohort

        cohort = read_cohort("phantom", progress=False)
        out["phantom"] = [i.path for b in cohort.bags for i in b.images][:n_phantom]
    return out


def report(measured: dict) -> str:
    lines = ["| views | encoder | pixels (mm) | tile px at 0.2 mm | tiles/view mean (p90) | "
             "images | data GB | + step GB | fits 80 / 141 GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (sample, encoder, spacing), counts in measured.items():
        tile, dim = ENCODERS[encoder]
        t = float(counts.mean())
        for label, images in EMBED_IMAGES.items():
            b = budget(images, t, dim)
            fits = " / ".join("yes" if b.step_bytes <= gb * GB else
                              ("data only" if b.data_bytes <= gb * GB else "no")
                              for gb in GPUS_GB.values())
            lines.append(f"| {sample} | {encoder} (D={dim}) | {spacing:g} | "
                         f"{round(tile * spacing / SOURCE_SPACING_MM)} | {t:.1f} "
                         f"({np.percentile(counts, 90):.0f}) | {images:,} ({label}) | "
                         f"{b.data_bytes / GB:.1f} | {b.step_bytes / GB:.1f} | {fits} |")
    lines += ["", "Most tiles per view that fit (365,000 images; data only / with the step's "
              "working memory):"]
    for encoder, (_, dim) in ENCODERS.items():
        parts = [f"{name}: {max_tiles_per_view(365_000, dim, gb * GB, step=False):.0f} / "
                 f"{max_tiles_per_view(365_000, dim, gb * GB, step=True):.0f}"
                 for name, gb in GPUS_GB.items()]
        lines.append(f"- {encoder} (D={dim}): " + "; ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mias-dir", type=Path, default=Path(os.environ.get(
        "MILPF_MIAS_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mias-dev")))
    parser.add_argument("--phantom-views", type=int, default=80)
    parser.add_argument("--spacing-mm", type=lambda s: [float(x) for x in s.split(",")],
                        default=[0.2, 0.1], help="pixel sizes to tile at (comma list)")
    args = parser.parse_args(argv)
    views = sample_views(args.mias_dir, args.phantom_views)
    measured = {}
    for sample, paths in views.items():
        for encoder, (tile, _) in ENCODERS.items():
            for spacing in args.spacing_mm:
                side = round(tile * spacing / SOURCE_SPACING_MM)
                measured[sample, encoder, spacing] = tiles_per_view(paths, side)
    print(report(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
