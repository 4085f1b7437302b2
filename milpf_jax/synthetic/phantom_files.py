"""Writing the phantom cohort (`synthetic.phantom`) to disk, once: DICOMs, manifest, lesion boxes.

Layout of a cohort (`make_phantom_cohort`):

    out_dir/images/P0001_E1_1.dcm ...  one MG "for presentation" file per view
    out_dir/manifest.csv               path, patient_id, exam_id, laterality, view, birads,
                                       lesion_kinds (one row per image; path relative to the CSV)
    out_dir/manifest.lesions.csv      one row per lesion per view, box in source pixels (the name
                                       every manifest's lesions file has: `<stem>.lesions.csv`)
    out_dir/phantom.json               config + version, written last (the cache key)

Each rendered view is encoded into stored values through the inverse of its own VOI transform,
so a reader that applies the window or VOI LUT and inverts MONOCHROME1 gets the display values
back (up to the reader's stretch of each image's own min..max).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from milpf_jax.files import atomic_open, write_text
from milpf_jax.reading import dicom
from milpf_jax.synthetic.phantom import (
    PHANTOM_VERSION,
    Encoding,
    PhantomConfig,
    ViewPlan,
    lesion_box,
    plan_cohort,
    render_view,
)

MANIFEST_COLUMNS = ("path", "patient_id", "exam_id", "laterality", "view", "birads")
LESION_COLUMNS = (
    "path", "patient_id", "exam_id", "laterality", "view",
    "y0", "x0", "y1", "x1", "kind", "birads", "lesion_id",
)  # fmt: skip
_SHORT_KIND = {
    "mass_round": "mass",
    "mass_spiculated": "mass",
    "calc_cluster": "calc",
    "benign_mass": "benign_mass",
    "benign_calc": "benign_calc",
}
SOP_CLASS_MG_PRESENTATION = dicom.MG_FOR_PRESENTATION


def encode(display: np.ndarray, enc: Encoding) -> np.ndarray:
    """Stored values uint16 [H, W] whose VOI transform (then MONOCHROME1 inversion) gives
    `display`."""
    top = 2**enc.bits_stored - 1
    # float32 holds every 16-bit integer exactly: enough for values that are rounded anyway.
    v = np.asarray(display, dtype=np.float32)
    if enc.photometric == "MONOCHROME1":
        v = 1 - v  # the viewer inverts after VOI, so VOI must give 1 - display
    if enc.voi == "window":  # PS3.3 C.11.2.1.2.1, LINEAR
        x = (v - 0.5) * (enc.width - 1) + enc.center - 0.5
    elif enc.voi == "sigmoid":
        v = np.clip(v, 1e-3, 1 - 1e-3)
        x = enc.center - enc.width / 4 * np.log(1 / v - 1)
    elif enc.voi == "lut":
        x = 4095 * v ** (1 / enc.lut_gamma)
    else:
        x = v * top
    return np.clip(np.rint(x), 0, top).astype(np.uint16)


def voi_lut_data(enc: Encoding) -> np.ndarray:
    """The 4096-entry, 12-bit VOI LUT uint16 [4096] of a `lut` encoding: a gamma curve."""
    ramp = np.arange(4096, dtype=np.float64) / 4095
    return np.rint(4095 * ramp**enc.lut_gamma).astype(np.uint16)


def _uid(cfg: PhantomConfig, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["milpf-phantom", str(cfg.seed), *map(str, parts)])


def _dataset(plan: ViewPlan, stored: np.ndarray, cfg: PhantomConfig):
    """A pydicom FileDataset: MG, For Presentation, uncompressed explicit VR little endian."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    enc = plan.encoding
    sop_uid = _uid(cfg, plan.patient_id, plan.exam_id, plan.image_number, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS_MG_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SOP_CLASS_MG_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(cfg, plan.patient_id, plan.exam_id, "study")
    ds.SeriesInstanceUID = _uid(cfg, plan.patient_id, plan.exam_id, plan.image_number, "series")
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Manufacturer = "milpf-jax phantom"
    ds.PatientID = plan.patient_id
    ds.PatientName = plan.patient_id  # no names: the phantom's own id
    ds.PatientSex = "F"
    ds.AccessionNumber = f"PH{cfg.seed % 1000:03d}{plan.study_index + 1:06d}"
    ds.StudyID = plan.exam_id
    ds.StudyDate = f"2021{1 + plan.study_index % 12:02d}{1 + plan.study_index % 28:02d}"
    ds.SeriesNumber = plan.image_number
    ds.InstanceNumber = plan.image_number
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = plan.laterality  # the only place the file states the side
    ds.ViewPosition = plan.view
    ds.BurnedInAnnotation = "NO"
    spacing = [f"{cfg.pixel_spacing_mm:g}", f"{cfg.pixel_spacing_mm:g}"]
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.PresentationLUTShape = "INVERSE" if enc.photometric == "MONOCHROME1" else "IDENTITY"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 0
    if enc.voi in ("window", "sigmoid"):
        centers, widths = [enc.center], [enc.width]
        if enc.second_window:  # a harder alternative view, as many archives carry
            centers.append(round(enc.center * 1.1, 1))
            widths.append(round(enc.width * 0.6, 1))
        ds.WindowCenter = centers if len(centers) > 1 else centers[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
        if enc.voi == "sigmoid":
            ds.VOILUTFunction = "SIGMOID"
    elif enc.voi == "lut":
        item = Dataset()
        item.add_new(0x00283002, "US", [4096, 0, 12])  # LUTDescriptor: entries, first, bits
        item.add_new(0x00283006, "OW", voi_lut_data(enc).astype("<u2").tobytes())  # LUTData
        item.LUTExplanation = f"GAMMA {enc.lut_gamma:.2f}"
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _write_dicom(plan: ViewPlan, cfg: PhantomConfig, out_dir: Path) -> None:
    stored = encode(render_view(plan, cfg), plan.encoding)
    with atomic_open(out_dir / plan.rel_path, "wb") as f:
        _dataset(plan, stored, cfg).save_as(f, enforce_file_format=True)


def _csv_text(columns: tuple[str, ...], rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _manifest_rows(plans: list[ViewPlan]) -> list[dict]:
    return [
        {
            "path": p.rel_path,
            "patient_id": p.patient_id,
            "exam_id": p.exam_id,
            "laterality": p.laterality,
            "view": p.view,
            "birads": p.birads,
            "lesion_kinds": "+".join(sorted({_SHORT_KIND[les.kind] for les in p.lesions})),
        }
        for p in plans
    ]


def _lesion_rows(plans: list[ViewPlan], cfg: PhantomConfig) -> list[dict]:
    rows = []
    for p in plans:
        for les in p.lesions:
            y0, x0, y1, x1 = lesion_box(les, p.laterality, cfg)
            rows.append(
                {
                    "path": p.rel_path,
                    "patient_id": p.patient_id,
                    "exam_id": p.exam_id,
                    "laterality": p.laterality,
                    "view": p.view,
                    "y0": y0,
                    "x0": x0,
                    "y1": y1,
                    "x1": x1,
                    "kind": les.kind,
                    "birads": p.birads,
                    "lesion_id": les.lesion_id,
                }
            )
    return rows


def _provenance(cfg: PhantomConfig) -> dict:
    return {
        "format": "milpf-phantom",
        "version": PHANTOM_VERSION,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),  # tuples -> lists
        "n_bags": cfg.n_bags,
        "n_images": cfg.n_bags * 2,
    }


def _cached(out_dir: Path, cfg: PhantomConfig) -> bool:
    """True when out_dir holds a finished cohort made with cfg (phantom.json is written last)."""
    try:
        stored = json.loads((out_dir / "phantom.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    want = _provenance(cfg)
    if stored.get("version") != want["version"] or stored.get("config") != want["config"]:
        return False
    if not (out_dir / "manifest.lesions.csv").is_file():
        return False
    try:
        with open(out_dir / "manifest.csv", newline="", encoding="utf-8") as f:
            paths = [row["path"] for row in csv.DictReader(f)]
    except (FileNotFoundError, KeyError):
        return False
    return len(paths) == want["n_images"] and all((out_dir / p).is_file() for p in paths)


def _write_breast(job: tuple[PhantomConfig, str, list[ViewPlan]]) -> int:
    cfg, out_dir, plans = job
    for plan in plans:
        _write_dicom(plan, cfg, Path(out_dir))
    return len(plans)


def make_phantom_cohort(
    out_dir: str | os.PathLike,
    cfg: PhantomConfig = PhantomConfig(),
    *,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Write a phantom cohort into out_dir and return the manifest path.

    A cache: when out_dir/phantom.json matches cfg and every file exists, nothing is written.
    Otherwise phantom.json is removed first, every file is rewritten atomically (tmp +
    os.replace) and phantom.json comes last, so a killed run is redone, never half-used.
    Output is identical for any `workers` (each view draws from its own seed).

    Example:
        manifest = make_phantom_cohort("runs/phantom", PhantomConfig(n_patients=10))
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    if _cached(out_dir, cfg):
        return manifest
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "phantom.json").unlink(missing_ok=True)
    plans = plan_cohort(cfg)
    wanted = {Path(p.rel_path).name for p in plans}
    # Left by a previous, larger cohort or by a killed run.
    stale = [*(out_dir / "images").glob("P*_E*_*.dcm"), *out_dir.glob("**/.*.tmp")]
    for old in stale:
        if old.name not in wanted:
            old.unlink()
    jobs = [(cfg, str(out_dir), plans[i : i + 2]) for i in range(0, len(plans), 2)]
    bar = None
    if progress:
        from milpf_jax.progress import progress_bar

        bar = progress_bar(total=len(plans), desc="phantom", unit="img")
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold JAX or torch threads that fork would copy. An
        # executor, not a Pool: a worker that dies raises BrokenProcessPool instead of hanging.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for n in pool.map(_write_breast, jobs, chunksize=8):
                if bar is not None:
                    bar.update(n)
    else:
        for job in jobs:
            n = _write_breast(job)
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    write_text(out_dir / "manifest.lesions.csv",
               _csv_text(LESION_COLUMNS, _lesion_rows(plans, cfg)))
    write_text(manifest, _csv_text(MANIFEST_COLUMNS + ("lesion_kinds",), _manifest_rows(plans)))
    write_text(out_dir / "phantom.json", json.dumps(_provenance(cfg), indent=2) + "\n")
    return manifest


def read_lesions(csv_path: str | os.PathLike) -> list[dict]:
    """Ground-truth lesions of a phantom cohort, one dict per lesion per view.

    Keys: path (str, resolved against the CSV's folder), rel_path (as written), patient_id,
    exam_id, laterality (L/R), view, y0, x0, y1, x1 (int, half-open, source pixels), kind,
    birads, lesion_id (shared by the CC and MLO rows of one lesion).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"lesion CSV {csv_path} not found; make it with make_phantom_cohort"
        )
    out = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(LESION_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{csv_path}: missing columns {sorted(missing)}; expected {list(LESION_COLUMNS)}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                box = {k: int(row[k]) for k in ("y0", "x0", "y1", "x1")}
            except ValueError as err:
                raise ValueError(f"{csv_path} line {line}: box is not integer: {row}") from err
            if not (box["y1"] > box["y0"] and box["x1"] > box["x0"]):
                raise ValueError(f"{csv_path} line {line}: empty box {box}; expected y1>y0, x1>x0")
            out.append(
                {
                    **row,
                    **box,
                    "path": str((csv_path.parent / row["path"]).resolve()),
                    "rel_path": row["path"],
                }
            )
    return out
