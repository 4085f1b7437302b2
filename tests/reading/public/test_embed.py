"""milpf_jax.reading.public.embed: EMBED Open Data's clinical and metadata tables as published."""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from milpf_jax.reading.public import embed
from milpf_jax.reading.public.common import DatasetOptions

CLINICAL = ["empi_anon", "acc_anon", "study_date_anon", "desc", "side", "asses", "numfind",
            "path_severity", "tissueden", "age_at_study", "GENDER_DESC"]
METADATA = ["empi_anon", "acc_anon", "study_date_anon", "anon_dicom_path", "FinalImageType",
            "ImageLateralityFinal", "ViewPosition", "spot_mag", "ROI_coords", "num_roi",
            "Manufacturer", "Rows", "Columns"]
MOUNT = "/mnt/NAS2/mammo/anon_dicom"


def _dicom_path(empi, acc, name):
    return f"{MOUNT}/cohort_1/{empi}/1.2.{acc}/1.3.{acc}/{name}.dcm"


def finding(empi="1", acc="10", side="", asses="N", severity="", **extra):
    return {"empi_anon": empi, "acc_anon": acc, "desc": "MG Screening Bilateral w/CAD",
            "side": side, "asses": asses, "path_severity": severity, "tissueden": "2.0",
            "age_at_study": "61.0", "GENDER_DESC": "Female"} | extra


def image(empi="1", acc="10", lat="L", view="CC", name=None, kind="2D", spot="", roi="()",
          **extra):
    name = name or f"{lat}{view}"
    return {"empi_anon": empi, "acc_anon": acc, "anon_dicom_path": _dicom_path(empi, acc, name),
            "FinalImageType": kind, "ImageLateralityFinal": lat, "ViewPosition": view,
            "spot_mag": spot, "ROI_coords": roi, "Manufacturer": "HOLOGIC, Inc."} | extra


