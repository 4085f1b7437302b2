"""How a store is extracted: the encoder, the preprocessing, and how the run goes.

One frozen config, one flag per field (`experiments/extract.py`, and `experiments/sweep.py` when
it extracts). Defaults follow the paper: no tile overlap for classification (section 3.2),
tissue threshold 0.05 (original code), tiles and global view at the encoder's input size.
"""

from __future__ import annotations

from dataclasses import dataclass

from milpf_jax.config import check, check_choices, option
from milpf_jax.data.store import DEFAULT_CHUNK_BAGS
from milpf_jax.extraction import encoders
from milpf_jax.extraction.encoders import Precision
from milpf_jax.reading.tiling import ORIGINAL_OVERLAP, Preset, TilingConfig


@dataclass(frozen=True)
class ExtractConfig:
    """Encoder and preprocessing of a store, plus how to run the extraction."""

    encoder: str = option(encoders.DEFAULT_ENCODER,
                          "encoder registry name (milpf_jax.extraction.encoders.ENCODERS)")
    model_dir: str | None = option(
        None, "local weights folder (HF save_pretrained layout, or the .pth for efficientnet); "
        "unset: the local cache, then the hub")
    tile_size: int | None = option(
        None, "tile edge in working pixels; unset = encoder input size (else area-resized)")
    overlap: float | None = option(
        None, "minimum tile overlap fraction; unset = the preset's (default 0, original 0.25)")
    tissue_threshold: float = option(0.05, "keep a tile whose mean exceeds this x the crop "
                                           "maximum")
    pixel_spacing_mm: float | None = option(
        None, "resample every view to this pixel spacing first; unset = file pixels")
    preset: Preset = option("default", "preprocessing: default, or original (the original "
                                       "MIL-PF code's)")
    batch_size: int = option(32, "encoder inputs per forward pass (fixed in the store when "
                                 "planned)")
    workers: int = option(2, "DataLoader processes that read and tile images (0 = main "
                             "process)")
    device: str = option("auto", "torch device, or auto (CUDA if available)")
    precision: Precision = option("auto", "auto (bf16 on CUDA and bf16-capable CPUs), float32 "
                                          "or bfloat16")
    strict: bool = option(False, "stop at the first image that fails")
    chunk_bags: int = option(DEFAULT_CHUNK_BAGS, "bags per store chunk (the unit of --shard)")

    def __post_init__(self):
        check_choices(self)
        check(self, self.encoder in encoders.ENCODERS, "encoder",
              f"{self.encoder!r} unknown; valid names: {', '.join(sorted(encoders.ENCODERS))}")
        for name in ("batch_size", "chunk_bags"):
            value = getattr(self, name)
            check(self, int(value) >= 1, name, f"{value!r}; expected >= 1")
        check(self, int(self.workers) >= 0, "workers", f"{self.workers!r}; expected >= 0")
        tiling_config(self, self.tile_size or 1)  # TilingConfig checks the rest, naming the field


def tiling_config(cfg: ExtractConfig, input_size: int) -> TilingConfig:
    """The TilingConfig a store records: tile size and global view resolved from the encoder."""
    overlap = cfg.overlap
    if overlap is None:
        overlap = ORIGINAL_OVERLAP if cfg.preset == "original" else 0.0
    return TilingConfig(
        tile_size=int(cfg.tile_size or input_size),
        overlap=float(overlap),
        tissue_threshold=float(cfg.tissue_threshold),
        pixel_spacing_mm=None if cfg.pixel_spacing_mm is None else float(cfg.pixel_spacing_mm),
        preset=cfg.preset,
        global_size=int(input_size),
    )
