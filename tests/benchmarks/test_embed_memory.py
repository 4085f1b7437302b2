"""The one-GPU computation (benchmarks/embed_memory.py): its arithmetic, and tiles measured on
real mammograms by the project's tiling."""

import pytest
from embed_memory import (
    budget,
    max_tiles_per_view,
    packed_bytes,
    sample_views,
    tiles_per_view,
)

from helpers.repo import MIAS_DIR, needs_mias


def test_packed_bytes_count_views_tiles_and_their_indices():
    # 365,000 views + 3,650,000 tiles of 1152 bf16 values, 8 index bytes per tile
    assert packed_bytes(365_000, 10, 1152) == 4_015_000 * 2304 + 3_650_000 * 8
    b = budget(1000, 4, 16)
    assert b.data_bytes == 5000 * 32 + 4000 * 8 and b.step_bytes > b.data_bytes


@pytest.mark.parametrize("step", [False, True])
def test_the_most_tiles_per_view_fill_the_device_exactly(step):
    t = max_tiles_per_view(365_000, 1536, 80e9, step=step)
    b = budget(365_000, t, 1536)
    assert (b.step_bytes if step else b.data_bytes) == pytest.approx(80e9, rel=1e-12)


@needs_mias
def test_finer_pixels_give_more_tiles_on_real_views():
    paths = sample_views(MIAS_DIR, 0)["mini-MIAS"][:4]
    at_448, at_224 = tiles_per_view(paths, 448), tiles_per_view(paths, 224)
    assert len(paths) == 4 and (at_448 >= 1).all()
    # a quarter of the area each: more tiles on every view, 2.5x or more in all (the edge)
    assert (at_224 > at_448).all() and at_224.sum() >= 2.5 * at_448.sum()
