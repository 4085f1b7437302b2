"""End to end, per public dataset: a miniature copy of the dataset's folder (its tables in the
published format, real small MG DICOMs where the dataset keeps them) -> `experiments/manifest.py
--dataset` -> `experiments/extract.py` (the deterministic stand-in encoder, into a cache under
tmp_path) -> `experiments/sweep.py --task` on the cohort, which finds that cached store.

Each test checks what the manifest holds (rows, bags, every task's raw labels), the store's tasks,
that the run records the task asked for with bag and positive counts per split that follow the
task's label rule and the patient-grouped split drawn from its raw labels, and that a task the
store lacks is refused naming the tasks it holds. The per-dataset table formats are those of the
adapters' unit tests (test_vindr.py, test_rsna.py, test_inbreast.py, ...).
"""

from __future__ import annotations

import csv
import json
import plistlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers.dicoms import smooth_breast, write_dicom
from helpers.repo import load_script
from helpers.standin import STANDIN, install_standin
from milpf_jax.data import labels
from milpf_jax.data.store import DONE, Store

ROWS, COLS = 128, 96  # every miniature image; 32 px tiles give a few tissue tiles per view
INPUT = 32  # the stand-in's input size = the tile size: no resampling of tiles
EXTRACT_FLAGS = ["--encoder", STANDIN, "--tile-size", "32", "--workers", "0", "--device", "cpu",
                 "--batch-size", "64"]
SWEEP_FLAGS = ["--seeds", "2", "--epochs", "30", "--bootstrap", "20", "--quiet"]


# --- images --------------------------------------------------------------------------------------


def lesion_centre(right: bool, seed: int) -> tuple[int, int]:
    """(row, col) in the file's pixels of a positive image's bright blob, inside the breast."""
    col = 24 + seed % 8
    return 40 + (seed * 7) % 48, COLS - 1 - col if right else col


def stored_pixels(right: bool, lesion: bool, seed: int) -> np.ndarray:
    """[ROWS, COLS] uint16 (12 bit): a smooth breast with faint texture, a bright blob when
    `lesion` (so the task is learnable; no test relies on it)."""
    img = smooth_breast(ROWS, COLS, right=right)
    rng = np.random.default_rng(seed)
    img = np.where(img > 0, img + 0.04 * rng.standard_normal(img.shape), 0.0)
    if lesion:
        cy, cx = lesion_centre(right, seed)
        yy, xx = np.mgrid[:ROWS, :COLS]
        img = img + 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0 ** 2))
    return np.rint(np.clip(img, 0, 1) * 4095).astype(np.uint16)


def mammogram(path: Path, laterality: str, view: str, *, lesion: bool, seed: int,
              **tags) -> Path:
    """A real MG DICOM at `path` with the image's laterality and view in its tags."""
    return write_dicom(path, stored_pixels(laterality == "R", lesion, seed),
                       ImageLaterality=laterality, ViewPosition=view, **tags)


def lesion_box(laterality: str, seed: int) -> tuple[int, int, int, int]:
    """(xmin, ymin, xmax, ymax) around the blob, in the file's pixels."""
    cy, cx = lesion_centre(laterality == "R", seed)
    return cx - 8, cy - 8, cx + 8, cy + 8


# --- the pipeline --------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def bags_of(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The manifest's rows per breast (patient, exam, laterality), in file order."""
    out: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["patient_id"], r["exam_id"], r["laterality"]), []).append(r)
    return out


def run_pipeline(tmp_path: Path, monkeypatch, capsys, dataset: str, root: Path, task: str):
    """manifest.py -> extract.py (into $MILPF_CACHE) -> sweep.py --cohort --task; returns
    (manifest path, its printed summary, the store path extract printed, results.json)."""
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path / "cache"))
    install_standin(monkeypatch.setitem, monkeypatch.setattr, input_size=INPUT)
    manifest = tmp_path / "out" / f"{dataset}.csv"
    assert load_script("manifest").main(["--dataset", dataset, "--root", str(root),
                                         "--out", str(manifest)]) == 0
    summary = capsys.readouterr().out
    assert load_script("extract").main(["--cohort", str(manifest), *EXTRACT_FLAGS,
                                        "--quiet"]) == 0
    printed = capsys.readouterr().out
    store = Path(next(line.split(None, 1)[1] for line in printed.splitlines()
                      if line.startswith("store ")))
    assert store.parent == tmp_path / "cache" / "stores" and store.name.startswith(f"{dataset}-")
    run = tmp_path / "run"
    assert load_script("sweep").main(["--cohort", str(manifest), *EXTRACT_FLAGS, "--task", task,
                                      *SWEEP_FLAGS, "--out", str(run)]) == 0
    capsys.readouterr()
    results = json.loads((run / "results.json").read_text())
    return manifest, summary, store, results


def expected_counts(manifest: Path, task: str, mapping: str) -> tuple[dict, dict, dict]:
    """From the manifest alone: bags and positives per split of `task` under `mapping` (the
    70/10/20 patient split of seed 0, stratified by the task's raw labels), and the bags the
    mapping leaves out per raw label."""
    bags = bags_of(read_csv(manifest))
    patients = [key[0] for key in bags]
    raw = [members[0][task] for members in bags.values()]
    split = labels.make_splits(patients, raw, [-1] * len(bags), seed=0)
    mapped = labels.map_labels(raw, labels.MAPPINGS[mapping])
    names = labels.SPLIT_NAMES
    n_bags = {s: int(np.sum((split == i) & (mapped >= 0))) for i, s in enumerate(names)}
    positives = {s: int(np.sum((split == i) & (mapped == 1))) for i, s in enumerate(names)}
    left_out = dict(sorted(Counter(r for r, m in zip(raw, mapped) if m < 0).items()))
    return n_bags, positives, left_out


