"""milpf_jax.reading.tiling: mask, tile grid, tissue selection, box transforms, presets."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.repo import MIAS_DIR, needs_mias
from milpf_jax.reading.imaging import MammoImage, read_image
from milpf_jax.reading.tiling import (
    EmptyViewWarning,
    TilingConfig,
    ViewPlan,
    ViewTransform,
    area_resize,
    breast_mask,
    cut_tiles,
    global_view,
    original_config,
    plan_view,
    tile_grid,
)


def image(pixels, flipped=False, spacing=None, path="synthetic.dcm") -> MammoImage:
    pixels = np.asarray(pixels, np.float32)
    return MammoImage(pixels, flipped, pixels.shape, None, None, spacing, path)


def half_ellipse(rows: int, cols: int, reach: float = 0.7) -> np.ndarray:
    """Breast on the left: a half-ellipse against the left edge, brighter at the chest wall."""
    yy, xx = np.mgrid[:rows, :cols]
    inside = (xx / (reach * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 < 1
    return np.where(inside, 0.4 + 0.5 * (1 - xx / cols), 0.0).astype(np.float32)


@pytest.mark.parametrize(
    "length, tile, overlap, starts",
    [
        (500, 224, 0.0, [0, 138, 276]),
        (448, 224, 0.0, [0, 224]),
        (224, 224, 0.0, [0]),
        (100, 224, 0.0, [0]),
        (500, 224, 0.5, [0, 92, 184, 276]),
        (1000, 100, 0.75, list(range(0, 901, 25))),
        (20, 10, 0.9, list(range(11))),  # 10 * (1 - 0.9) is 0.9999999999999998 in floats
    ],
)
def test_tile_grid_first_and_last_tiles_meet_the_edges(length, tile, overlap, starts):
    got = tile_grid(length, tile, overlap)
    assert got.dtype == np.int32
    assert got.tolist() == starts


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_tile_grid_overlaps_only_what_covering_needs(overlap):
    tile = 64
    for length in range(tile + 1, 700, 13):
        starts = tile_grid(length, tile, overlap)
        steps = np.diff(starts)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert steps.max() <= tile * (1 - overlap) + 0.5  # at least the asked overlap
        if len(starts) > 2:  # one tile fewer could not keep that overlap
            assert (length - tile) / (len(starts) - 2) > tile * (1 - overlap)


def test_tile_grid_and_config_reject_bad_settings():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 10, 1.0)
    with pytest.raises(ValueError, match="tile"):
        tile_grid(100, 0, 0.0)
    with pytest.raises(ValueError, match=r"TilingConfig.overlap: 1.0"):
        TilingConfig(overlap=1.0)
    with pytest.raises(ValueError, match="TilingConfig.preset: 'tiles': choose one of default"):
        TilingConfig(preset="tiles")
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        TilingConfig(preset="original", pixel_spacing_mm=0.1)
    with pytest.raises(ValueError, match="tissue_threshold"):
        TilingConfig(tissue_threshold=-0.1)


def test_transform_maps_flip_crop_and_scale_exactly():
    t = ViewTransform(flipped=True, source_shape=(1000, 800), scale=1.0, crop_y0=5, crop_x0=7)
    # working [0, 10) x [0, 20) -> flipped [5, 15) x [7, 27) -> source x [800 - 27, 800 - 7)
    np.testing.assert_array_equal(t.to_source([[0, 0, 10, 20]]), [[5, 773, 15, 793]])
    t2 = ViewTransform(flipped=False, source_shape=(1000, 800), scale=2.5, crop_y0=4, crop_x0=0)
    np.testing.assert_array_equal(t2.to_source([[0, 0, 10, 20]]), [[10, 0, 35, 50]])


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("scale", [1.0, 2.5, 3.0])
def test_box_round_trip_working_source_working_is_exact(flipped, scale):
    rng = np.random.default_rng(0)
    t = ViewTransform(flipped, (5000, 4000), scale, crop_y0=37, crop_x0=55)
    y0 = rng.integers(0, 1000, 200)
    x0 = rng.integers(0, 800, 200)
    boxes = np.stack([y0, x0, y0 + rng.integers(1, 300, 200), x0 + rng.integers(1, 300, 200)], 1)
    source = t.to_source(boxes)
    assert source.dtype == np.int32
    np.testing.assert_array_equal(t.to_working(source), boxes)
    if scale == 1.0:
        np.testing.assert_array_equal(t.to_source(t.to_working(source)), source)


def test_source_boxes_hold_exactly_the_tile_pixels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    texture = half_ellipse(200, 160) * (0.8 + 0.2 * rng.random((200, 160)))
    stored = np.rint(texture[:, ::-1] * 60000).astype(np.uint16)  # breast on the right
    Image.fromarray(stored).save(tmp_path / "r.png")
    img = read_image(tmp_path / "r.png")
    assert img.flipped
    plan, work = plan_view(img, TilingConfig(tile_size=32))
    tiles = cut_tiles(work, plan)
    source = img.pixels[:, ::-1]  # the file's orientation
    assert plan.n_tiles > 4 and tiles.shape == (plan.n_tiles, 32, 32)
    checked = 0
    for tile, (y0, x0, y1, x1) in zip(tiles, plan.source_boxes):
        if y1 - y0 == 32 and x1 - x0 == 32:  # not clipped at the image edge
            np.testing.assert_array_equal(tile, source[y0:y1, x0:x1][:, ::-1])
            checked += 1
    assert checked >= 4
    assert plan.source_boxes[:, 1].min() >= 40  # the breast lies right in the file


def test_tissue_threshold_drops_background_tiles():
    yy, xx = np.mgrid[:256, :256]
    pixels = np.where(xx <= yy, 0.8, 0.0)  # tissue in the lower-left triangle only
    cfg = TilingConfig(tile_size=32, tissue_threshold=0.05)
    plan, work = plan_view(image(pixels), cfg)
    assert work.shape == (256, 256) and plan.transform.crop_y0 == 0 == plan.transform.crop_x0
    kept = {tuple(b) for b in plan.tile_boxes.tolist()}
    expected = {
        (y, x, y + 32, x + 32)
        for y in range(0, 256, 32)
        for x in range(0, 256, 32)
        if pixels[y : y + 32, x : x + 32].mean() > 0.05 * 0.8
    }
    assert kept == expected
    assert (224, 0, 256, 32) in kept and (0, 224, 32, 256) not in kept
    assert 8 < len(kept) < 64
    every = plan_view(image(pixels), TilingConfig(tile_size=32, tissue_threshold=0.0))[0]
    assert every.n_tiles == 36  # tiles on or below the diagonal: 8 + 7 + ... + 1


def test_blank_image_gives_zero_tiles_and_a_warning():
    cfg = TilingConfig(tile_size=16, global_size=8)
    with pytest.warns(EmptyViewWarning, match="blank.png"):
        plan, work = plan_view(image(np.zeros((60, 40)), path="blank.png"), cfg)
    assert plan.n_tiles == 0
    assert plan.tile_boxes.shape == plan.source_boxes.shape == (0, 4)
    assert cut_tiles(work, plan).shape == (0, 16, 16)
    np.testing.assert_array_equal(global_view(work, 8), np.zeros((8, 8)))


def test_pixel_spacing_resampling_changes_the_tile_count():
    pixels = np.zeros((400, 300), np.float32)
    pixels[20:330, :150] = 0.7  # 310 x 150 px of tissue at 0.1 mm = 31 x 15 mm
    img = image(pixels, spacing=0.1)

    def plan_at(spacing):
        return plan_view(img, TilingConfig(tile_size=40, pixel_spacing_mm=spacing))

    native, _ = plan_at(None)
    coarse, coarse_work = plan_at(0.2)
    fine, _ = plan_at(0.05)
    assert native.n_tiles == 8 * 4  # ceil(310 / 40) x ceil(150 / 40)
    assert coarse.n_tiles == 4 * 2  # 155 x 75 px
    assert fine.n_tiles == 16 * 8  # 620 x 300 px
    assert coarse.transform.scale == pytest.approx(2.0)
    sizes = coarse.source_boxes[:, 2:] - coarse.source_boxes[:, :2]
    assert (sizes == 80).all()  # a 40-px tile at 0.2 mm covers 80 source px at 0.1 mm
    assert coarse.source_boxes[:, 0].min() == 20 and coarse.source_boxes[:, 2].max() == 330
    assert coarse_work.mean() == pytest.approx(0.7, abs=0.01)
    with pytest.raises(ValueError, match="no.png.*no \\(Imager\\) Pixel Spacing"):
        plan_view(image(pixels, path="no.png"), TilingConfig(pixel_spacing_mm=0.2))


@pytest.mark.parametrize("flipped", [False, True])
def test_crop_smaller_than_a_tile_is_padded_and_clipped_in_source(flipped):
    pixels = np.zeros((200, 200), np.float32)
    pixels[180:200, 0:30] = 0.9  # a small blob at the bottom-left (chest wall side)
    plan, work = plan_view(image(pixels, flipped=flipped), TilingConfig(tile_size=64))
    assert work.shape == (64, 64) and plan.n_tiles == 1
    y0, x0 = plan.transform.crop_y0, plan.transform.crop_x0
    assert abs(y0 - 180) <= 2 and x0 == 0
    assert (work[200 - y0 :, :] == 0).all() and (work[:, 32:] == 0).all()  # padding is 0
    np.testing.assert_array_equal(plan.tile_boxes, [[0, 0, 64, 64]])
    # 64 rows from the crop's top run past the image: clipped to row 200.
    want = [y0, 136, 200, 200] if flipped else [y0, 0, 200, 64]
    np.testing.assert_array_equal(plan.source_boxes, [want])


def test_breast_mask_keeps_the_largest_region_and_fills_holes():
    pixels = half_ellipse(300, 200)
    pixels[140:160, 20:40] = 0.0  # a dark hole inside the breast
    pixels[10:30, 170:190] = 1.0  # a bright label in the background
    mask = breast_mask(pixels)
    assert mask.dtype == bool and mask.shape == (300, 200)
    assert mask[150, 30] and mask[150, 5]
    assert not mask[20, 180].any() and not mask[5, 195]
    inside = half_ellipse(300, 200) > 0
    assert (mask == inside).mean() > 0.98
    assert not breast_mask(np.zeros((50, 40))).any()


def test_global_view_pads_to_a_square_and_area_averages():
    work = np.arange(32, dtype=np.float32).reshape(4, 8)
    out = global_view(work, 2)  # 8 x 8 square, 4 x 4 blocks
    want = [[work[:, :4].mean(), work[:, 4:].mean()], [0.0, 0.0]]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # A non-integer factor still averages areas: 3 px into 2 keeps a constant constant.
    np.testing.assert_allclose(global_view(np.ones((3, 3)), 2), np.ones((2, 2)), rtol=1e-6)
    grid = np.arange(9, dtype=np.float32).reshape(3, 3)
    weights = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]) / 1.5  # overlaps of [0,1.5), [1.5,3)
    np.testing.assert_allclose(
        area_resize(grid, (2, 2), 1.5), weights @ grid @ weights.T, rtol=1e-6
    )
    # Past the bottom/right edge counts as background.
    np.testing.assert_allclose(area_resize(np.ones((1, 1)), (1, 1), 2.0), [[0.25]])


def test_cut_tiles_refuses_boxes_that_do_not_fit():
    t = ViewTransform(False, (10, 10), 1.0, 0, 0)
    plan = ViewPlan(t, np.array([[0, 0, 8, 8]], np.int32), np.zeros((1, 4), np.int32), 8)
    with pytest.raises(ValueError, match="do not fit"):
        cut_tiles(np.zeros((6, 6), np.float32), plan)


def test_original_preset_follows_the_original_code_and_maps_back():
    # A breast on the RIGHT of a 300 x 200 view with a bright 6 x 6 spot at a known place. Our
    # reader would have mirrored it; the original's own column-sum test must do it here.
    pixels = half_ellipse(300, 200, reach=0.8)
    pixels[100:106, 40:46] = 1.0
    img = image(pixels[:, ::-1], flipped=False)  # spot at file columns 154 .. 159
    cfg = original_config(tile_size=224)
    assert (cfg.overlap, cfg.tissue_threshold, cfg.global_size) == (0.25, 0.05, 224)
    plan, work = plan_view(img, cfg)
    assert work.shape == (4096, 4096) and work.max() == pytest.approx(1.0)
    assert plan.n_tiles > 50 and plan.transform.flipped
    sizes = plan.tile_boxes[:, 2:] - plan.tile_boxes[:, :2]
    assert (sizes == 224).all() and plan.tile_boxes.min() >= 0 and plan.tile_boxes.max() <= 4096
    # The crop is the breast's extent; resizing to 4096 sets the scale.
    scale = plan.transform.scale
    assert scale == pytest.approx(max(300 - 2 * 17, 160) / 4096, rel=0.05)
    # The spot's peak in the working image maps back onto the spot in the (mirrored) file,
    # inside the source box of a tile that holds it.
    peak_y, peak_x = np.unravel_index(np.argmax(work), work.shape)
    py0, px0, py1, px1 = plan.transform.to_source([[peak_y, peak_x, peak_y + 1, peak_x + 1]])[0]
    assert 100 <= py0 and py1 <= 106 + 1 and 200 - 46 <= px0 and px1 <= 200 - 40 + 1
    y0, x0, y1, x1 = plan.tile_boxes.T
    hit = np.flatnonzero((y0 <= peak_y) & (peak_y < y1) & (x0 <= peak_x) & (peak_x < x1))[0]
    sy0, sx0, sy1, sx1 = plan.source_boxes[hit]
    assert sy0 <= py0 and py1 <= sy1 and sx0 <= px0 and px1 <= sx1
    assert global_view(work, cfg.global_size).shape == (224, 224)


@needs_mias
def test_mini_mias_mask_and_tiles_are_plausible():
    img = read_image(MIAS_DIR / "images" / "mdb001.png")  # left breast, shown on the right
    mask = breast_mask(img.pixels)
    assert 0.12 < mask.mean() < 0.6
    cols = np.flatnonzero(mask.any(axis=0))
    # mini-MIAS pads the film with black columns; the breast is left of the centre.
    assert cols[-1] - cols[0] < 512 and (cols[0] + cols[-1]) / 2 < 512
    plan, _work = plan_view(img, TilingConfig(tile_size=224))
    assert 4 <= plan.n_tiles <= 20 and img.flipped and plan.transform.flipped
    # In the file the breast is on the right, so are its tiles.
    centres = (plan.source_boxes[:, 1] + plan.source_boxes[:, 3]) / 2
    assert centres.mean() > 512 and plan.source_boxes[:, 3].max() <= 1024
