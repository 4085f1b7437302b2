"""Phantom cohort: valid MG DICOMs, determinism, cache, ground truth that matches the pixels."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers.repo import load_script
from milpf_jax.synthetic.phantom import PhantomConfig, plan_cohort, render_view
from milpf_jax.synthetic.phantom_files import (
    LESION_COLUMNS,
    MANIFEST_COLUMNS,
    SOP_CLASS_MG_PRESENTATION,
    make_phantom_cohort,
    read_lesions,
)

# 256 x 208 px at 0.8 mm is a full-size (205 x 166 mm) detector at a quarter of the resolution,
# so lesion sizes in mm keep their meaning; 3 patients = 6 bags, 12 views.
TINY = PhantomConfig(n_patients=3, rows=256, cols=208, pixel_spacing_mm=0.8, seed=7,
                     benign_fraction=0.1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    make_phantom_cohort(out, TINY, workers=1, progress=False)
    return out


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _decode(path: Path) -> np.ndarray:
    """What a reader shows: VOI LUT or window over its output range, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
    if "VOILUTSequence" in ds:
        top = 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    else:
        top = 2 ** int(ds.BitsStored) - 1
    unit = shown / top
    return 1 - unit if ds.PhotometricInterpretation == "MONOCHROME1" else unit


def test_files_are_mg_for_presentation_dicoms_with_varied_encodings(cohort):
    rows = _manifest(cohort)
    assert len(rows) == 12
    seen = Counter()
    for row in rows:
        ds = pydicom.dcmread(cohort / row["path"])
        assert ds.file_meta.MediaStorageSOPClassUID == SOP_CLASS_MG_PRESENTATION
        assert ds.SOPClassUID == SOP_CLASS_MG_PRESENTATION
        assert (ds.Modality, ds.PresentationIntentType) == ("MG", "FOR PRESENTATION")
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (256, 208, 16, 0)
        assert ds.BitsStored in (12, 14, 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.pixel_array.max() <= 2**ds.BitsStored - 1
        assert ds.ImageLaterality == row["laterality"]
        assert "Laterality" not in ds  # the side is stated only in ImageLaterality
        assert ds.ViewPosition == row["view"]
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.8]
        assert [float(v) for v in ds.ImagerPixelSpacing] == [0.8, 0.8]
        assert ds.PatientID == row["patient_id"] and str(ds.PatientName) == row["patient_id"]
        seen[ds.PhotometricInterpretation] += 1
        seen["lut" if "VOILUTSequence" in ds else "window" if "WindowCenter" in ds else "none"] += 1
        seen[f"bits{ds.BitsStored}"] += 1
    assert seen["MONOCHROME1"] >= 2 and seen["MONOCHROME2"] >= 6, seen
    assert seen["lut"] >= 2 and seen["window"] >= 6, seen
    assert seen["bits12"] >= 6 and seen["bits14"] + seen["bits16"] >= 1, seen


def test_uids_deterministic_and_unique(cohort):
    ds = [pydicom.dcmread(cohort / r["path"], stop_before_pixels=True) for r in _manifest(cohort)]
    assert len({d.SOPInstanceUID for d in ds}) == 12
    studies = {(d.PatientID, d.StudyInstanceUID) for d in ds}
    assert len(studies) == 3  # one study per patient's exam, shared by its four views


def test_decoded_pixels_match_the_rendered_display(cohort):
    """Encoding inverts each file's own VOI transform: a reader gets the intended image back."""
    for plan in plan_cohort(TINY):
        decoded = _decode(cohort / plan.rel_path)
        expected = render_view(plan, TINY)
        tol = 2e-3 if plan.encoding.voi != "sigmoid" else 1.5e-3
        if plan.encoding.voi == "none":  # no VOI: stored = display x (2**bits - 1)
            tol = 1.0 / (2**plan.encoding.bits_stored - 1)
        np.testing.assert_allclose(decoded, expected, atol=tol, err_msg=plan.rel_path)