def check_run(tmp_path: Path, manifest: Path, store: Path, results: dict, *, dataset: str,
              task: str, mapping: str, tasks: list[tuple[str, str]], n_positive: int,
              n_negative: int) -> None:
    """The store holds every bag, done, and `tasks`; the run trained on `task` with the bag
    counts the label rule and the split give; its predictions cover those bags."""
    bags = bags_of(read_csv(manifest))
    s = Store.open(store)
    assert s.tasks() == tasks
    assert s.n_bags == len(bags) and bool(np.all(s.status() == DONE))
    assert s.attrs["cohort"] == dataset and s.attrs["encoder"] == STANDIN
    assert sorted(map(str, s.array("bag_id"))) == sorted("/".join(k) for k in bags)

    assert results["store"] == str(store)  # the sweep found the store extract.py made
    data = results["data"]
    assert data["task"] == task and data["mapping"] == mapping
    n_bags, positives, left_out = expected_counts(manifest, task, mapping)
    assert data["bags"] == n_bags and data["positives"] == positives
    assert data["excluded_by_mapping"] == left_out and data["skipped_unfinished"] == 0
    assert sum(n_bags.values()) == n_positive + n_negative
    assert sum(positives.values()) == n_positive
    for split in ("train", "val", "test"):  # both classes in every split
        assert 0 < positives[split] < n_bags[split], (split, n_bags, positives)
    best = results["best"]["test"]  # the selected run, tested once on the test split
    assert (best["n"]["value"], best["n_pos"]["value"]) == (n_bags["test"], positives["test"])
    assert 0.0 <= best["auc"]["value"] <= 1.0
    predictions = read_csv(tmp_path / "run" / "predictions.csv")
    assert len(predictions) == n_positive + n_negative
    assert Counter(p["split"] for p in predictions) == {k: v for k, v in n_bags.items() if v}
    by_bag = {"/".join(k): members[0][task] for k, members in bags.items()}
    assert all(p["raw_label"] == by_bag[p["bag_id"]] for p in predictions)
    assert sum(int(p["label"]) for p in predictions) == n_positive
    assert all(0.0 <= float(p["p_best"]) <= 1.0 for p in predictions)


def check_unknown_task(store: Path, tmp_path: Path, capsys, wrong: str, held: list[str]) -> None:
    """A --task the store lacks: exit 1 and one error line naming the store's tasks."""
    from milpf_jax.cli import run as run_cli

    argv = ["--store", str(store), "--task", wrong, *SWEEP_FLAGS, "--out", str(tmp_path / "bad")]
    assert run_cli(load_script("sweep").main, argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: store ")
    assert f"no task {wrong!r}; it holds {', '.join(held)} (choose one with --task)" in err
    assert not (tmp_path / "bad" / "results.json").exists()


# --- VinDr-Mammo ---------------------------------------------------------------------------------

VINDR_BREAST_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,"
                       "breast_birads,breast_density,split")
VINDR_FINDING_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,"
                        "breast_birads,breast_density,finding_categories,finding_birads,"
                        "xmin,ymin,xmax,ymax,split")
VINDR_STUDIES = 24
VINDR_MASS = {0, 2, 5, 7, 9, 12, 14, 17, 19, 22}  # studies with a mass in one breast
VINDR_CALC = {2, 4, 10, 15, 20, 23}  # studies with a suspicious calcification in one breast
VINDR_MISSING = "img-03-R-MLO"  # listed in the table, its DICOM absent


def write_vindr(root: Path) -> dict:
    """VinDr-Mammo's layout: the two annotation tables and images/<study_id>/<image_id>.dicom.
    Each study: L and R breasts, CC and MLO each. A mass study's breast (R for even studies, L
    for odd) is BI-RADS 4 or 5 with a 'Mass' finding on its CC image only (and, in two studies,
    also a calcification); a calcification-only study's L breast is BI-RADS 3 with a finding on
    its MLO; other breasts BI-RADS 1 or 2 with 'No Finding'. Returns what to expect."""
    breast, finding = [VINDR_BREAST_HEADER], [VINDR_FINDING_HEADER]
    expected = {"birads": {}, "mass": {}, "calcification": {}, "boxes": 0}
    seed = 0
    for s in range(VINDR_STUDIES):
        study, series = f"{s:02d}ab{s * 37 % 1000:03d}", f"se{s:02d}"
        split = "test" if s % 5 == 4 else "training"
        density = f"DENSITY {'ABCD'[s % 4]}"
        mass_side = ("R" if s % 2 == 0 else "L") if s in VINDR_MASS else None
        calc_side = (mass_side or "L") if s in VINDR_CALC else None
        for lat in ("L", "R"):
            if lat == mass_side:
                birads = "5" if s % 4 == 0 else "4"
            elif lat == calc_side:
                birads = "3"
            else:
                birads = "1" if s % 3 else "2"
            expected["birads"][study, lat] = birads
            expected["mass"][study, lat] = "1" if lat == mass_side else "0"
            expected["calcification"][study, lat] = "1" if lat == calc_side else "0"
            for view in ("CC", "MLO"):
                image_id = f"img-{s:02d}-{lat}-{view}"
                head = (f"{study},{series},{image_id},{lat},{view},{ROWS},{COLS},"
                        f"BI-RADS {birads},{density}")
                breast.append(f"{head},{split}")
                cats, boxes = [], []
                if lat == mass_side and view == "CC":
                    cats.append("Mass")
                if lat == calc_side and view == ("CC" if lat == mass_side else "MLO"):
                    cats.append("Suspicious Calcification")
                lesion = bool(cats) and image_id != VINDR_MISSING
                if cats:
                    xmin, ymin, xmax, ymax = lesion_box(lat, seed)
                    boxes = [f"{xmin + 0.4},{ymin + 0.6},{xmax + 0.2},{ymax}"]
                    expected["boxes"] += len(cats)
                    listed = "[" + ", ".join(f"'{c}'" for c in cats) + "]"
                    finding.append(f'{head},"{listed}",BI-RADS {birads},{boxes[0]},{split}')
                else:
                    finding.append(f"{head},['No Finding'],,,,,,{split}")
                if image_id != VINDR_MISSING:
                    mammogram(root / "images" / study / f"{image_id}.dicom", lat, view,
                              lesion=lesion, seed=seed, PatientID=study)
                seed += 1
    (root / "breast-level_annotations.csv").write_text("\n".join(breast) + "\n")
    (root / "finding_annotations.csv").write_text("\n".join(finding) + "\n")
    return expected


