"""Read one mammogram (DICOM, PNG, PGM, TIFF) into float32 [0, 1] with the breast on the left.

One rule for every file, whatever its encoding: render the image as the file says, then stretch
the rendered image's own minimum..maximum to [0, 1] (a constant image reads as zeros). A DICOM is
rendered by pydicom in display order: Modality LUT (rescale slope/intercept or Modality LUT
Sequence), then VOI LUT (the VOI LUT Sequence's first table, else the first window centre/width
with the VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), then MONOCHROME1 inversion so that
dense tissue is bright. PNG, PGM and TIFF (8 or 16 bit) are rendered as stored, through Pillow.
Every non-clipping linear window or LUT, and the inversion, is a monotone linear map, which the
stretch undoes: pixel-identical renderings of one picture (stored plainly, under a window,
through a linear LUT, as MONOCHROME1) read as the same [0, 1] image. A window that clips, or a
sigmoid, is another rendering and legitimately reads as another image. `READER_VERSION` names
this rule in every store's preprocessing attributes.

Values stay float64 until the final cast, so 12-16-bit data keep every distinct level.
Compressed transfer syntaxes decode through permissively licensed plugins: JPEG 2000 via
pylibjpeg-openjpeg (MIT), JPEG lossless and JPEG-LS via python-gdcm (BSD).

Which side holds the breast is decided from the pixels, never from the laterality tag: archives
differ, and mini-MIAS shows left breasts on the right of the image. Every image is mirrored so the
breast sits on the LEFT; `MammoImage.flipped` records it so boxes map back to the file's pixels.

Example:
    img = read_image("mdb001.png", laterality="L")  # img.pixels: [1024, 1024] float32
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import numpy as np

from milpf_jax.reading import dicom

__all__ = ["READER_VERSION", "ExcludedView", "ImageReadError", "MammoImage", "read_image"]

PILLOW_SUFFIXES = (".png", ".pgm", ".pnm", ".tif", ".tiff")

# The reading rule, recorded in every store's preprocessing attributes (`extraction.extract`): a
# store read under another rule holds other encoder inputs, so it is refused, never mixed in.
#   1  a DICOM's VOI output range mapped to [0, 1]; files without a VOI by their own min..max
#   2  every file rendered as it says, then stretched by its own min..max (`_min_max`)
READER_VERSION = 2

# The flip test looks at a small copy: the breast is large, a label or a marker is not.
FLIP_TEST_SIDE = 256


class ImageReadError(ValueError):
    """An image that cannot be used. `.path` names the file, `.reason` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ExcludedView(ImageReadError):
    """A work-up view left out by default; `.reason` is the category a caller counts by.

    One of "spot compression", "magnification", "implant displaced".
    """

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)
        self.args = (f"{path}: {reason} view, excluded by default (allow_excluded=True reads it)",)


