"""experiments/predict.py: a finished run on new exams, end to end.

A head is trained on a tiny phantom with the stand-in encoder (as the explain tests do). Then:
with the run's own cohort nothing is encoded and every test breast gets the sweep's p_best; with
a folder of the phantom's test DICOMs (no labels) every breast is scored again through a new
store, joined on file path; files that are not usable mammograms are listed with their reasons;
a bag whose only view cannot be read gets no score; bad runs are refused before any work.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers.repo import MIAS_DIR, load_script, needs_mias
from helpers.runs import train_standin_run
from milpf_jax.explanation.predict import (
    BREAST_COLUMNS,
    EXAM_COLUMNS,
    compare_distributions,
    exam_rows,
    predict_images,
    read_thresholds,
)
from milpf_jax.reading.dicom_folder import read_dicom_folder

SPEC = "phantom:n_patients=24,rows=256,cols=208,pixel_spacing_mm=0.8"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    mp = train_standin_run(root, SPEC)
    yield root
    mp.undo()


def _cohort(root: Path):
    from milpf_jax.reading.sources import read_cohort

    return read_cohort(SPEC, cache_dir=root / "cache")


def _test_dicoms(root: Path, folder: Path) -> dict[str, str]:
    """Copy the run's test breasts' DICOMs into `folder`; file name -> the run's bag id."""
    test = {r["bag_id"] for r in read_csv(root / "run" / "predictions.csv")
            if r["split"] == "test"}
    folder.mkdir(parents=True, exist_ok=True)
    owner = {}
    for bag in _cohort(root).bags:
        if bag.bag_id in test:
            for image in bag.images:
                shutil.copy(image.path, folder / Path(image.path).name)
                owner[Path(image.path).name] = bag.bag_id
    return owner