def test_breast_on_the_chest_wall_side_and_air_dark(cohort):
    for row in _manifest(cohort):
        img = _decode(cohort / row["path"])
        left, right = img[:, :52].mean(), img[:, -52:].mean()
        if row["laterality"] == "R":  # chest wall on the right, as archives show right breasts
            assert right > left + 0.15, (row["path"], left, right)
        else:
            assert left > right + 0.15, (row["path"], left, right)
        nipple_side = img[:, -8:] if row["laterality"] == "L" else img[:, :8]
        assert np.median(nipple_side) < 0.05  # air beyond the nipple
        if row["view"] == "MLO":  # pectoral muscle: bright, in the top chest-wall corner
            corner = img[:20, :20] if row["laterality"] == "L" else img[:20, -20:]
            assert corner.mean() > 0.6


def test_lesions_inside_the_breast_and_brighter_than_around(cohort):
    lesions = read_lesions(cohort / "manifest.lesions.csv")
    assert {les["kind"] for les in lesions} >= {"calc_cluster"}
    for les in lesions:
        img = _decode(Path(les["path"]))
        y0, x0, y1, x1 = les["y0"], les["x0"], les["y1"], les["x1"]
        assert 0 <= y0 < y1 <= 256 and 0 <= x0 < x1 <= 208
        box = img[y0:y1, x0:x1]
        assert box.min() > 0.1, les  # no air in the box: wholly inside the breast
        top, lft = max(y0 - 6, 0), max(x0 - 6, 0)
        around = img[top : y1 + 6, lft : x1 + 6]
        ring = np.ones(around.shape, bool)
        ring[y0 - top : y1 - top, x0 - lft : x1 - lft] = False
        if les["kind"] == "calc_cluster":
            assert box.max() > 0.95, les  # specks reach the detector's white
        elif les["kind"].startswith("mass"):
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            assert img[cy - 1 : cy + 2, cx - 1 : cx + 2].mean() > around[ring].mean() + 0.25, les


def test_lesion_boxes_consistent_between_cc_and_mlo(cohort):
    by_id = defaultdict(dict)
    for les in read_lesions(cohort / "manifest.lesions.csv"):
        by_id[les["lesion_id"]][les["view"]] = les
    assert by_id
    for lesion_id, views in by_id.items():
        assert set(views) == {"CC", "MLO"}, lesion_id
        cc, mlo = views["CC"], views["MLO"]
        assert (cc["patient_id"], cc["exam_id"], cc["laterality"], cc["kind"]) == (
            mlo["patient_id"], mlo["exam_id"], mlo["laterality"], mlo["kind"],
        )  # fmt: skip
        # Same distance from the chest wall and same size; only the height differs.
        assert (cc["x0"], cc["x1"]) == (mlo["x0"], mlo["x1"]), lesion_id
        assert cc["y1"] - cc["y0"] == mlo["y1"] - mlo["y0"], lesion_id


def test_manifest_columns_bags_and_labels(cohort):
    with open(cohort / "manifest.csv", newline="") as f:
        assert next(csv.reader(f)) == [*MANIFEST_COLUMNS, "lesion_kinds"]
    rows = _manifest(cohort)
    bags = defaultdict(list)
    for r in rows:
        bags[(r["patient_id"], r["exam_id"], r["laterality"])].append(r)
    assert len(bags) == TINY.n_bags == 6
    assert all(sorted(r["view"] for r in b) == ["CC", "MLO"] for b in bags.values())
    assert all(len({r["birads"] for r in b}) == 1 for b in bags.values())
    labels = Counter(b[0]["birads"] for b in bags.values())
    n_malignant = sum(v for k, v in labels.items() if k[0] in "45")
    n_benign = labels["2"] + labels["3"]
    assert (n_malignant, n_benign, labels["1"]) == (2, 1, 3), labels  # 40% / 10% of 6 bags
    kinds_by_path = defaultdict(set)
    for les in read_lesions(cohort / "manifest.lesions.csv"):
        kinds_by_path[les["rel_path"]].add(les["kind"])
    for r in rows:
        assert bool(r["lesion_kinds"]) == bool(kinds_by_path[r["path"]]), r
        assert (r["birads"] == "1") == (not kinds_by_path[r["path"]]), r