def test_vindr_end_to_end_on_the_mass_task(tmp_path, monkeypatch, capsys):
    root = tmp_path / "vindr-mammo"
    expected = write_vindr(root)
    manifest, summary, store, results = run_pipeline(tmp_path, monkeypatch, capsys, "vindr",
                                                     root, task="mass")
    rows = read_csv(manifest)
    n_images, n_bags = 4 * VINDR_STUDIES - 1, 2 * VINDR_STUDIES
    assert list(rows[0]) == ["path", "patient_id", "exam_id", "laterality", "view", "split",
                             "birads", "mass", "calcification", "density", "dataset"]
    assert len(rows) == n_images and {r["dataset"] for r in rows} == {"vindr"}
    assert {r["split"] for r in rows} == {""}  # seeded: drawn at load time
    assert all((manifest.parent / r["path"]).resolve().is_file() for r in rows)
    bags = bags_of(rows)
    assert len(bags) == n_bags
    for (patient, exam, lat), members in bags.items():
        assert patient == exam  # VinDr names no patient: one study, one patient
        missing = VINDR_MISSING.startswith(f"img-{patient[:2]}-{lat}-")
        assert [m["view"] for m in members] == (["CC"] if missing else ["CC", "MLO"])
        for task in ("birads", "mass", "calcification"):
            assert {m[task] for m in members} == {expected[task][patient, lat]}, (patient, lat)
    excluded = read_csv(manifest.with_name("vindr.excluded.csv"))
    assert [(Path(e["path"]).name, e["reason"]) for e in excluded] == [
        (f"{VINDR_MISSING}.dicom", "file missing")]
    lesions = read_csv(manifest.with_name("vindr.lesions.csv"))
    assert len(lesions) == expected["boxes"]
    assert Counter(les["kind"] for les in lesions) == {"Mass": 10,
                                                       "Suspicious Calcification": 6}

    n_mass = len(VINDR_MASS)
    n_calc = len(VINDR_CALC)
    assert (f"{n_images} images, {n_bags} bags (breasts), {VINDR_STUDIES} patients (vindr)"
            in summary)
    assert f"task mass: bags per raw label {{0: {n_bags - n_mass}, 1: {n_mass}}}" in summary
    assert (f"task calcification: bags per raw label {{0: {n_bags - n_calc}, 1: {n_calc}}}"
            in summary)
    birads = Counter(expected["birads"].values())
    assert ("task birads: bags per raw label {"
            + ", ".join(f"{k}: {v}" for k, v in sorted(birads.items())) + "}") in summary
    assert "excluded 1 images (file missing: 1)" in summary

    check_run(tmp_path, manifest, store, results, dataset="vindr", task="mass",
              mapping="binary", n_positive=n_mass, n_negative=n_bags - n_mass,
              tasks=[("birads", "birads"), ("mass", "binary"), ("calcification", "binary")])
    check_unknown_task(store, tmp_path, capsys, "cancer", ["birads", "mass", "calcification"])


# --- RSNA ----------------------------------------------------------------------------------------

RSNA_HEADER = ("site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,"
               "implant,density,machine_id,difficult_negative_case")
RSNA_PATIENTS = 24
RSNA_CANCER = {1, 3, 6, 8, 11, 13, 16, 18, 20, 23}  # patients with cancer in one breast
RSNA_ONE_IMAGE = {3, 13}  # ... where only the MLO image says cancer=1 (the breast is positive)
RSNA_MONOCHROME1 = {5, 16}  # patients whose DICOMs are MONOCHROME1 (stored inverted)


def write_rsna(root: Path) -> dict:
    """The Kaggle layout: train.csv and train_images/<patient_id>/<image_id>.dcm. Each patient:
    L and R breasts, CC and MLO each; patient 2's left breast has an extra AT view, patient 4's
    right breast a second MLO; one listed DICOM is absent. A cancer patient's breast (L for odd
    patients, R for even) says cancer=1 on every image, or on its MLO only. Returns per bag
    (patient, laterality) the expected cancer label, per patient its image count, and the
    missing file's image id."""
    rows = [RSNA_HEADER]
    expected = {"cancer": {}, "images": Counter(), "missing": ""}
    seed = 0
    for p in range(RSNA_PATIENTS):
        patient = str(10006 + 37 * p)
        site, machine = ("1", "21") if p % 2 else ("2", "49")
        age = f"{45 + p}.0" if p % 6 else ""
        density = "ABCD"[p % 4] if p % 3 else ""
        side = ("L" if p % 2 else "R") if p in RSNA_CANCER else None
        for lat in ("L", "R"):
            views = ["CC", "MLO"] + (["AT"] if (p, lat) == (2, "L") else []) + (
                ["MLO"] if (p, lat) == (4, "R") else [])
            expected["cancer"][patient, lat] = "1" if lat == side else "0"
            for view in views:
                image_id = str(1_000_000 + 7919 * seed)
                cancer = "1" if lat == side and (view == "MLO" or p not in RSNA_ONE_IMAGE) else "0"
                rows.append(f"{site},{patient},{image_id},{lat},{view},{age},{cancer},{cancer},"
                            f"{cancer},{'' if cancer == '1' else '1'},0,{density},{machine},False")
                if (p, lat, view) == (7, "R", "CC"):
                    expected["missing"] = image_id
                else:
                    pixels = stored_pixels(lat == "R", lat == side, seed)
                    tags = {}
                    if p in RSNA_MONOCHROME1:
                        pixels = (4095 - pixels).astype(np.uint16)
                        tags["PhotometricInterpretation"] = "MONOCHROME1"
                    write_dicom(root / "train_images" / patient / f"{image_id}.dcm", pixels,
                                ImageLaterality=lat, ViewPosition=view, PatientID=patient,
                                **tags)
                    expected["images"][patient] += 1
                seed += 1
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return expected


