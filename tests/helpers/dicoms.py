"""The tests' one DICOM writer, and the breast images they write into DICOMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"


BREAST_TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"


def smooth_breast(rows: int = 64, cols: int = 48, right: bool = False) -> np.ndarray:
    """[rows, cols] in [0, 1]: a half-ellipse against one edge, brightest at the chest wall."""
    yy, xx = np.mgrid[:rows, :cols]
    inside = (xx / (0.7 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 < 1
    img = np.where(inside, 0.4 + 0.5 * (1 - xx / cols), 0.0)
    return img[:, ::-1] if right else img


def write_dicom(path: Path, stored: np.ndarray, *, bits_stored: int = 12, **tags) -> Path:
    """A one-frame MG DICOM with `stored` (uint16) as its pixel data; `tags` by keyword (a
    value of None deletes that element; SOPClassUID and SOPInstanceUID also set the file
    meta)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.pop("SOPClassUID", MG_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = tags.pop("SOPInstanceUID", None) or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def stored_breast(rows=64, cols=48, right=False, top=4095) -> np.ndarray:
    return np.rint(smooth_breast(rows, cols, right) * top).astype(np.uint16)


def voi_lut_item(table: np.ndarray, first: int = 0) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(table), first, 16])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in table])  # LUT Data
    return item