def test_manifest_reads_as_a_cohort(cohort):
    from milpf_jax.reading.manifest import read_manifest

    read = read_manifest(cohort / "manifest.csv")
    assert read.label_kind == "birads"
    assert len(read.bags) == 6 and all(len(b.images) == 2 for b in read.bags)


def test_the_phantom_source_gives_the_cohort_with_its_lesions(tmp_path):
    """`phantom:...` through the reading layer's registry (an entry point): the cohort, the spec
    that reads it again, and its lesion boxes as Cohort.lesions (explain's ground truth)."""
    from milpf_jax.reading.sources import manifest_of, read_cohort

    spec = "phantom:n_patients=3,rows=256,cols=208,pixel_spacing_mm=0.8"
    got = read_cohort(spec, cache_dir=tmp_path, progress=False)
    assert (got.name, got.spec, got.label_kind, len(got.bags)) == ("phantom", spec, "birads", 6)
    rows = read_lesions(manifest_of(spec, cache_dir=tmp_path).parent / "manifest.lesions.csv")
    assert len(rows) >= 2
    assert sorted((les.path, les.box, les.kind) for les in got.lesions) == sorted(
        (r["path"], (r["y0"], r["x0"], r["y1"], r["x1"]), r["kind"]) for r in rows)
    assert {les.severity for les in got.lesions} <= {"M", "B"}
    assert all(os.path.isfile(les.path) for les in got.lesions)


def test_same_seed_same_bytes_other_seed_differs(cohort, tmp_path):
    again = tmp_path / "again"
    make_phantom_cohort(again, TINY, workers=1, progress=False)
    other = tmp_path / "other"
    make_phantom_cohort(other, dataclasses.replace(TINY, seed=8), workers=1, progress=False)
    for name in ("manifest.csv", "manifest.lesions.csv"):
        assert (again / name).read_bytes() == (cohort / name).read_bytes()
    for row in _manifest(cohort):
        a = pydicom.dcmread(cohort / row["path"])
        assert (again / row["path"]).read_bytes() == (cohort / row["path"]).read_bytes()
        b = pydicom.dcmread(other / row["path"])
        assert a.PixelData != b.PixelData and a.SOPInstanceUID != b.SOPInstanceUID