def _write_csv(path: Path, columns, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def make_embed(root: Path, findings, images, *, missing=(), columns=(CLINICAL, METADATA)) -> Path:
    """The Open Data layout under root: tables/ and images/ (empty placeholder DICOMs, except
    those whose anon_dicom_path is in `missing`)."""
    _write_csv(root / "tables" / "EMBED_OpenData_clinical.csv", columns[0], findings)
    _write_csv(root / "tables" / "EMBED_OpenData_metadata.csv", columns[1], images)
    for im in images:
        path = embed.reroot(im["anon_dicom_path"], root)
        if path and im["anon_dicom_path"] not in missing:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
    return root


def _read(root, **options):
    return embed.read_tables(root, DatasetOptions(**options))


def _by_view(tables):
    return {(im["patient_id"], im["exam_id"], im["laterality"], im["view"]): im
            for im in tables.images}


def _reasons(tables):
    return {(r["laterality"], r["view"]): r["reason"] for r in tables.excluded}


def test_module_constants():
    assert embed.NAME == "embed"
    assert embed.TASKS == ("birads", "pathology")
    assert embed.HAS_OFFICIAL_SPLIT is False
    assert "github.com/Emory-HITI/EMBED_Open_Data" in embed.DOC


def test_reroot_keeps_the_path_after_anon_dicom_under_images(tmp_path):
    got = embed.reroot(f"{MOUNT}/cohort_1/123/1.2.3/4.5.6/7.8.9.dcm", tmp_path)
    assert got == str(tmp_path / "images" / "cohort_1" / "123" / "1.2.3" / "4.5.6" / "7.8.9.dcm")
    assert embed.reroot("/somewhere/else/7.8.9.dcm", tmp_path) == ""
    assert embed.reroot(f"{MOUNT}/", tmp_path) == ""
    # Only the first anon_dicom component anchors the path.
    assert embed.reroot("/x/anon_dicom/a/anon_dicom/b.dcm", "/r") == "/r/images/a/anon_dicom/b.dcm"


def test_images_and_columns_of_one_exam(tmp_path):
    root = make_embed(tmp_path, [finding(side="L", asses="S", severity="0.0")],
                      [image(lat="L", view="CC"), image(lat="L", view="MLO")])
    tables = _read(root)
    assert tables.dataset == "embed" and tables.tasks == ("birads", "pathology")
    assert tables.has_official_split is False
    assert tables.excluded == []
    cc = _by_view(tables)["1", "10", "L", "CC"]
    assert cc == {
        "path": str(tmp_path / "images/cohort_1/1/1.2.10/1.3.10/LCC.dcm"),
        "patient_id": "1", "exam_id": "10", "laterality": "L", "view": "CC",
        "official_split": "", "birads": "4", "pathology": "1", "density": "B", "age": "61",
        "exam_type": "screening", "manufacturer": "HOLOGIC, Inc.", "image_type": "2D",
    }
    assert os.path.isabs(cc["path"])
    assert _by_view(tables)["1", "10", "L", "MLO"]["birads"] == "4"


def test_bilateral_and_exam_wide_findings_apply_to_both_breasts(tmp_path):
    findings = [finding(acc="10", side="B", asses="P"),  # both breasts of exam 10
                finding(acc="11", side="", asses="A"),  # exam 11 as a whole
                finding(acc="12", side="R", asses="M")]  # exam 12: the right breast only
    images = [image(acc=a, lat=lat) for a in ("10", "11", "12") for lat in ("L", "R")]
    tables = _read(make_embed(tmp_path, findings, images))
    got = {(im["exam_id"], im["laterality"]): im["birads"] for im in tables.images}
    assert got == {("10", "L"): "3", ("10", "R"): "3", ("11", "L"): "0", ("11", "R"): "0",
                   ("12", "R"): "5"}
    assert [(r["exam_id"], r["laterality"], r["reason"]) for r in tables.excluded] == [
        ("12", "L", "no applicable finding")]


@pytest.mark.parametrize("letters, expected", [
    (("A", "P"), "0"),  # a recall outranks probably benign
    (("S", "A"), "4"),  # a biopsy outranks a recall
    (("N", "B"), "2"),
    (("K", "M", "S"), "6"),
    (("X", "N"), "1"),  # no assessment is ignored
])
def test_birads_takes_the_most_suspicious_assessment(tmp_path, letters, expected):
    findings = [finding(side="L", asses=a) for a in letters]
    tables = _read(make_embed(tmp_path, findings, [image(lat="L")]))
    assert [im["birads"] for im in tables.images] == [expected]


@pytest.mark.parametrize("severities, expected", [
    (("0",), "1"),  # invasive cancer
    (("1.0", "4"), "1"),  # non-invasive cancer beside a benign finding
    (("4", "5.0"), "0"),  # benign and normal tissue only
    (("4", ""), "0"),  # a finding without pathology does not change a benign breast
    (("4", "2"), ""),  # high-risk lesion: neither class
    (("3",), ""),  # borderline
    (("6",), ""),  # non-breast cancer
    (("",), ""),  # not biopsied
])
def test_pathology_positive_negative_and_left_out(tmp_path, severities, expected):
    findings = [finding(side="R", asses="S", severity=s) for s in severities]
    tables = _read(make_embed(tmp_path, findings, [image(lat="R")]))
    assert [(im["birads"], im["pathology"]) for im in tables.images] == [("4", expected)]


def test_pathology_alone_keeps_an_image_without_assessment(tmp_path):
    findings = [finding(side="L", asses="X", severity="4"), finding(side="R", asses="X")]
    tables = _read(make_embed(tmp_path, findings, [image(lat="L"), image(lat="R")]))
    assert [(im["laterality"], im["birads"], im["pathology"]) for im in tables.images] == [
        ("L", "", "0")]
    assert _reasons(tables) == {("R", "CC"): "no applicable finding"}


def test_pathology_findings_of_the_other_breast_do_not_apply(tmp_path):
    findings = [finding(side="L", asses="M", severity="0"), finding(side="R", asses="B")]
    tables = _read(make_embed(tmp_path, findings, [image(lat="L"), image(lat="R")]))
    got = {im["laterality"]: (im["birads"], im["pathology"]) for im in tables.images}
    assert got == {"L": ("5", "1"), "R": ("2", "")}


@pytest.mark.parametrize("spelling", ["cview", "C-view", "C-VIEW"])
def test_cview_left_out_by_default_and_kept_when_asked(tmp_path, spelling):
    root = make_embed(tmp_path, [finding()], [image(view="CC"),
                                              image(view="MLO", kind=spelling)])
    default = _read(root)
    assert [im["view"] for im in default.images] == ["CC"]
    assert _reasons(default) == {("L", "MLO"): "C-view (synthetic 2D)"}
    both = _read(root, include_cview=True)
    assert {im["view"]: im["image_type"] for im in both.images} == {"CC": "2D", "MLO": "cview"}
    assert both.excluded == []


def test_other_image_types_are_left_out(tmp_path):
    root = make_embed(tmp_path, [finding()], [image(view="CC"), image(view="MLO", kind="ROI_SSC")])
    assert _reasons(_read(root, include_cview=True)) == {("L", "MLO"): "not a 2D or C-view image"}


@pytest.mark.parametrize("value, spot", [("1", True), ("1.0", True), ("True", True), ("", False),
                                         ("0", False), ("nan", False)])
def test_spot_compression_and_magnification_views_are_left_out(tmp_path, value, spot):
    root = make_embed(tmp_path, [finding()], [image(view="CC"), image(view="ML", spot=value)])
    tables = _read(root)
    assert sorted(im["view"] for im in tables.images) == (["CC"] if spot else ["CC", "ML"])
    expected = {("L", "ML"): "spot compression or magnification view"} if spot else {}
    assert _reasons(tables) == expected


def test_missing_file_and_other_exclusions_are_listed_with_their_reason(tmp_path):
    images = [image(view="CC"), image(view="MLO"), image(lat="", view="XCCL"),
              image(lat="R", view=""), image(acc="99", view="CC"),
              image(view="CC", name="LCC") | {"anon_dicom_path": "/mnt/other/LCC.dcm"}]
    dup = image(view="CC")  # the same path listed twice: the first row wins
    root = make_embed(tmp_path, [finding()], [*images, dup],
                      missing={image(view="MLO")["anon_dicom_path"]})
    tables = _read(root)
    assert [im["view"] for im in tables.images] == ["CC"]
    got = [(r["exam_id"], r["laterality"], r["view"], r["reason"], Path(r["path"]).name)
           for r in tables.excluded]
    assert got == [
        ("10", "L", "MLO", "file missing", "LMLO.dcm"),
        ("10", "", "XCCL", "no laterality", "XCCL.dcm"),
        ("10", "R", "", "no view", "R.dcm"),
        ("99", "L", "CC", "exam not in the clinical table", "LCC.dcm"),
        ("10", "L", "CC", "image path outside anon_dicom", "LCC.dcm"),
        ("10", "L", "CC", "duplicated image path", "LCC.dcm"),
    ]
    assert tables.excluded[0]["path"] == str(tmp_path / "images/cohort_1/1/1.2.10/1.3.10/LMLO.dcm")
    assert tables.excluded[4]["path"] == "/mnt/other/LCC.dcm"


def test_exam_columns(tmp_path):
    findings = [finding(acc="10", desc="MG Diagnostic Left", tissueden="4", age_at_study=""),
                finding(acc="11", desc="US Breast", tissueden="5", age_at_study="70.5"),
                finding(acc="12", desc="", tissueden="", age_at_study="44")]
    images = [image(acc=a) for a in ("10", "11", "12")]
    tables = _read(make_embed(tmp_path, findings, images))
    got = {im["exam_id"]: (im["exam_type"], im["density"], im["age"]) for im in tables.images}
    assert got == {"10": ("diagnostic", "D", ""), "11": ("", "", "70.5"), "12": ("", "", "44")}


def test_roi_boxes_become_half_open_lesions(tmp_path):
    images = [image(view="CC", roi="((100, 200, 149, 259),)"),
              image(view="MLO", roi="((10, 20, 30, 40), (50, 60, 70, 80))"),
              image(lat="R", roi="()"), image(lat="R", view="MLO", roi=""),
              image(lat="R", view="ML", roi="((1, 2, 3),)"),
              image(lat="R", view="XCCL", roi="not a literal")]
    tables = _read(make_embed(tmp_path, [finding()], images))
    boxes = [(Path(les["path"]).name, les["y0"], les["x0"], les["y1"], les["x1"], les["kind"])
             for les in tables.lesions]
    assert boxes == [("LCC.dcm", 100, 200, 150, 260, "roi"), ("LMLO.dcm", 10, 20, 31, 41, "roi"),
                     ("LMLO.dcm", 50, 60, 71, 81, "roi")]
    assert tables.notes["ROI_coords entries that are not four numbers (no box)"] == 1
    assert tables.notes["ROI_coords that do not parse (no box)"] == 1
    assert len(tables.images) == 6


def test_parse_roi_coords_accepts_lists_and_a_bare_box():
    notes = Counter()
    assert embed.parse_roi_coords("[[5, 6, 7, 8]]", notes) == [(5, 6, 8, 9)]
    assert embed.parse_roi_coords("(5, 6, 7, 8)", notes) == [(5, 6, 8, 9)]
    assert embed.parse_roi_coords("((7, 8, 5, 6),)", notes) == [(5, 6, 8, 9)]  # corners sorted
    assert embed.parse_roi_coords("((1.5, 2, 3.2, 4),)", notes) == [(1, 2, 4, 5)]
    assert notes == Counter()


def test_unknown_assessment_letters_are_counted(tmp_path):
    findings = [finding(side="L", asses="Q"), finding(side="L", asses="B")]
    tables = _read(make_embed(tmp_path, findings, [image()]))
    assert [im["birads"] for im in tables.images] == ["2"]
    assert tables.notes["unknown asses value (finding ignored for birads)"] == 1


@pytest.mark.parametrize("table, column", [(0, "path_severity"), (1, "ImageLateralityFinal")])
def test_a_missing_required_column_names_the_file_and_the_column(tmp_path, table, column):
    columns = [list(CLINICAL), list(METADATA)]
    columns[table].remove(column)
    make_embed(tmp_path, [finding()], [image()], columns=tuple(columns))
    name = ("EMBED_OpenData_clinical.csv", "EMBED_OpenData_metadata.csv")[table]
    with pytest.raises(ValueError, match=rf"{name}.*missing column.*'{column}'"):
        _read(tmp_path)


def test_a_missing_table_names_the_file(tmp_path):
    make_embed(tmp_path, [finding()], [image()])
    (tmp_path / "tables" / "EMBED_OpenData_metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="EMBED_OpenData_metadata.csv"):
        _read(tmp_path)


@pytest.mark.slow
def test_read_tables_at_full_scale_is_fast(tmp_path):
    """480,000 metadata rows (10 per exam, ~100 columns as in the release) and 80,000 findings,
    placeholder files on disk: read_tables takes < 60 s, the whole manifest < 90 s, on 2 cores."""
    n_exams, per_exam = 48_000, 10
    filler = [f"tag{i}" for i in range(100 - len(METADATA))]
    t0 = time.perf_counter()
    with open(_table(tmp_path, "EMBED_OpenData_metadata.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*METADATA, *filler])
        fill = ["1.2.840.10008.5.1.4.1.1.1.2", "12.5"] * (len(filler) // 2) + [""] * (
            len(filler) % 2)
        for e in range(n_exams):
            empi, acc = str(10_000_000 + e // 4), str(60_000_000 + e)
            folder = tmp_path / "images" / "cohort_1" / empi / f"1.2.{acc}" / f"1.3.{acc}"
            folder.mkdir(parents=True)
            for k in range(per_exam):
                lat, view = "LR"[k % 2], ("CC", "MLO", "ML", "XCCL", "CC")[k // 2]
                kind = "cview" if k >= 8 else "2D"
                spot = "1.0" if k == 6 else ""
                name = f"1.2.826.0.1.3680043.8.498.{acc}{k:02d}"
                writer.writerow([empi, acc, "2014-01-01", f"{_dicom_path(empi, acc, name)}",
                                 kind, lat, view, spot, "((10, 20, 30, 40),)" if k == 0 else "()",
                                 "1" if k == 0 else "0", "HOLOGIC, Inc.", "4096", "3328", *fill])
                if k != 9:
                    (folder / f"{name}.dcm").touch()
    clinical_columns = [*CLINICAL, *[f"c{i}" for i in range(110 - len(CLINICAL))]]
    with open(_table(tmp_path, "EMBED_OpenData_clinical.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(clinical_columns)
        extra = ["x"] * (len(clinical_columns) - len(CLINICAL))
        for e in range(n_exams):
            empi, acc = str(10_000_000 + e // 4), str(60_000_000 + e)
            sides = ("L", "R", "B") if e % 3 == 0 else ("",)  # 80,000 rows in all
            for side in sides:
                writer.writerow([empi, acc, "2014-01-01", "MG Screen Bilat", side, "NBS"[e % 3],
                                 "1", "4" if e % 3 else "", "2", "60", "Female", *extra])
    written = time.perf_counter() - t0

    t0 = time.perf_counter()
    tables = _read(tmp_path)
    elapsed = time.perf_counter() - t0
    print(f"\nwrote 480,000 rows and files in {written:.1f} s; read_tables {elapsed:.1f} s")
    # Per exam: 10 rows, of which 2 C-view and 1 spot view are left out: 7 kept.
    assert len(tables.images) == n_exams * 7
    assert len(tables.excluded) == n_exams * 3
    assert len(tables.lesions) == n_exams
    assert elapsed < 60
    # The whole manifest (tables, exclusions, lesions, written and read back): the budget.
    from milpf_jax.reading.public import build_manifest

    t0 = time.perf_counter()
    cohort, summary = build_manifest("embed", tmp_path, tmp_path / "out" / "embed.csv")
    built = time.perf_counter() - t0
    print(f"build_manifest {built:.1f} s")
    assert summary.images == n_exams * 7 and sum(summary.excluded.values()) == n_exams * 3
    assert len(cohort.lesions) == n_exams
    assert built < 90


def _table(root: Path, name: str) -> Path:
    (root / "tables").mkdir(parents=True, exist_ok=True)
    return root / "tables" / name