def test_the_runs_own_cohort_encodes_nothing_and_gives_p_best(run):
    predict = load_script("predict")
    out = run / "own"
    assert predict.main(["--run", str(run / "run"), "--cohort", SPEC, "--out", str(out),
                         "--quiet", "--workers", "0"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoded_bags"] == 0
    sweep_rows = {r["bag_id"]: r for r in read_csv(run / "run" / "predictions.csv")}
    rows = read_csv(out / "predictions.csv")
    assert tuple(rows[0]) == BREAST_COLUMNS
    ours = {r["bag_id"]: r for r in rows}
    test = [b for b, r in sweep_rows.items() if r["split"] == "test"]
    assert test and set(test) <= set(ours)
    for bag in test:
        assert float(ours[bag]["p"]) == pytest.approx(float(sweep_rows[bag]["p_best"]), abs=1e-6)
    # every bag the store holds is scored, those the label mapping leaves out (BI-RADS 2, 3) too
    assert len(ours) == 2 * 24 - len(summary["unscored_breasts"])
    results = json.loads((run / "run" / "results.json").read_text())
    t, ts = (results["best"]["test"][k]["value"] for k in ("threshold", "threshold_sens90"))
    for r in rows:  # p >= threshold (p is written to 8 decimals, the flag on the full value)
        for flag, threshold in (("flag_bacc", t), ("flag_sens90", ts)):
            if abs(float(r["p"]) - threshold) > 1e-8:
                assert int(r[flag]) == (float(r["p"]) >= threshold)
    exams = read_csv(out / "exams.csv")
    assert tuple(exams[0]) == EXAM_COLUMNS
    for e in exams:
        mine = [float(r["p"]) for r in rows
                if (r["patient_id"], r["exam_id"]) == (e["patient_id"], e["exam_id"])]
        assert float(e["p"]) == pytest.approx(max(mine), abs=1e-8) and int(e["breasts"]) == len(
            mine)


def test_a_dicom_folder_without_labels_is_scored_and_its_junk_listed(run):
    folder = run / "new"
    owner = _test_dicoms(run, folder)
    # files that are not usable mammograms, each for its own reason
    (folder / "notes.txt").write_text("not a DICOM file")
    first = sorted(folder.glob("*.dcm"))[0]
    for name, change in (
        ("ct.dcm", lambda ds: setattr(ds, "Modality", "CT")),
        ("raw.dcm", lambda ds: setattr(ds, "PresentationIntentType", "FOR PROCESSING")),
        ("nolat.dcm", lambda ds: (delattr(ds, "ImageLaterality"))),
    ):
        ds = pydicom.dcmread(first)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        change(ds)
        ds.save_as(folder / name)
    predict = load_script("predict")
    out = run / "new-out"
    assert predict.main(["--run", str(run / "run"), "--dicom-dir", str(folder), "--out",
                         str(out), "--quiet", "--workers", "0"]) == 0  # fmt: skip
    failures = {Path(r["path"]).name: r for r in read_csv(out / "failures.csv")}
    assert set(failures) == {"notes.txt", "ct.dcm", "raw.dcm", "nolat.dcm"}
    assert "not a DICOM" in failures["notes.txt"]["reason"]
    assert "'CT'" in failures["ct.dcm"]["reason"]
    assert "FOR PROCESSING" in failures["raw.dcm"]["reason"]
    assert "Laterality" in failures["nolat.dcm"]["reason"]
    assert all(r["stage"] == "read" for r in failures.values())

    # joined on file path, every breast has the sweep's p_best (a new store, re-encoded)
    sweep_p = {r["bag_id"]: float(r["p_best"]) for r in read_csv(run / "run" / "predictions.csv")}
    cohort, _ = read_dicom_folder(folder)
    ours = {r["bag_id"]: r for r in read_csv(out / "predictions.csv")}
    assert len(ours) == len(set(owner.values())) == len(cohort.bags)
    for bag in cohort.bags:
        origin = {owner[Path(i.path).name] for i in bag.images}
        assert len(origin) == 1
        assert float(ours[bag.bag_id]["p"]) == pytest.approx(sweep_p[origin.pop()], abs=1e-3)
        ds = pydicom.dcmread(bag.images[0].path, stop_before_pixels=True)
        assert bag.exam_id == ds.StudyInstanceUID and bag.patient_id == ds.PatientID
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoded_bags"] == len(cohort.bags) and summary["failed_files"] == 4
    assert summary["distribution"]["breast"]["new"]["n"] == len(ours)

    # a rerun encodes nothing
    again = predict_images(run / "run", folder, cache_dir=run / "cache", workers=0)
    assert again.summary["encoded_bags"] == 0
    assert [r["p"] for r in again.breasts] == pytest.approx(
        [float(ours[r["bag_id"]]["p"]) for r in again.breasts], abs=1e-7)


def test_a_breast_whose_only_view_fails_gets_no_score_and_its_reason(run, tmp_path):
    folder = tmp_path / "one"
    _test_dicoms(run, folder)
    victim = sorted(folder.glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    kept = {Path(p).name for p in folder.glob("*.dcm")}
    # the breast keeps a single view whose pixel data is cut short: it fails at planning
    victim_bag = next(b for b in read_dicom_folder(folder)[0].bags
                      if victim.name in {Path(i.path).name for i in b.images})
    for image in victim_bag.images:
        if Path(image.path).name != victim.name:
            Path(image.path).unlink()
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) - ds.Rows * ds.Columns])
    assert len(kept) > 2
    result = predict_images(run / "run", folder, cache_dir=run / "cache", workers=0)
    assert victim_bag.bag_id in result.summary["unscored_breasts"]
    assert victim_bag.bag_id not in {r["bag_id"] for r in result.breasts}
    reasons = [f for f in result.failures if f["bag_id"] == victim_bag.bag_id]
    assert reasons and reasons[0]["stage"] in ("plan", "encode") and reasons[0]["reason"]


