"""milpf_jax.reading.imaging: DICOM/PNG/TIFF reading, LUTs, flips, refusals, exclusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEG2000Lossless, RLELossless

from helpers.dicoms import BREAST_TOMO, MG_PROCESSING, stored_breast, write_dicom
from helpers.dicoms import smooth_breast as breast
from helpers.dicoms import voi_lut_item as _voi_lut_item
from helpers.repo import MIAS_DIR, needs_mias
from milpf_jax.reading.imaging import ExcludedView, ImageReadError, read_image


def stretched(values: np.ndarray) -> np.ndarray:
    """The reading rule's last step: the image's own minimum..maximum to [0, 1]."""
    values = np.asarray(values, np.float64)
    return (values - values.min()) / (values.max() - values.min())


def test_monochrome2_without_voi_scales_by_its_own_range(tmp_path):
    stored = stored_breast() + 50
    img = read_image(write_dicom(tmp_path / "a.dcm", stored))
    expected = (stored - 50.0) / (stored.max() - 50.0)
    assert img.flipped is False
    assert img.pixels.dtype == np.float32 and img.source_shape == (64, 48)
    np.testing.assert_allclose(img.pixels, expected, rtol=0, atol=1e-7)


def test_monochrome1_is_inverted_before_the_side_is_decided(tmp_path):
    stored = 4095 - stored_breast()  # MONOCHROME1: dense breast stored LOW
    img = read_image(
        write_dicom(tmp_path / "m1.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    )
    expected = 1.0 - (stored - stored.min()) / (stored.max() - stored.min())
    assert img.flipped is False  # inverted first, so the breast is found on the left
    np.testing.assert_allclose(img.pixels, expected, rtol=0, atol=1e-7)
    assert img.pixels[32, 0] > 0.8 and img.pixels[0, -1] == 0.0


def test_voi_lut_sequence_is_applied_and_preferred_to_a_window(tmp_path):
    stored = stored_breast()
    table = np.arange(4096) // 4 + 100  # outputs 100 .. 1123
    path = write_dicom(
        tmp_path / "lut.dcm",
        stored,
        VOILUTSequence=Sequence([_voi_lut_item(table)]),
        WindowCenter=10,
        WindowWidth=20,  # would saturate nearly everything if used instead of the LUT
    )
    img = read_image(path)
    expected = stretched(table[stored])  # the LUT's output, by the image's own range
    np.testing.assert_allclose(img.pixels, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "function, expected",
    [
        ("SIGMOID", lambda x, c, w: 1 / (1 + np.exp(-4 * (x - c) / w))),
        ("LINEAR_EXACT", lambda x, c, w: np.clip((x - c) / w + 0.5, 0, 1)),
        ("LINEAR", lambda x, c, w: np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)),
    ],
)
def test_window_honours_voi_lut_function(tmp_path, function, expected):
    stored = stored_breast()
    path = write_dicom(
        tmp_path / "w.dcm", stored, WindowCenter=2000, WindowWidth=1500, VOILUTFunction=function
    )
    img = read_image(path)
    want = stretched(expected(stored.astype(np.float64), 2000.0, 1500.0))
    np.testing.assert_allclose(img.pixels, want, rtol=0, atol=1e-6)
    assert 0.0 < img.pixels.mean() < 1.0


def test_rescale_slope_intercept_comes_before_the_window(tmp_path):
    stored = stored_breast()
    path = write_dicom(
        tmp_path / "r.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=3000,  # in rescaled units
        WindowWidth=4000,
        VOILUTFunction="LINEAR_EXACT",
    )
    img = read_image(path)
    want = stretched(np.clip((2.0 * stored - 100 - 3000) / 4000 + 0.5, 0, 1))
    np.testing.assert_allclose(img.pixels, want, rtol=0, atol=1e-6)


def test_12_bits_stored_in_16_ignores_the_unused_high_bits(tmp_path):
    stored = stored_breast()
    window = {"WindowCenter": 2048, "WindowWidth": 4096, "VOILUTFunction": "LINEAR_EXACT"}
    clean = read_image(write_dicom(tmp_path / "clean.dcm", stored, **window))
    dirty = read_image(write_dicom(tmp_path / "dirty.dcm", stored | 0xF000, **window))
    np.testing.assert_array_equal(dirty.pixels, clean.pixels)
    np.testing.assert_allclose(clean.pixels, stretched(stored), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "tags",
    [{}, {"PhotometricInterpretation": "MONOCHROME1"},
     {"WindowCenter": 100, "WindowWidth": 50, "PhotometricInterpretation": "MONOCHROME1"}],
)  # fmt: skip
def test_a_constant_image_reads_as_zeros(tmp_path, tags):
    # MONOCHROME1 is inverted before the stretch, so a blank film is black, not white.
    img = read_image(write_dicom(tmp_path / "c.dcm", np.full((64, 48), 1000, np.uint16), **tags))
    np.testing.assert_array_equal(img.pixels, np.zeros((64, 48), np.float32))


def test_16_bit_precision_survives(tmp_path):
    stored = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    img = read_image(write_dicom(tmp_path / "p16.dcm", stored, bits_stored=16))
    source = img.pixels[:, ::-1] if img.flipped else img.pixels
    assert len(np.unique(img.pixels)) == 65536
    np.testing.assert_array_equal(source, (stored / 65535.0).astype(np.float32))


@pytest.mark.parametrize("syntax, plugin", [(JPEG2000Lossless, "pylibjpeg"), (RLELossless, "")])
def test_compressed_transfer_syntax_decodes_losslessly(tmp_path, syntax, plugin):
    import pydicom

    if plugin == "pylibjpeg":
        pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg not installed")
    stored = stored_breast(96, 80)
    plain = write_dicom(tmp_path / "plain.dcm", stored)
    ds = pydicom.dcmread(plain)
    ds.compress(syntax, encoding_plugin=plugin)
    ds.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "packed.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(
        read_image(tmp_path / "packed.dcm").pixels, read_image(plain).pixels
    )


def with_marker(stored: np.ndarray, right: bool) -> np.ndarray:
    """A small saturated label in a top corner away from the breast, as films carry."""
    out = stored.copy()
    cols = slice(1, 7) if right else slice(-7, -1)
    out[2:8, cols] = 4095
    return out


@pytest.mark.parametrize(
    "side_tag, breast_right, flipped",
    [
        ("R", True, True),  # right breast shown on the right
        ("L", True, True),  # left breast shown on the right (mini-MIAS style): pixels decide
        ("R", False, False),  # right breast already on the left: tag ignored for the flip
    ],
)
def test_flip_is_decided_from_the_pixels(tmp_path, side_tag, breast_right, flipped):
    stored = with_marker(stored_breast(right=breast_right), right=breast_right)
    img = read_image(write_dicom(tmp_path / "f.dcm", stored, ImageLaterality=side_tag))
    unit = (stored - stored.min()) / (stored.max() - stored.min())
    assert img.flipped is flipped
    assert img.laterality == side_tag
    np.testing.assert_allclose(img.pixels, unit[:, ::-1] if flipped else unit, atol=1e-7)
    assert img.pixels[:, :24].sum() > 3 * img.pixels[:, 24:].sum()


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


@pytest.mark.parametrize(
    "case, words",
    [
        ("truncated", "cannot be decoded"),
        ("no_pixels", "no Pixel Data"),
        ("ct", "Modality is 'CT'"),
        ("for_processing", "FOR PROCESSING"),
        ("processing_sop", "FOR PROCESSING"),
        ("tomosynthesis", "tomosynthesis"),
        ("not_dicom", "not a DICOM file"),
    ],
)
def test_unusable_files_raise_an_error_naming_the_file(tmp_path, case, words):
    stored = stored_breast()
    path = tmp_path / f"{case}.dcm"
    if case == "truncated":
        _truncate(write_dicom(path, stored))
    elif case == "no_pixels":
        write_dicom(path, stored, PixelData=None)
    elif case == "ct":
        write_dicom(path, stored, Modality="CT")
    elif case == "for_processing":
        write_dicom(path, stored, PresentationIntentType="FOR PROCESSING")
    elif case == "processing_sop":
        write_dicom(path, stored, SOPClassUID=MG_PROCESSING, PresentationIntentType=None)
    elif case == "tomosynthesis":
        write_dicom(path, stored, SOPClassUID=BREAST_TOMO)
    else:
        path.write_bytes(b"this is not an image" * 20)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert not isinstance(info.value, ExcludedView)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert words in str(info.value)


def _modifier(code: str, scheme: str, meaning: str) -> Sequence:
    mod = Dataset()
    mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = code, scheme, meaning
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "399162004", "SCT", "cc"
    view.ViewModifierCodeSequence = Sequence([mod])
    return Sequence([view])


@pytest.mark.parametrize(
    "tags, reason",
    [
        # the code decides, whatever language the meaning is in
        ({"ViewCodeSequence": _modifier("399055006", "SCT", "Zielaufnahme")}, "spot compression"),
        # a retired SNOMED-RT code is recognised by its meaning
        ({"ViewCodeSequence": _modifier("R-102D6", "SRT", "Magnification")}, "magnification"),
        ({"ViewPosition": "MLOID"}, "implant displaced"),
    ],
)
def test_work_up_views_are_excluded_by_default(tmp_path, tags, reason):
    path = write_dicom(tmp_path / "x.dcm", stored_breast(), **tags)
    with pytest.raises(ExcludedView) as info:
        read_image(path)
    assert info.value.reason == reason
    assert isinstance(info.value, ImageReadError) and str(path) in str(info.value)
    assert read_image(path, allow_excluded=True).pixels.shape == (64, 48)


def test_screening_view_with_another_modifier_is_read(tmp_path):
    tags = {"ViewCodeSequence": _modifier("399161006", "SCT", "Cleavage"), "ViewPosition": "CC"}
    img = read_image(write_dicom(tmp_path / "c.dcm", stored_breast(), **tags))
    assert img.view == "CC"


def test_laterality_order_and_contradiction(tmp_path):
    stored = stored_breast()
    both = write_dicom(tmp_path / "both.dcm", stored, ImageLaterality="L", Laterality="R")
    series = write_dicom(tmp_path / "series.dcm", stored, Laterality="R")
    none = write_dicom(tmp_path / "none.dcm", stored)
    assert read_image(both).laterality == "L"  # Image Laterality wins
    assert read_image(series).laterality == "R"
    assert read_image(none, laterality="right").laterality == "R"
    assert read_image(none).laterality is None
    with pytest.raises(ImageReadError, match=r"tag says 'L' but the manifest says 'R'") as info:
        read_image(both, laterality="R")
    assert str(both) in str(info.value)
    with pytest.raises(ValueError, match="'X'"):
        read_image(none, laterality="X")


def test_view_and_pixel_spacing(tmp_path):
    stored = stored_breast()
    imager = write_dicom(
        tmp_path / "i.dcm",
        stored,
        ImagerPixelSpacing=[0.07, 0.07],
        PixelSpacing=[0.065, 0.065],
        ViewPosition="MLO",
    )
    plain = write_dicom(tmp_path / "p.dcm", stored, PixelSpacing=[0.1, 0.1])
    img = read_image(imager, view="CC")
    assert img.pixel_spacing_mm == pytest.approx(0.07) and img.view == "MLO"
    img = read_image(plain, view="CC")
    assert img.pixel_spacing_mm == pytest.approx(0.1) and img.view == "CC"


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_png_and_tiff_through_pillow(tmp_path, suffix):
    from PIL import Image

    ramp = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7  # 3072 distinct levels
    stored = (stored_breast() * 15).astype(np.uint16) + ramp
    path = tmp_path / f"img{suffix}"
    Image.fromarray(stored).save(path)
    img = read_image(path, laterality="L", view="CC")
    expected = (stored - stored.min()) / float(stored.max() - stored.min())
    source = img.pixels[:, ::-1] if img.flipped else img.pixels
    np.testing.assert_allclose(source, expected, rtol=0, atol=1e-7)
    assert len(np.unique(img.pixels)) == len(np.unique(stored)) > 256
    assert (img.laterality, img.view, img.pixel_spacing_mm) == ("L", "CC", None)


def test_pillow_files_errors_and_exclusion(tmp_path):
    from PIL import Image

    path = tmp_path / "a.pgm"
    Image.fromarray((breast() * 255).astype(np.uint8)).save(path)
    assert read_image(path).pixels.max() == 1.0
    with pytest.raises(ExcludedView, match="implant displaced"):
        read_image(path, view="CCID")
    broken = tmp_path / "b.png"
    Image.fromarray((breast() * 255).astype(np.uint8)).save(broken)
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="b.png"):
        read_image(broken)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


@needs_mias
@pytest.mark.parametrize("name, flipped", [("mdb001", True), ("mdb002", False)])
def test_mini_mias_breast_ends_up_on_the_left(name, flipped):
    # Odd numbers are left breasts, which mini-MIAS shows on the right of the image.
    img = read_image(MIAS_DIR / "images" / f"{name}.png", laterality="L" if flipped else "R")
    assert img.flipped is flipped
    assert img.pixels.shape == img.source_shape == (1024, 1024)
    left, right = img.pixels[:, :512].sum(), img.pixels[:, 512:].sum()
    assert left > 2 * right