@dataclass(frozen=True, eq=False)
class MammoImage:
    """One mammogram ready for tiling.

    pixels: [H, W] float32 in [0, 1], already mirrored so the breast sits on the LEFT.
    flipped: True when the reader mirrored it left-right (pixels = file[:, ::-1]).
    source_shape: (rows, cols) of the file's pixel array (same as pixels.shape).
    laterality: 'L' | 'R' from the tags or the manifest, None if unknown.
    view: View Position code such as 'CC' or 'MLO' (the manifest's when the tag is absent).
    pixel_spacing_mm: row spacing from Imager Pixel Spacing, else Pixel Spacing; None if absent.
    path: the file read.
    """

    pixels: np.ndarray
    flipped: bool
    source_shape: tuple[int, int]
    laterality: str | None
    view: str | None
    pixel_spacing_mm: float | None
    path: str


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch the image's own minimum..maximum to [0, 1], in float64; a constant image -> zeros.

    The last step for every file, as the original MIL-PF code normalises every image: any
    monotone increasing linear map of the values before it leaves its output unchanged. One
    pixel brighter than all tissue (a calcification speck, a hot detector pixel) sets the
    maximum and so darkens the rest of the view.
    """
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float64)
    return (values - lo) / (hi - lo)


def breast_on_right(pixels: np.ndarray) -> bool:
    """True when more breast lies in the right half of `pixels` [H, W] than in the left.

    Compares the intensity mass above an Otsu threshold in the two halves of a block-averaged
    copy: the averaging smooths noise, the threshold drops film background, and the breast
    outweighs labels and markers by far.
    """
    from skimage.filters import threshold_otsu
    from skimage.transform import downscale_local_mean

    factor = max(1, int(np.ceil(max(pixels.shape) / FLIP_TEST_SIDE)))
    small = downscale_local_mean(pixels.astype(np.float32), (factor, factor))  # [h, w]
    if small.max() <= small.min():
        return False
    mass = np.where(small > threshold_otsu(small), small, 0.0)
    half = small.shape[1] // 2
    left = float(mass[:, :half].sum())
    right = float(mass[:, small.shape[1] - half :].sum())
    return right > left


def _normalise_laterality(value, path: str) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().upper()
    if text in ("", "U", "B"):
        return None
    if text in ("L", "LEFT"):
        return "L"
    if text in ("R", "RIGHT"):
        return "R"
    raise ValueError(f"{path}: laterality {value!r} from the manifest; expected 'L' or 'R'")


def _read_dataset(path: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise ImageReadError(path, f"not a DICOM file and not {'/'.join(PILLOW_SUFFIXES)}") from err
    except (OSError, EOFError, ValueError, KeyError) as err:
        raise ImageReadError(path, f"unreadable DICOM (truncated or corrupt?): {err}") from err


def _has_voi_lut(ds) -> bool:
    seq = ds.get("VOILUTSequence", None)
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def render_dicom(ds, path: str) -> np.ndarray:
    """Decoded pixels of `ds` as the file says to show them: [H, W] float64, bright = dense.

    Modality LUT, then the VOI LUT Sequence's first table, else the first window centre/width
    (pydicom's `apply_voi` / `apply_windowing`, which honour the VOI LUT Function), else the
    modality values as they are; MONOCHROME1 (the minimum value is displayed white) is negated.
    The values keep the transform's own units: `dicom_to_unit` stretches them.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    try:
        stored = ds.pixel_array
    # Decoder plugins report a short or corrupt stream with any of these.
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, OSError) as err:
        raise ImageReadError(path, f"pixel data cannot be decoded: {err}") from err
    if stored.ndim != 2:
        raise ImageReadError(path, f"pixel array has shape {stored.shape}; expected [rows, cols]")
    values = apply_modality_lut(stored, ds)
    if _has_voi_lut(ds):
        # A VOI LUT indexes integer modality values; rounding drops float noise from rescaling.
        shown = apply_voi(np.rint(values).astype(np.int64), ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        shown = apply_windowing(values, ds)
    else:
        shown = values
    shown = np.asarray(shown, dtype=np.float64)
    return -shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def dicom_to_unit(ds, path: str) -> np.ndarray:
    """Decoded pixels of `ds` -> [H, W] float64 in [0, 1]: rendered, then stretched by min..max."""
    return _min_max(render_dicom(ds, path))


def _pillow_to_unit(path: str) -> np.ndarray:
    """PNG/PGM/TIFF (8 or 16 bit greyscale) -> [H, W] float64 in [0, 1]: as stored, by min..max."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageReadError(path, f"Pillow cannot read it (truncated or corrupt?): {err}") from err
    if arr.ndim == 3:
        # Some exports store grey as RGB(A); a real colour image is not a mammogram.
        grey = arr[..., 0]
        if arr.shape[2] >= 3 and not (
            np.array_equal(grey, arr[..., 1]) and np.array_equal(grey, arr[..., 2])
        ):
            raise ImageReadError(path, f"colour image (mode {mode}); expected greyscale")
        arr = grey
    if arr.ndim != 2:
        raise ImageReadError(path, f"image array has shape {arr.shape}; expected [rows, cols]")
    return _min_max(arr)


def read_image(
    path: str | os.PathLike,
    *,
    laterality: str | None = None,
    view: str | None = None,
    allow_excluded: bool = False,
) -> MammoImage:
    """Read a mammogram to float32 [0, 1] with the breast mirrored onto the left.

    Args:
      path: a DICOM file (any name), or .png/.pgm/.pnm/.tif/.tiff read through Pillow.
      laterality: the manifest's 'L'/'R'; used when the file has no tag, checked when it has.
      view: the manifest's view code; used when the file has no View Position.
      allow_excluded: read spot-compression, magnification and implant-displaced views instead
        of raising ExcludedView.

    Returns:
      MammoImage with pixels [H, W] float32.

    Raises:
      FileNotFoundError: no such file.
      ExcludedView: a work-up view (see `.reason`) and `allow_excluded` is False.
      ImageReadError: not an MG image, tomosynthesis, FOR PROCESSING, no or undecodable pixel
        data, or the file's laterality contradicts the manifest's.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        # errno form, so `.filename` names the file for callers that list failures by file.
        raise FileNotFoundError(errno.ENOENT, "no such image file", path)
    manifest_side = _normalise_laterality(laterality, path)
    manifest_view = str(view).strip() if view is not None and str(view).strip() else None

    ds = None if path.lower().endswith(PILLOW_SUFFIXES) else _read_dataset(path)
    # Header checks first: a refused file costs no decoding.
    if ds is None:
        tag_side, tag_view, spacing, reason = None, None, None, None
    else:
        refused = dicom.refusal(ds)
        if refused:
            raise ImageReadError(path, refused)
        tag_side = dicom.laterality(ds)
        tag_view = dicom.view_position(ds) or None
        spacing = dicom.pixel_spacing_mm(ds)
        reason = dicom.excluded_view(ds)
    if reason is None and dicom.implant_displaced_code(manifest_view):
        reason = "implant displaced"
    if reason and not allow_excluded:
        raise ExcludedView(path, reason)
    if tag_side and manifest_side and tag_side != manifest_side:
        raise ImageReadError(
            path, f"laterality tag says {tag_side!r} but the manifest says {manifest_side!r}"
        )

    unit = _pillow_to_unit(path) if ds is None else dicom_to_unit(ds, path)  # [H, W] float64
    flipped = breast_on_right(unit)
    pixels = np.ascontiguousarray(unit[:, ::-1] if flipped else unit, dtype=np.float32)
    return MammoImage(
        pixels=pixels,
        flipped=flipped,
        source_shape=(int(unit.shape[0]), int(unit.shape[1])),
        laterality=tag_side or manifest_side,
        view=tag_view or manifest_view,
        pixel_spacing_mm=spacing,
        path=path,
    )