def test_workers_do_not_change_the_output(cohort, tmp_path):
    cfg = dataclasses.replace(TINY, n_patients=1)
    one, two = tmp_path / "one", tmp_path / "two"
    make_phantom_cohort(one, cfg, workers=1, progress=False)
    make_phantom_cohort(two, cfg, workers=2, progress=False)
    for row in _manifest(one):
        assert (one / row["path"]).read_bytes() == (two / row["path"]).read_bytes()


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_cache_writes_nothing_then_redoes_on_change_or_damage(tmp_path):
    cfg = dataclasses.replace(TINY, n_patients=1)
    out = tmp_path / "c"
    manifest = make_phantom_cohort(out, cfg, workers=1, progress=False)
    assert manifest == out / "manifest.csv"
    before = _mtimes(out)
    assert len(before) == 4 + 3  # 4 views, manifest, lesions, phantom.json
    assert make_phantom_cohort(out, cfg, workers=1, progress=False) == manifest
    assert _mtimes(out) == before  # a cache hit writes nothing

    # A killed run leaves no phantom.json: everything is made again.
    (out / "phantom.json").unlink()
    (out / "images" / "P0001_E1_1.dcm").write_bytes(b"half a file")
    (out / "images" / ".P0001_E1_3.dcm.999.tmp").write_bytes(b"half a file")
    make_phantom_cohort(out, cfg, workers=1, progress=False)
    assert pydicom.dcmread(out / "images" / "P0001_E1_1.dcm").Modality == "MG"
    assert json.loads((out / "phantom.json").read_text())["config"]["n_patients"] == 1

    # A missing image or another config also regenerates; stale images of a bigger cohort go.
    (out / "images" / "P0001_E1_2.dcm").unlink()
    make_phantom_cohort(out, cfg, workers=1, progress=False)
    assert (out / "images" / "P0001_E1_2.dcm").is_file()
    make_phantom_cohort(out, dataclasses.replace(cfg, n_patients=2), workers=1, progress=False)
    make_phantom_cohort(out, cfg, workers=1, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == [  # no tmp files either
        f"P0001_E1_{i}.dcm" for i in range(1, 5)
    ]


def test_default_cohort_plan_meets_the_budget():
    """The default cohort's plan (no pixels): size, label mix and lesion sizes."""
    cfg = PhantomConfig()
    plans = plan_cohort(cfg)
    assert cfg.n_bags >= 500 and len(plans) == 2 * cfg.n_bags
    bags = {(p.patient_id, p.exam_id, p.laterality): p for p in plans}
    labels = Counter(p.birads for p in bags.values())
    malignant = sum(v for k, v in labels.items() if k[0] in "45")
    assert 0.35 <= malignant / len(bags) <= 0.45 and labels["1"] / len(bags) >= 0.45
    assert 0.08 <= (labels["2"] + labels["3"]) / len(bags) <= 0.12
    calc_only = sum({les.kind for les in p.lesions} == {"calc_cluster"} for p in bags.values())
    assert 0.25 <= calc_only / malignant <= 0.35
    diameters = [2 * les.core * cfg.pixel_spacing_mm for p in bags.values() for les in p.lesions
                 if les.kind.startswith("mass")]  # fmt: skip
    assert min(diameters) < 8 and max(diameters) > 20  # small (5-8 mm) to large (~25 mm)


def test_read_lesions_columns_and_errors(cohort, tmp_path):
    rows = read_lesions(cohort / "manifest.lesions.csv")
    assert set(LESION_COLUMNS) <= set(rows[0]) and isinstance(rows[0]["y0"], int)
    assert Path(rows[0]["path"]).is_file()
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_lesions(tmp_path / "nothere.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,y0,x0,y1,x1\na.dcm,0,0,1,1\n")
    with pytest.raises(ValueError, match="missing columns.*kind"):
        read_lesions(bad)


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="positive_fraction"):
        PhantomConfig(positive_fraction=1.5)
    with pytest.raises(ValueError, match=r"benign_fraction: sum 1\.2; expected <= 1"):
        PhantomConfig(positive_fraction=0.6, benign_fraction=0.6)
    with pytest.raises(ValueError, match="could not place a mass"):
        plan_cohort(PhantomConfig(n_patients=2, rows=96, cols=80, pixel_spacing_mm=0.2))


def test_reader_flip_maps_boxes_by_mirroring_x(cohort):
    imaging = pytest.importorskip("milpf_jax.reading.imaging")
    lesions = [les for les in read_lesions(cohort / "manifest.lesions.csv")
               if les["laterality"] == "R"]
    if not lesions:
        pytest.skip("this tiny cohort has no right-breast lesion")
    for les in lesions:
        image = imaging.read_image(les["path"])
        assert image.flipped, les["path"]  # the reader puts the breast on the left
        w = image.pixels.shape[1]
        y0, x0, y1, x1 = les["y0"], les["x0"], les["y1"], les["x1"]
        shown = image.pixels[y0:y1, w - x1 : w - x0]
        decoded = _decode(Path(les["path"]))  # the reader stretches its own min..max
        source = ((decoded - decoded.min()) / (decoded.max() - decoded.min()))[y0:y1, x0:x1]
        np.testing.assert_allclose(shown, source[:, ::-1], atol=1e-3)


def test_cli_writes_a_cohort(tmp_path, capsys):
    cli = load_script("phantom")
    flags = {a.dest for a in cli.build_parser()._actions}
    assert {f.name for f in dataclasses.fields(PhantomConfig)} <= flags
    out = tmp_path / "cli"
    cli.main(
        ["--out", str(out), "--n-patients", "1", "--rows", "256", "--cols", "208",
         "--pixel-spacing-mm", "0.8", "--mass-diameter-mm", "6", "12", "--workers", "1",
         "--no-progress"]
    )  # fmt: skip
    saved = json.loads((out / "phantom.json").read_text())["config"]
    assert saved["n_patients"] == 1 and saved["mass_diameter_mm"] == [6.0, 12.0]
    assert "4 images, 2 bags" in capsys.readouterr().out
