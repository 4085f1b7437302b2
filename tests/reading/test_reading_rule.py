"""The reading rule (milpf_jax.reading.imaging): one picture, however a file encodes it, reads as
one [0, 1] image and so embeds as one input.

Every file is rendered as it says (Modality LUT, VOI LUT or first window, MONOCHROME1 inverted)
and then stretched by its own minimum..maximum. The picture here spans 300..3000 of 12 bits, so
a reader that scaled by the window's or the LUT's output range instead (reading rule 1) reads
each encoding as a different image.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.sequence import Sequence

from helpers.dicoms import voi_lut_item, write_dicom
from helpers.repo import MIAS_DIR, needs_mias
from milpf_jax.extraction.inputs import view_inputs
from milpf_jax.reading.imaging import read_image
from milpf_jax.reading.tiling import TilingConfig

LOW, HIGH = 300, 3000  # the picture's stored range, inside 12 bits' 0..4095


def picture(rows: int = 256, cols: int = 192, seed: int = 0) -> np.ndarray:
    """uint16 [rows, cols] spanning exactly LOW..HIGH: a breast against the left edge, brightest
    at the chest wall, with smooth parenchyma-like texture, on a background at LOW."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:rows, :cols]
    inside = (xx / (0.75 * cols)) ** 2 + ((yy - rows / 2) / (0.46 * rows)) ** 2 < 1
    texture = gaussian_filter(np.random.default_rng(seed).standard_normal((rows, cols)), 3.0)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    img = np.where(inside, 0.35 + 0.35 * (1 - xx / cols) + 0.3 * texture, 0.0)
    img = (img - img.min()) / (img.max() - img.min())
    return np.rint(LOW + (HIGH - LOW) * img).astype(np.uint16)


# name -> (stored values from the picture's values v, tags): the same picture, encoded so that a
# viewer shows it identically up to a monotone linear map.
ENCODINGS = {
    "plain": (lambda v: v, {}),
    "full 12-bit window": (lambda v: v, dict(WindowCenter=2047.5, WindowWidth=4096)),
    # LINEAR: 1650 - 0.5 -/+ (2703 - 1) / 2 = 298.5 .. 3000.5, just outside the picture's range
    "tight window": (lambda v: v, dict(WindowCenter=1650, WindowWidth=2703)),
    "linear VOI LUT": (lambda v: v, dict(
        VOILUTSequence=Sequence([voi_lut_item(8 + 12 * np.arange(4096))]))),
    "MONOCHROME1": (lambda v: 4095 - v, dict(PhotometricInterpretation="MONOCHROME1")),
    "MONOCHROME1 windowed": (lambda v: 4095 - v, dict(
        PhotometricInterpretation="MONOCHROME1", WindowCenter=2047.5, WindowWidth=4096)),
    # 16 bits stored as 2 v + 100; the Modality LUT gives v back, the window is in its units
    "rescaled": (lambda v: 2 * v + 100, dict(
        bits_stored=16, RescaleSlope=0.5, RescaleIntercept=-50, WindowCenter=1650,
        WindowWidth=2703)),
}  # fmt: skip


def write_encodings(folder, stored: np.ndarray) -> dict:
    """One DICOM per ENCODING of `stored` (uint16 picture values), plus a 16-bit PNG of them."""
    from PIL import Image

    paths = {}
    for i, (name, (encode, tags)) in enumerate(ENCODINGS.items()):
        values = encode(stored.astype(np.int64)).astype(np.uint16)
        paths[name] = write_dicom(folder / f"e{i}.dcm", values, **tags)
    paths["16-bit PNG"] = folder / "plain.png"
    Image.fromarray(stored).save(paths["16-bit PNG"])
    return paths


@pytest.fixture(scope="module")
def encodings(tmp_path_factory):
    return write_encodings(tmp_path_factory.mktemp("encodings"), picture())


@pytest.fixture(scope="module")
def lite0():
    from milpf_jax.extraction import encoders

    return encoders.get_encoder("efficientnet-lite0", device="cpu", precision="float32")


def _max_difference(images: dict) -> dict:
    ref = images["plain"]
    return {name: float(np.abs(img - ref).max()) for name, img in images.items()}


def test_every_encoding_of_one_picture_reads_as_one_image(encodings):
    images = {name: read_image(path, view="CC").pixels for name, path in encodings.items()}
    stored = picture()
    expected = (stored - float(LOW)) / (HIGH - LOW)
    np.testing.assert_allclose(images["plain"], expected, rtol=0, atol=1e-7)
    diffs = _max_difference(images)
    assert max(diffs.values()) <= 1e-3, diffs
    assert all(not read_image(p).flipped for p in encodings.values())


def test_a_window_that_clips_is_another_rendering(tmp_path):
    stored = picture()
    plain = read_image(write_dicom(tmp_path / "plain.dcm", stored)).pixels
    clipped = read_image(
        write_dicom(tmp_path / "clip.dcm", stored, WindowCenter=1650, WindowWidth=1000)
    ).pixels
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    assert np.abs(clipped - plain).max() > 0.2


def test_every_encoding_of_one_picture_embeds_alike(encodings, lite0):
    """EfficientNet-Lite0 on the encoder inputs extraction cuts: the global view and each tile."""
    tiling = TilingConfig(tile_size=lite0.spec.input_size, global_size=lite0.spec.input_size)
    size = lite0.spec.input_size
    whole, tiles = view_inputs(str(encodings["plain"]), "CC", tiling, size)
    assert len(tiles) >= 1
    ref = lite0.embed(np.concatenate([whole[None], tiles]))  # [1 + T, D], unit rows
    for name, path in encodings.items():
        w, t = view_inputs(str(path), "CC", tiling, size)
        emb = lite0.embed(np.concatenate([w[None], t]))
        cosine = np.sum(emb * ref, axis=1)  # [1 + T]
        assert cosine.min() >= 0.999, (name, cosine)


@needs_mias
def test_mini_mias_stored_as_x16_under_a_window_embeds_as_the_png(tmp_path, lite0):
    """mdb001's 8-bit values x 16 in a 12-bit DICOM under the window 2040 / 4081 (LINEAR spans
    -0.5..4079.5: only the brightest level, 4080, clips, by 1.2e-4 of the range)."""
    from PIL import Image

    png = MIAS_DIR / "images" / "mdb001.png"
    with Image.open(png) as im:
        values = np.asarray(im.convert("L"), np.uint16)
    dcm = write_dicom(tmp_path / "mdb001.dcm", values * 16, WindowCenter=2040, WindowWidth=4081)
    a, b = read_image(png).pixels, read_image(dcm).pixels
    assert np.abs(a - b).max() <= 1e-3
    tiling = TilingConfig(tile_size=lite0.spec.input_size, global_size=lite0.spec.input_size)
    size = lite0.spec.input_size
    wholes = [view_inputs(str(p), "MLO", tiling, size)[0] for p in (png, dcm)]
    emb = lite0.embed(np.stack(wholes))
    assert float(emb[0] @ emb[1]) >= 0.999