@pytest.mark.slow
def test_rsna_end_to_end_on_the_cancer_task(tmp_path, monkeypatch, capsys):
    root = tmp_path / "rsna-breast-cancer-detection"
    expected = write_rsna(root)
    manifest, summary, store, results = run_pipeline(tmp_path, monkeypatch, capsys, "rsna",
                                                     root, task="cancer")
    rows = read_csv(manifest)
    n_images, n_bags = sum(expected["images"].values()), 2 * RSNA_PATIENTS
    assert n_images == 4 * RSNA_PATIENTS + 2 - 1
    assert list(rows[0])[:7] == ["path", "patient_id", "exam_id", "laterality", "view", "split",
                                 "cancer"]
    assert {"age", "implant", "density", "site", "dataset"} <= set(rows[0])
    assert len(rows) == n_images and {r["dataset"] for r in rows} == {"rsna"}
    assert Counter(r["patient_id"] for r in rows) == expected["images"]
    bags = bags_of(rows)
    assert len(bags) == n_bags
    for (patient, exam, lat), members in bags.items():
        assert exam == patient  # RSNA names no exam
        assert {m["cancer"] for m in members} == {expected["cancer"][patient, lat]}
    assert [m["view"] for m in bags["10080", "10080", "L"]] == ["CC", "MLO", "AT"]
    assert [m["view"] for m in bags["10154", "10154", "R"]] == ["CC", "MLO", "MLO"]
    excluded = read_csv(manifest.with_name("rsna.excluded.csv"))
    assert [(Path(e["path"]).stem, e["reason"]) for e in excluded] == [
        (expected["missing"], "file missing")]

    n_cancer = len(RSNA_CANCER)
    assert (f"{n_images} images, {n_bags} bags (breasts), {RSNA_PATIENTS} patients (rsna)"
            in summary)
    # The manifest's one task column is `cancer`: the summary, the store and --task name it so.
    assert f"task cancer: bags per raw label {{0: {n_bags - n_cancer}, 1: {n_cancer}}}" in summary

    check_run(tmp_path, manifest, store, results, dataset="rsna", task="cancer",
              mapping="binary", n_positive=n_cancer, n_negative=n_bags - n_cancer,
              tasks=[("cancer", "binary")])
    check_unknown_task(store, tmp_path, capsys, "mass", ["cancer"])


# --- INbreast ------------------------------------------------------------------------------------

INBREAST_HEADER = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"
INBREAST_PATIENTS = 24
# Patients with one suspicious breast (the other BI-RADS 1), its Bi-Rads per image (CC, MLO) as
# the table writes them: the breast takes the most suspicious.
INBREAST_SUSPICIOUS = {0: ("4c", "4c"), 2: ("5", "5"), 5: ("4b", "2"), 7: ("6", "6"),
                       9: ("4a", "4a"), 12: ("5", "4c"), 14: ("4b", "4b"), 17: ("2", "5"),
                       19: ("4a", "3"), 22: ("6", "5")}
INBREAST_LEFT_OUT = {3: "2", 10: "3", 15: "2", 20: "2"}  # patients with one BI-RADS 2/3 breast
INBREAST_TWO_EXAMS = 11  # a patient imaged twice: two exams, four breasts


