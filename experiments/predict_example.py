"""The picture in docs/predict/: one real mini-MIAS mammogram scored by a finished run, with
its DICOM outputs, as predict.py writes them for a radiologist's viewer.

    python experiments/predict_example.py --run runs/phantom-efficientnet-lite0-<UTC time> \\
        --mias-dir "$MILPF_MIAS_DIR" --out docs/predict

mini-MIAS ships PNGs, not DICOMs, so the image is first written as an MG DICOM (its pixels
untouched, 0.2 mm, MLO, the side from its number, UIDs derived from its name) into a temporary
folder; `predict.py --dicom-dir ... --dicom-out` then scores it. Writes OUT/listing.txt (the
output folder, every file with its size), OUT/sc-<image>.png (the Secondary Capture's pixels,
at most 560 px wide) and OUT/sr.txt (dcmtk's `dsrdump` of the SR, when installed). The images
stay under the mini-MIAS licence: the PNG in the repository is the example's only copy.
"""

from __future__ import annotations

if __name__ == "__main__":  # allocator and XLA settings, before jax loads (milpf_jax.runtime)
    from milpf_jax.runtime import configure_process

    configure_process()

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.cli import add_config_flags, config_from_args, run
from milpf_jax.config import option

PNG_WIDTH = 560


@dataclass(frozen=True)
class ExampleCommand:
    run: str = option(help="a finished sweep folder (best/, results.json)")
    mias_dir: str = option(os.environ.get("MILPF_MIAS_DIR", "../shared/data/mias-dev"),
                           "a mini-MIAS folder (Info.txt, images/mdbNNN.png)")
    image: str = option("mdb023", "which image (mdb023: a malignant circumscribed mass)")
    out: str = option("docs/predict", "where listing.txt, sc-<image>.png and sr.txt go")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p, ExampleCommand)
    return p


def mias_as_dicom(png: Path, out_dir: Path) -> Path:
    """mini-MIAS image `png` as a FOR PRESENTATION MG DICOM in `out_dir` (pixels as stored)."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    name = png.stem
    pixels = np.asarray(Image.open(png).convert("L"), np.uint16)
    uid = lambda part: generate_uid(entropy_srcs=["milpf-jax mini-MIAS example", name, part])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid("image")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.PatientID, ds.Modality = name, "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "L" if int(name[3:]) % 2 else "R"  # odd: left breast
    ds.ViewPosition = "MLO"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path = out_dir / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def listing(folder: Path) -> str:
    """Every file under `folder`, relative, with its size."""
    rows = [f"{p.relative_to(folder).as_posix():<60} {p.stat().st_size:>10,} bytes"
            for p in sorted(folder.rglob("*")) if p.is_file()]
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    import pydicom
    from PIL import Image

    parser = build_parser()
    opts = config_from_args(ExampleCommand, parser.parse_args(argv), parser)
    png = Path(opts.mias_dir) / "images" / f"{opts.image}.png"
    if not png.is_file():
        raise FileNotFoundError(f"{png}: not found; --mias-dir names a mini-MIAS folder")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        mias_as_dicom(png, tmp / "in")
        scored = tmp / "scored"
        sys.path.insert(0, str(here))
        import predict

        predict.main(["--run", opts.run, "--dicom-dir", str(tmp / "in"), "--out", str(scored),
                      "--dicom-out", "--quiet", "--workers", "0"])
        (out / "listing.txt").write_text(listing(scored))
        [sc] = sorted(scored.glob("dicom/*/sc-*.dcm"))
        picture = Image.fromarray(pydicom.dcmread(sc).pixel_array)
        if picture.width > PNG_WIDTH:
            picture = picture.resize((PNG_WIDTH, round(picture.height * PNG_WIDTH /
                                                       picture.width)), Image.LANCZOS)
        picture.save(out / f"sc-{opts.image}.png", optimize=True)
        [sr] = sorted(scored.glob("dicom/*/sr.dcm"))
        if shutil.which("dsrdump"):
            text = subprocess.run(["dsrdump", str(sr)], capture_output=True, text=True,
                                  check=True).stdout
            (out / "sr.txt").write_text(text)
    print(f"wrote {out / 'listing.txt'}, {out / f'sc-{opts.image}.png'}"
          + (f" and {out / 'sr.txt'}" if (out / "sr.txt").exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