def test_a_folder_without_a_mammogram_ends_with_exit_1_and_the_list(run, tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    predict = load_script("predict")
    from milpf_jax.cli import run as run_main

    out = tmp_path / "out"
    code = run_main(predict.main, ["--run", str(run / "run"), "--dicom-dir", str(folder),
                                   "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no usable mammogram" in err and "failures.csv" in err
    assert [Path(r["path"]).name for r in read_csv(out / "failures.csv")] == ["a.txt"]


def test_runs_that_cannot_score_new_images_are_refused(run, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no best head"):
        predict_images(tmp_path, tmp_path)
    # a head trained on imported features: no encoder to re-run, refused before reading images
    from milpf_jax.learning import checkpoint

    real = checkpoint.read_metadata

    def imported(directory, step=None):
        meta = real(directory, step)
        return {**meta, "store_attrs": {**meta["store_attrs"], "encoder": "imported:uni"}}

    monkeypatch.setattr(checkpoint, "read_metadata", imported)
    with pytest.raises(ValueError, match="imported features .*'imported:uni'"):
        predict_images(run / "run", tmp_path / "not-read")


def test_usage_errors_exit_2_naming_the_flags(tmp_path, capsys):
    predict = load_script("predict")
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--run", str(tmp_path)])
    assert exit_.value.code == 2 and "--dicom-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--run", str(tmp_path), "--dicom-dir", "a", "--cohort", "b"])
    assert exit_.value.code == 2 and "exactly one" in capsys.readouterr().err
    # an unlabelled folder is for scoring: the sweep refuses it before extracting anything
    with pytest.raises(SystemExit) as exit_:
        load_script("sweep").main(["--cohort", f"dicoms:{tmp_path}"])
    assert exit_.value.code == 2 and "predict.py" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_thresholds_from_a_file_and_exam_rows():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.json"
        path.write_text(json.dumps({"threshold": 0.3, "threshold_sens90": 0.1}))
        t = read_thresholds(path)
        assert (t.bacc, t.sens90, t.exam_bacc) == (0.3, 0.1, None)
        path.write_text(json.dumps({"threshold": "x"}))
        with pytest.raises(ValueError, match="threshold_sens90"):
            read_thresholds(path)
    rows = [dict(patient_id="P", exam_id="E", p=0.2), dict(patient_id="P", exam_id="E", p=0.7),
            dict(patient_id="Q", exam_id="E", p=0.4)]
    exams = exam_rows(rows, t)
    assert [(e["patient_id"], e["p"], e["breasts"], e["flag_bacc"]) for e in exams] == [
        ("P", 0.7, 2, ""), ("Q", 0.4, 1, "")]


def test_distribution_comparison_sees_a_shift():
    rng = np.random.default_rng(0)
    val = rng.uniform(0, 1, 400)
    same = compare_distributions(rng.uniform(0, 1, 400), val, (("bacc", 0.5),))
    shifted = compare_distributions(rng.uniform(0.3, 1, 400), val, (("bacc", 0.5),))
    assert same["ks_pvalue"] > 0.01 > shifted["ks_pvalue"]
    assert shifted["flagged"]["bacc"]["new"] == pytest.approx(
        np.mean(rng.uniform(0.3, 1, 100000) >= 0.5), abs=0.06)
    assert same["new"]["quantiles"]["0.5"] == pytest.approx(0.5, abs=0.08)


def _two_exams(run: Path, folder: Path) -> list[Path]:
    """The DICOMs of the first two test exams, copied into `folder`."""
    owner = _test_dicoms(run, folder / "all")
    exams = sorted({bag.rsplit("/", 1)[0] for bag in owner.values()})[:2]
    folder.mkdir(exist_ok=True)
    kept = []
    for name, bag in owner.items():
        if bag.rsplit("/", 1)[0] in exams:
            kept.append(Path(shutil.copy(folder / "all" / name, folder / name)))
    shutil.rmtree(folder / "all")
    return kept


@pytest.mark.parametrize("maps", ["store", "retile"])
def test_dicom_out_gives_each_exam_its_objects(run, tmp_path, maps):
    import highdicom as hd

    files = _two_exams(run, tmp_path / "in")
    out = tmp_path / "out"
    predict = load_script("predict")
    assert predict.main(["--run", str(run / "run"), "--dicom-dir", str(tmp_path / "in"),
                         "--out", str(out), "--maps", maps, "--dicom-out", "--quiet",
                         "--workers", "0", "--device", "cpu"]) == 0  # fmt: skip
    breasts = read_csv(out / "predictions.csv")
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    index = read_csv(out / "dicom" / "index.csv")
    assert len({r["exam_id"] for r in index}) == 2
    assert sum(r["kind"] == "secondary capture" for r in index) == len(files)
    assert sum(r["kind"] == "segmentation" for r in index) == len(files)
    assert sum(r["kind"] == "structured report" for r in index) == 2
    assert len(list((out / "overlays").glob("*/*.png"))) == len(files)
    for row in index:
        ds = pydicom.dcmread(out / "dicom" / _folder(row["exam_id"]) / row["file"])
        assert ds.StudyInstanceUID == row["exam_id"]
        if row["kind"] == "segmentation":
            source = pydicom.dcmread(sources[row["source_sop_instance_uid"]],
                                     stop_before_pixels=True)
            assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns)
        if row["kind"] == "structured report":
            sr = hd.sr.srread(out / "dicom" / _folder(row["exam_id"]) / row["file"])
            regions = sr.content.get_planar_roi_measurement_groups()
            for group in regions:
                ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
                assert ref.ReferencedSOPInstanceUID in sources
            scores = sorted(m.value for g in sr.content.get_image_measurement_groups()
                            for m in g.get_measurements())
            mine = sorted(float(b["p"]) for b in breasts if b["exam_id"] == row["exam_id"])
            assert scores == pytest.approx(mine, abs=1e-6)


def _folder(exam_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", exam_id).strip("_")


def test_store_maps_are_the_heads_attention_on_the_stored_tiles(run):
    """--maps store: the probability of the map is the breast's p (the same stored tiles through
    the same head), each view's map is the mean of the covering tiles' attention, and a tile's
    weight sits where its stored box says, on the file's own grid."""
    from milpf_jax.data.store import Store
    from milpf_jax.explanation.maps import attention_map
    from milpf_jax.explanation.predict import explain_scored

    result = predict_images(run / "run", SPEC, cache_dir=run / "cache", workers=0)
    explained = explain_scored(run / "run", result, result.cohort, maps="store")
    store = Store.open(result.store)
    for k, row in enumerate(result.breasts[:6]):
        bag = explained[row["bag_id"]]
        assert bag.probability == pytest.approx(row["p"], abs=1e-6)
        assert sum(len(v.weights) for v in bag.views) == int(np.sum(result.packed.tile_bag == k))
        i = int(result.packed.store_index[k])
        for j, view in enumerate(bag.views):
            rows, cols = (int(x) for x in store.array("view_shape")[i, j])
            assert view.attention.shape == (rows, cols) == view.pixels.shape
            assert np.allclose(view.attention,
                               attention_map((rows, cols), view.tile_boxes, view.weights))
            top = view.tile_boxes[int(np.argmax(view.weights))]
            y0, x0, y1, x1 = (int(c) for c in top)
            assert view.attention[y0:y1, x0:x1].max() > 0
        total = sum(float(v.weights.sum()) for v in bag.views)
        assert total == pytest.approx(1.0, abs=1e-5)  # softmax over the bag's tiles


@needs_mias
def test_the_docs_example_command_runs_on_a_real_mini_mias_image(run, tmp_path):
    """experiments/predict_example.py, as the README gives it, on a stand-in run: the image
    becomes an MG DICOM, is scored, and its Secondary Capture lands as a small PNG."""
    from PIL import Image

    example = load_script("predict_example")
    out = tmp_path / "docs"
    assert example.main(["--run", str(run / "run"), "--mias-dir", str(MIAS_DIR), "--out",
                         str(out)]) == 0  # fmt: skip
    listed = (out / "listing.txt").read_text()
    for name in ("sc-LMLO.dcm", "seg-LMLO.dcm", "sr.dcm", "predictions.csv", "exams.csv"):
        assert name in listed
    picture = Image.open(out / "sc-mdb023.png")
    assert picture.width == 560 and (out / "sc-mdb023.png").stat().st_size <= 200_000
    source = Image.open(MIAS_DIR / "images" / "mdb023.png")
    assert picture.height > 560 * source.height / source.width  # the caption band on top