def roi_plist(points: list[tuple[float, float]]) -> bytes:
    """An INbreast XML: the Apple plist OsiriX writes, one Mass ROI with these Point_px."""
    roi = {"Area": 0.5, "Center": "(0.0, 0.0)", "IndexInImage": 0, "Name": "Mass",
           "NumberOfPoints": len(points), "Point_mm": ["(0.0, 0.0, 0.0)"],
           "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in points], "Type": 15}
    return plistlib.dumps({"Images": [{"ImageHeight": ROWS, "ImageIndex": 0,
                                       "ImageWidth": COLS, "NumberOfROIs": 1,
                                       "ROIs": [roi]}]})


def write_inbreast(root: Path) -> dict:
    """INbreast's layout: INbreast.csv (semicolons), AllDICOMs/<File Name>_<patient hash>_MG_
    <L|R>_<CC|ML>_ANON.dcm and AllXML/<File Name>.xml (a Mass ROI on each suspicious CC image).
    Returns per bag (hash, exam, laterality) the expected breast-level Bi-Rads."""
    rows = [INBREAST_HEADER]
    expected = {"birads": {}, "xml": 0}
    (root / "AllDICOMs").mkdir(parents=True)
    (root / "AllXML").mkdir()
    seed = 0
    for p in range(INBREAST_PATIENTS):
        patient = f"{(0x6c613a14b80a8591 * (p + 1)) % 16 ** 16:016x}"
        dates = (("200806", "200911") if p == INBREAST_TWO_EXAMS
                 else (f"20{p % 3 + 8:02d}0{p % 9 + 1}",))
        acr = str(p % 4 + 1)
        side = "R" if p % 2 == 0 else "L"
        for e, date in enumerate(dates):
            for lat in ("L", "R"):
                if lat == side and p in INBREAST_SUSPICIOUS and e == len(dates) - 1:
                    values = INBREAST_SUSPICIOUS[p]
                elif lat == side and p in INBREAST_LEFT_OUT:
                    values = (INBREAST_LEFT_OUT[p], "1")
                else:
                    values = ("1", "1")
                order = ("6", "5", "4C", "4B", "4A", "3", "2", "1")
                expected["birads"][patient, f"{patient}_{date}", lat] = min(
                    (v.upper() for v in values), key=order.index)
                for view, code, birads in zip(("CC", "MLO"), ("CC", "ML"), values, strict=True):
                    file_name = str(20586908 + 24 * seed)
                    rows.append(f"removed;removed;{lat};{view};{date};{file_name};{acr};{birads}")
                    suspicious = birads[0] in "456"
                    name = f"{file_name}_{patient}_MG_{lat}_{code}_ANON.dcm"
                    mammogram(root / "AllDICOMs" / name, lat, view, lesion=suspicious, seed=seed)
                    if suspicious and view == "CC":
                        xmin, ymin, xmax, ymax = lesion_box(lat, seed)
                        (root / "AllXML" / f"{file_name}.xml").write_bytes(roi_plist(
                            [(xmin + 0.5, ymin + 2.25), (xmax - 0.25, ymin), (xmax, ymax - 1.5),
                             (xmin, ymax)]))
                        expected["xml"] += 1
                    seed += 1
    (root / "INbreast.csv").write_text("\n".join(rows) + "\n")
    return expected


@pytest.mark.slow
def test_inbreast_end_to_end_on_the_birads_task(tmp_path, monkeypatch, capsys):
    root = tmp_path / "INbreast Release 1.0"
    expected = write_inbreast(root)
    manifest, summary, store, results = run_pipeline(tmp_path, monkeypatch, capsys, "inbreast",
                                                     root, task="birads")
    rows = read_csv(manifest)
    n_bags = 2 * INBREAST_PATIENTS + 2
    n_images = 2 * n_bags
    assert list(rows[0]) == ["path", "patient_id", "exam_id", "laterality", "view", "split",
                             "birads", "density", "view_code", "dataset"]
    assert len(rows) == n_images and {r["dataset"] for r in rows} == {"inbreast"}
    assert {(r["view"], r["view_code"]) for r in rows} == {("CC", "CC"), ("MLO", "ML")}
    bags = bags_of(rows)
    assert len(bags) == n_bags and len({k[0] for k in bags}) == INBREAST_PATIENTS
    assert {k: members[0]["birads"] for k, members in bags.items()} == expected["birads"]
    assert all(len({m["birads"] for m in members}) == 1 for members in bags.values())
    assert read_csv(manifest.with_name("inbreast.excluded.csv")) == []
    lesions = read_csv(manifest.with_name("inbreast.lesions.csv"))
    assert len(lesions) == expected["xml"] and {les["kind"] for les in lesions} == {"Mass"}
    assert all("_MG_" in les["path"] and "_CC_" in les["path"] for les in lesions)

    raw = Counter(expected["birads"].values())
    positive = sum(n for value, n in raw.items() if value not in ("1", "2", "3"))
    assert positive == len(INBREAST_SUSPICIOUS) and raw["2"] + raw["3"] == len(INBREAST_LEFT_OUT)
    assert (f"{n_images} images, {n_bags} bags (breasts), {INBREAST_PATIENTS} patients "
            "(inbreast)") in summary
    assert ("task birads: bags per raw label {"
            + ", ".join(f"{k}: {v}" for k, v in sorted(raw.items())) + "}") in summary

    check_run(tmp_path, manifest, store, results, dataset="inbreast", task="birads",
              mapping="birads", n_positive=positive, n_negative=raw["1"],
              tasks=[("birads", "birads")])
    assert results["data"]["excluded_by_mapping"] == {"2": 3, "3": 1}  # BI-RADS 2, 3: no task
    check_unknown_task(store, tmp_path, capsys, "mass", ["birads"])


# --- EMBED Open Data -----------------------------------------------------------------------------

# The published columns (the README's data descriptor; as in test_embed.py).
EMBED_CLINICAL = ["empi_anon", "acc_anon", "study_date_anon", "desc", "side", "asses", "numfind",
                  "path_severity", "tissueden", "age_at_study", "GENDER_DESC"]
EMBED_METADATA = ["empi_anon", "acc_anon", "study_date_anon", "anon_dicom_path",
                  "FinalImageType", "ImageLateralityFinal", "ViewPosition", "spot_mag",
                  "ROI_coords", "num_roi", "Manufacturer", "Rows", "Columns"]
EMBED_MOUNT = "/mnt/NAS2/mammo/anon_dicom"  # where the distributor's paths start
EMBED_PATIENTS = 30
EMBED_CANCER = {0, 2, 4, 7, 9, 11, 14, 16, 19, 21, 24, 27}  # one breast: path_severity 0 or 1
EMBED_BENIGN = {1, 3, 6, 8, 10, 13, 15, 18, 20, 23, 26, 29}  # one breast: path_severity 4 or 5
EMBED_HIGH_RISK = 5  # one breast biopsied high-risk (severity 2): no pathology label
EMBED_CVIEW = {2, 13}  # patients with C-view (synthetic 2D) images beside their 2D ones
EMBED_SPOT = 8  # a patient with a spot-compression view of the finding's breast
EMBED_TWO_EXAMS = 9  # a cancer patient with an earlier normal screening exam


def write_embed(root: Path) -> dict:
    """The Open Data bucket's layout: tables/EMBED_OpenData_{clinical,metadata}.csv (the
    published columns, as in test_embed.py) and the DICOMs under images/, where the adapter's
    re-rooting puts each `anon_dicom_path` (/mnt/.../anon_dicom/<rest> -> images/<rest>).
    Every exam has an exam-wide BI-RADS 1 finding (side empty); a cancer or benign patient also
    a finding on one breast (L for even patients, R for odd), asses S/M/K or S/B, its
    path_severity; the cancer breast's CC image has an ROI. Returns what to expect."""
    clinical, metadata = [], []
    expected = {"birads": {}, "pathology": {}, "images": 0, "excluded": Counter(), "rois": 0}
    seed = 0
    for p in range(EMBED_PATIENTS):
        empi = str(10_000_000 + 4_111 * p)
        side = "L" if p % 2 == 0 else "R"
        exams = [str(6_000_000 + 97 * p)] + ([str(5_000_000 + 97 * p)] if p == EMBED_TWO_EXAMS
                                             else [])
        for e, acc in enumerate(exams):
            latest = e == 0
            common = {"empi_anon": empi, "acc_anon": acc, "study_date_anon": f"2019-0{p % 9 + 1}-1"
                      f"{e}", "tissueden": f"{p % 4 + 1}.0", "age_at_study": f"{50 + p}.0",
                      "GENDER_DESC": "Female", "numfind": "1"}
            if latest and (p in EMBED_CANCER or p in EMBED_BENIGN or p == EMBED_HIGH_RISK):
                desc = f"MG Diagnostic {'Left' if side == 'L' else 'Right'} w/CAD"
            else:
                desc = "MG Screening Bilateral w/CAD"
            clinical.append(common | {"desc": desc, "side": "", "asses": "N",
                                      "path_severity": ""})
            finding = None
            if latest and p in EMBED_CANCER:
                finding = ("SMK"[p % 3], str(p % 2))
            elif latest and p in EMBED_BENIGN:
                finding = ("SB"[p % 2], str(4 + p % 2))
            elif latest and p == EMBED_HIGH_RISK:
                finding = ("S", "2")
            if finding:
                clinical.append(common | {"desc": desc, "side": side, "asses": finding[0],
                                          "path_severity": f"{finding[1]}.0"})
            study = f"1.2.840.113654.2.70.1.{empi}{e}"
            for lat in ("L", "R"):
                letter = finding[0] if finding and lat == side else "N"
                expected["birads"][empi, acc, lat] = {"S": "4", "M": "5", "K": "6", "B": "2",
                                                      "N": "1"}[letter]
                expected["pathology"][empi, acc, lat] = (
                    "1" if lat == side and finding and int(finding[1]) <= 1 else
                    "0" if lat == side and finding and int(finding[1]) >= 4 else "")
                lesion = lat == side and p in EMBED_CANCER and latest
                views = [("CC", "2D", ""), ("MLO", "2D", "")]
                if p in EMBED_CVIEW:
                    views += [("CC", "cview", ""), ("MLO", "cview", "")]
                if p == EMBED_SPOT and lat == side:
                    views.append(("CC", "2D", "1.0"))
                for view, kind, spot in views:
                    series = f"{study}.{seed % 7 + 1}"
                    sop = f"{series}.{seed}"
                    rest = Path("cohort_1") / empi / study / series / f"{sop}.dcm"
                    roi = "()"
                    if lesion and view == "CC" and kind == "2D":
                        xmin, ymin, xmax, ymax = lesion_box(lat, seed)
                        roi = f"(({ymin}, {xmin}, {ymax}, {xmax}),)"
                        expected["rois"] += 1
                    metadata.append({"empi_anon": empi, "acc_anon": acc,
                                     "study_date_anon": common["study_date_anon"],
                                     "anon_dicom_path": f"{EMBED_MOUNT}/{rest.as_posix()}",
                                     "FinalImageType": kind, "ImageLateralityFinal": lat,
                                     "ViewPosition": view, "spot_mag": spot, "ROI_coords": roi,
                                     "num_roi": "1" if roi != "()" else "0",
                                     "Manufacturer": "HOLOGIC, Inc.", "Rows": str(ROWS),
                                     "Columns": str(COLS)})
                    mammogram(root / "images" / rest, lat, view, lesion=lesion, seed=seed,
                              PatientID=empi, Manufacturer="HOLOGIC, Inc.")
                    if kind == "cview":
                        expected["excluded"]["C-view (synthetic 2D)"] += 1
                    elif spot:
                        expected["excluded"]["spot compression or magnification view"] += 1
                    else:
                        expected["images"] += 1
                    seed += 1
    for name, columns, rows in (("clinical", EMBED_CLINICAL, clinical),
                                ("metadata", EMBED_METADATA, metadata)):
        path = root / "tables" / f"EMBED_OpenData_{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    return expected


@pytest.mark.slow
def test_embed_end_to_end_on_the_pathology_task(tmp_path, monkeypatch, capsys):
    root = tmp_path / "embed-dataset-open"
    expected = write_embed(root)
    manifest, summary, store, results = run_pipeline(tmp_path, monkeypatch, capsys, "embed",
                                                     root, task="pathology")
    rows = read_csv(manifest)
    n_bags = 2 * EMBED_PATIENTS + 2
    assert list(rows[0]) == ["path", "patient_id", "exam_id", "laterality", "view", "split",
                             "birads", "pathology", "density", "age", "manufacturer",
                             "exam_type", "image_type", "dataset"]
    assert len(rows) == expected["images"] == 2 * n_bags
    assert {r["dataset"] for r in rows} == {"embed"} and {r["image_type"] for r in rows} == {"2D"}
    assert all(Path(manifest.parent / r["path"]).resolve().is_relative_to(
        (root / "images" / "cohort_1").resolve()) for r in rows)
    bags = bags_of(rows)
    assert len(bags) == n_bags
    for key, members in bags.items():
        assert [m["view"] for m in members] == ["CC", "MLO"]
        for task in ("birads", "pathology"):
            assert {m[task] for m in members} == {expected[task][key]}, (key, task)
    excluded = read_csv(manifest.with_name("embed.excluded.csv"))
    assert Counter(e["reason"] for e in excluded) == expected["excluded"]
    lesions = read_csv(manifest.with_name("embed.lesions.csv"))
    assert len(lesions) == expected["rois"] == len(EMBED_CANCER)
    assert {les["kind"] for les in lesions} == {"roi"}

    pathology = Counter(expected["pathology"].values())
    assert pathology == {"1": len(EMBED_CANCER), "0": len(EMBED_BENIGN),
                         "": n_bags - len(EMBED_CANCER) - len(EMBED_BENIGN)}
    assert (f"{len(rows)} images, {n_bags} bags (breasts), {EMBED_PATIENTS} patients (embed)"
            in summary)
    assert (f"task pathology: bags per raw label {{left out: {pathology['']}, "
            f"0: {pathology['0']}, 1: {pathology['1']}}}") in summary

    check_run(tmp_path, manifest, store, results, dataset="embed", task="pathology",
              mapping="binary", n_positive=len(EMBED_CANCER), n_negative=len(EMBED_BENIGN),
              tasks=[("birads", "birads"), ("pathology", "binary")])
    assert results["data"]["excluded_by_mapping"] == {"": pathology[""]}  # no pathology label
    check_unknown_task(store, tmp_path, capsys, "mass", ["birads", "pathology"])


# --- CBIS-DDSM -----------------------------------------------------------------------------------

# The published columns (the collection's case-description CSVs and the NBIA Data Retriever's
# metadata.csv; as in test_cbis.py).
CBIS_MASS = ["patient_id", "breast_density", "left or right breast", "image view",
             "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
             "pathology", "subtlety", "image file path", "cropped image file path",
             "ROI mask file path"]
CBIS_CALC = ["patient_id", "breast density", "left or right breast", "image view",
             "abnormality id", "abnormality type", "calc type", "calc distribution",
             "assessment", "pathology", "subtlety", "image file path", "cropped image file path",
             "ROI mask file path"]
CBIS_TCIA = ["Series UID", "Collection", "3rd Party Analysis", "Data Description URI",
             "Subject ID", "Study UID", "Study Description", "Study Date", "Series Description",
             "Manufacturer", "Modality", "SOP Class Name", "SOP Class UID", "Number of Images",
             "File Size", "File Location", "Download Timestamp"]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CBIS_PATIENTS = 24
CBIS_MALIGNANT = {1, 3, 5, 8, 10, 13, 16, 18, 20, 22}  # their first breast is malignant
CBIS_SECOND_BREAST = {0, 5, 10, 15, 20}  # ... also a benign calcification in the other breast
CBIS_BOTH_CSVS = 3  # a breast with a benign mass and a malignant calcification on its images


class MiniCbis:
    """A TCIA download of CBIS-DDSM: the four case CSVs, metadata.csv, and the series folders
    `CBIS-DDSM/<Subject ID>/<date>-DDSM-NA-<n>/1.000000-<description>-<n>/1-k.dcm` that
    metadata.csv's File Location names; the DICOMs are Secondary Capture files without
    laterality or view tags, as the collection's are."""

    CSVS = {("mass", "train"): "mass_case_description_train_set.csv",
            ("mass", "test"): "mass_case_description_test_set.csv",
            ("calc", "train"): "calc_case_description_train_set.csv",
            ("calc", "test"): "calc_case_description_test_set.csv"}
    SUBJECT = {("mass", "train"): "Mass-Training", ("mass", "test"): "Mass-Test",
               ("calc", "train"): "Calc-Training", ("calc", "test"): "Calc-Test"}

    def __init__(self, root: Path):
        self.root = root
        self.rows = {key: [] for key in self.CSVS}
        self.series: list[dict] = []
        self.uid = 1000

    def add_series(self, subject: str, description: str, files: dict[str, np.ndarray]):
        """A series folder of `files` (name -> uint16 pixels); (study uid, series uid)."""
        self.uid += 2
        study = f"1.3.6.1.4.1.9590.100.1.2.{self.uid}"
        series = f"1.3.6.1.4.1.9590.100.1.2.{self.uid + 1}"
        folder = (self.root / "CBIS-DDSM" / subject / f"07-20-2016-DDSM-NA-{self.uid % 99991}"
                  / f"1.000000-{description}-{self.uid % 99991:05d}")
        for name, pixels in files.items():
            write_dicom(folder / name, pixels, bits_stored=16, SOPClassUID=SECONDARY_CAPTURE,
                        PresentationIntentType=None, PatientID=subject)
        self.series.append({
            "Series UID": series, "Collection": "CBIS-DDSM", "3rd Party Analysis": "NO",
            "Data Description URI": "https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY",
            "Subject ID": subject, "Study UID": study, "Study Date": "07-20-2016",
            "Series Description": description, "Modality": "MG",
            "SOP Class Name": "Secondary Capture Image Storage", "SOP Class UID": SECONDARY_CAPTURE,
            "Number of Images": str(len(files)), "File Size": "1 MB",
            # as the Data Retriever writes it on Windows
            "File Location": ".\\" + str(folder.relative_to(self.root)).replace("/", "\\"),
            "Download Timestamp": "2024-01-01T00:00:00.000"})
        return study, series

    def add(self, patient: str, side: str, view: str, pathology: str, *, kind: str, split: str,
            full: tuple[str, str], box: tuple[int, int, int, int], abn: int = 1,
            density: str = "2") -> None:
        """One abnormality row of the image `full` (its study, series uid), with its crop and
        ROI mask (the mask full size, 1 inside `box` = xmin, ymin, xmax, ymax): a mass's
        in one series, a calcification's in two."""
        subject = f"{self.SUBJECT[kind, split]}_{patient}_{side}_{view}"
        xmin, ymin, xmax, ymax = box
        mask = np.zeros((ROWS, COLS), np.uint16)
        mask[ymin:ymax, xmin:xmax] = 255
        crop = np.full((ymax - ymin, xmax - xmin), 2000, np.uint16)
        if kind == "mass":
            crop_uid = mask_uid = self.add_series(f"{subject}_{abn}", "ROI mask images",
                                                  {"1-1.dcm": crop, "1-2.dcm": mask})
        else:
            crop_uid = self.add_series(f"{subject}_{abn}", "cropped images", {"1-1.dcm": crop})
            mask_uid = self.add_series(f"{subject}_{abn}", "ROI mask images", {"1-1.dcm": mask})
        row = {"patient_id": patient, "left or right breast": side, "image view": view,
               "abnormality id": str(abn), "assessment": "4", "pathology": pathology,
               "subtlety": "3",
               "image file path": f"{subject}/{full[0]}/{full[1]}/000000.dcm",
               "cropped image file path": f"{subject}_{abn}/{crop_uid[0]}/{crop_uid[1]}/"
                                          "000000.dcm",
               # the published CSVs end some paths with a newline inside the quotes
               "ROI mask file path": f"{subject}_{abn}/{mask_uid[0]}/{mask_uid[1]}/000001.dcm\n"}
        if kind == "mass":
            row |= {"breast_density": density, "abnormality type": "mass",
                    "mass shape": "OVAL", "mass margins": "CIRCUMSCRIBED"}
        else:
            row |= {"breast density": density, "abnormality type": "calcification",
                    "calc type": "PLEOMORPHIC", "calc distribution": "CLUSTERED"}
        self.rows[kind, split].append(row)

    def write(self) -> None:
        for key, name in self.CSVS.items():
            columns = CBIS_MASS if key[0] == "mass" else CBIS_CALC
            with open(self.root / name, "w", newline="") as f:
                writer = csv.DictWriter(f, columns, restval="")
                writer.writeheader()
                writer.writerows(self.rows[key])
        with open(self.root / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, CBIS_TCIA, restval="")
            writer.writeheader()
            writer.writerows(self.series)


def write_cbis(root: Path) -> dict:
    """24 patients: a first breast (L for even patients, R for odd) with a mass (even) or a
    calcification (odd) on its CC and MLO images, malignant or benign; some patients a benign
    calcification in the other breast; one breast's images listed in the mass CSV (benign) and
    again, under another TCIA subject, in the calc CSV (malignant). Returns what to expect."""
    cbis = MiniCbis(root)
    expected = {"malignant": {}, "lesions": Counter(), "images": 0}
    seed = 0
    for p in range(CBIS_PATIENTS):
        patient = f"P_{1 + 3 * p:05d}"
        split = "test" if p % 5 == 4 else "train"
        first = "LEFT" if p % 2 == 0 else "RIGHT"
        breasts = [(first, "mass" if p % 2 == 0 else "calc",
                    "MALIGNANT" if p in CBIS_MALIGNANT else
                    ("BENIGN" if p % 3 else "BENIGN_WITHOUT_CALLBACK"))]
        if p in CBIS_SECOND_BREAST:
            breasts.append(("RIGHT" if first == "LEFT" else "LEFT", "calc", "BENIGN"))
        for side, kind, pathology in breasts:
            lat = side[0]
            malignant = pathology == "MALIGNANT"
            expected["malignant"][patient, patient, lat] = "1" if malignant else "0"
            for view in ("CC", "MLO"):
                subject = f"{MiniCbis.SUBJECT[kind, split]}_{patient}_{side}_{view}"
                pixels = stored_pixels(lat == "R", malignant, seed) * 16  # 16 bit
                full = cbis.add_series(subject, "full mammogram images", {"1-1.dcm": pixels})
                box = lesion_box(lat, seed)
                if p == CBIS_BOTH_CSVS and side == first:
                    # the same image under the Mass subject first (a benign mass), then its
                    # calcification in the calc CSV: one image, malignant
                    other = f"{MiniCbis.SUBJECT['mass', split]}_{patient}_{side}_{view}"
                    mass_full = cbis.add_series(other, "full mammogram images",
                                                {"1-1.dcm": pixels})
                    cbis.add(patient, side, view, "BENIGN", kind="mass", split=split,
                             full=mass_full, box=box, density="3")
                    expected["lesions"]["mass"] += 1
                cbis.add(patient, side, view, pathology, kind=kind, split=split, full=full,
                         box=box, density="3")
                expected["lesions"]["mass" if kind == "mass" else "calcification"] += 1
                expected["images"] += 1
                seed += 1
    cbis.write()
    return expected


@pytest.mark.slow
def test_cbis_end_to_end_on_the_malignant_task(tmp_path, monkeypatch, capsys):
    root = tmp_path / "manifest-ZkhPvrLo5216730872708713142"  # a TCIA download folder
    expected = write_cbis(root)
    manifest, summary, store, results = run_pipeline(tmp_path, monkeypatch, capsys, "cbis",
                                                     root, task="malignant")
    rows = read_csv(manifest)
    n_bags = CBIS_PATIENTS + len(CBIS_SECOND_BREAST)
    assert list(rows[0]) == ["path", "patient_id", "exam_id", "laterality", "view", "split",
                             "malignant", "density", "dataset"]
    assert len(rows) == expected["images"] == 2 * n_bags
    assert {r["dataset"] for r in rows} == {"cbis"} and {r["density"] for r in rows} == {"C"}
    assert all(Path(r["path"]).name == "1-1.dcm" and "full mammogram images" in r["path"]
               for r in rows)
    bags = bags_of(rows)
    assert len(bags) == n_bags
    assert {k: members[0]["malignant"] for k, members in bags.items()} == expected["malignant"]
    assert all([m["view"] for m in members] == ["CC", "MLO"] for members in bags.values())
    both = bags[f"P_{1 + 3 * CBIS_BOTH_CSVS:05d}", f"P_{1 + 3 * CBIS_BOTH_CSVS:05d}", "R"]
    assert all("Mass-Training_" in m["path"] for m in both)  # the mass CSV's file is kept
    excluded = read_csv(manifest.with_name("cbis.excluded.csv"))
    assert [(e["view"], e["reason"]) for e in excluded] == [
        ("CC", "same view listed in another CSV"), ("MLO", "same view listed in another CSV")]
    assert all("Calc-Training_" in e["path"] for e in excluded)
    lesions = read_csv(manifest.with_name("cbis.lesions.csv"))
    assert Counter(les["kind"] for les in lesions) == expected["lesions"]
    for les in lesions:  # the mask's nonzero box, half-open: lesion_box's corners
        assert (int(les["y1"]) - int(les["y0"]), int(les["x1"]) - int(les["x0"])) == (16, 16)

    n_malignant = len(CBIS_MALIGNANT)
    assert (f"{len(rows)} images, {n_bags} bags (breasts), {CBIS_PATIENTS} patients (cbis)"
            in summary)
    assert (f"task malignant: bags per raw label {{0: {n_bags - n_malignant}, "
            f"1: {n_malignant}}}") in summary

    check_run(tmp_path, manifest, store, results, dataset="cbis", task="malignant",
              mapping="binary", n_positive=n_malignant, n_negative=n_bags - n_malignant,
              tasks=[("malignant", "binary")])
    check_unknown_task(store, tmp_path, capsys, "birads", ["malignant"])
