"""milpf_jax.reading.public.vindr: VinDr-Mammo's two tables in their published format."""

from __future__ import annotations

from pathlib import Path

import pytest

from milpf_jax.reading.public import vindr
from milpf_jax.reading.public.common import DatasetOptions

BREAST_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,"
                 "breast_birads,breast_density,split")
FINDING_HEADER = ("study_id,series_id,image_id,laterality,view_position,height,width,"
                  "breast_birads,breast_density,finding_categories,finding_birads,"
                  "xmin,ymin,xmax,ymax,split")

# study s1: right breast with two CC images and one MLO (BI-RADS 4, a mass and a calcification
# on one image's finding), left breast BI-RADS 1 with no finding.
# study s2: left CC BI-RADS 2 with a calcification only (test split); an unknown birads value;
# a missing file; a duplicated image id. study s3: no laterality, an unknown view.
BREAST_ROWS = [
    "s1,se1,i1,R,CC,3518,2800,BI-RADS 4,DENSITY C,training",
    "s1,se1,i2,R,CC,3518,2800,BI-RADS 4,DENSITY C,training",
    "s1,se1,i3,R,MLO,3518,2800,BI-RADS 4,DENSITY C,training",
    "s1,se1,i4,L,CC,3518,2800,BI-RADS 1,DENSITY C,training",
    "s2,se2,j1,L,CC,3518,2800,BI-RADS 2,DENSITY B,test",
    "s2,se2,j2,L,MLO,3518,2800,BI-RADS 7,DENSITY B,test",
    "s2,se2,j3,R,CC,3518,2800,BI-RADS 3,DENSITY B,test",
    "s2,se2,dup,R,MLO,3518,2800,BI-RADS 3,DENSITY B,test",
    "s2,se2,dup,R,MLO,3518,2800,BI-RADS 3,DENSITY B,test",
    "s3,se3,k1,,CC,3518,2800,BI-RADS 1,DENSITY A,training",
    "s3,se3,k2,L,XX,3518,2800,BI-RADS 1,DENSITY A,training",
]
FINDING_ROWS = [
    ("s1,se1,i1,R,CC,3518,2800,BI-RADS 4,DENSITY C,\"['Mass', 'Suspicious Calcification']\","
     "BI-RADS 4,100.4,200.6,150.2,260.0,training"),
    "s1,se1,i2,R,CC,3518,2800,BI-RADS 4,DENSITY C,['No Finding'],,,,,,training",
    "s1,se1,i3,R,MLO,3518,2800,BI-RADS 4,DENSITY C,['Mass'],BI-RADS 4,10.0,20.0,30.5,40.5,training",
    "s1,se1,i4,L,CC,3518,2800,BI-RADS 1,DENSITY C,['No Finding'],,,,,,training",
    ("s2,se2,j1,L,CC,3518,2800,BI-RADS 2,DENSITY B,['Suspicious Calcification'],BI-RADS 2,"
     "5.5,6.5,7.5,8.5,test"),
    "s2,se2,j3,R,CC,3518,2800,BI-RADS 3,DENSITY B,['Asymmetry'],BI-RADS 3,1.0,2.0,3.0,4.0,test",
]
MISSING = {"j3"}


def _write(root: Path, breast_header=BREAST_HEADER) -> None:
    (root / "breast-level_annotations.csv").write_text(
        "\n".join([breast_header, *BREAST_ROWS]) + "\n")
    (root / "finding_annotations.csv").write_text("\n".join([FINDING_HEADER, *FINDING_ROWS]) + "\n")
    for row in BREAST_ROWS:
        study, _, image = row.split(",")[:3]
        if image not in MISSING:
            path = root / "images" / study / f"{image}.dicom"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")


@pytest.fixture
def tables(tmp_path):
    _write(tmp_path)
    return vindr.read_tables(tmp_path, DatasetOptions())


def _by_image(tables):
    return {Path(i["path"]).stem: i for i in tables.images}


def test_module_constants():
    assert vindr.NAME == "vindr"
    assert vindr.TASKS == ("birads", "mass", "calcification")
    assert vindr.HAS_OFFICIAL_SPLIT is True
    assert "physionet.org/content/vindr-mammo/1.0.0" in vindr.DOC


def test_images_ids_labels_and_split(tables, tmp_path):
    images = _by_image(tables)
    assert sorted(images) == ["i1", "i2", "i3", "i4", "j1"]
    assert tables.dataset == "vindr" and tables.tasks == vindr.TASKS
    assert tables.has_official_split is True
    i1 = images["i1"]
    assert i1["path"] == str(tmp_path / "images" / "s1" / "i1.dicom")
    assert Path(i1["path"]).is_absolute()
    assert (i1["patient_id"], i1["exam_id"], i1["laterality"], i1["view"]) == ("s1", "s1", "R",
                                                                               "CC")
    expected = {  # birads, mass, calcification, split, density
        "i1": ("4", "1", "1", "train", "C"),
        "i2": ("4", "1", "1", "train", "C"),  # 'No Finding' itself; its breast has both
        "i3": ("4", "1", "1", "train", "C"),
        "i4": ("1", "0", "0", "train", "C"),
        "j1": ("2", "0", "1", "test", "B"),
    }
    for image, values in expected.items():
        row = images[image]
        assert (row["birads"], row["mass"], row["calcification"], row["official_split"],
                row["density"]) == values, image
    assert [images[i]["view"] for i in ("i1", "i2", "i3")] == ["CC", "CC", "MLO"]


def test_exclusions_with_reasons(tables, tmp_path):
    reasons = sorted((Path(e["path"]).stem, e["reason"]) for e in tables.excluded)
    assert reasons == [("dup", "duplicated image id"), ("dup", "duplicated image id"),
                       ("j2", "unknown label value"), ("j3", "file missing"),
                       ("k1", "no laterality"), ("k2", "unknown view")]
    missing = next(e for e in tables.excluded if e["reason"] == "file missing")
    assert missing == {"path": str(tmp_path / "images" / "s2" / "j3.dicom"), "patient_id": "s2",
                       "exam_id": "s2", "laterality": "R", "view": "CC", "reason": "file missing"}


def test_lesion_boxes_one_row_per_category(tables, tmp_path):
    rows = sorted((Path(b["path"]).stem, b["y0"], b["x0"], b["y1"], b["x1"], b["kind"])
                  for b in tables.lesions)
    assert rows == [
        ("i1", 200, 100, 260, 151, "Mass"),
        ("i1", 200, 100, 260, 151, "Suspicious Calcification"),
        ("i3", 20, 10, 41, 31, "Mass"),
        ("j1", 6, 5, 9, 8, "Suspicious Calcification"),
    ]  # the excluded j3's finding gives no box
    assert all(isinstance(b[c], int) for b in tables.lesions for c in ("y0", "x0", "y1", "x1"))


def test_breast_birads_differing_within_a_breast_takes_most_suspicious(tmp_path):
    _write(tmp_path)
    table = tmp_path / "breast-level_annotations.csv"
    table.write_text(table.read_text().replace("s1,se1,i2,R,CC,3518,2800,BI-RADS 4",
                                               "s1,se1,i2,R,CC,3518,2800,BI-RADS 2"))
    tables = vindr.read_tables(tmp_path, DatasetOptions())
    assert {i["birads"] for i in tables.images if i["exam_id"] == "s1" and i["laterality"] == "R"
            } == {"4"}
    assert tables.notes["breast_birads differ within a breast -> most suspicious"] == 1


def test_missing_column_names_file_and_column(tmp_path):
    _write(tmp_path, breast_header=BREAST_HEADER.replace("breast_birads", "birads"))
    with pytest.raises(ValueError, match=r"breast-level_annotations\.csv.*breast_birads"):
        vindr.read_tables(tmp_path, DatasetOptions())


@pytest.mark.slow
def test_a_manifest_of_20000_images_builds_in_under_10_s(tmp_path):
    """VinDr-Mammo's size (5,000 studies x 4 images), placeholder files: the whole manifest."""
    import time

    from milpf_jax.reading.public import build_manifest

    breast, finding = [BREAST_HEADER], [FINDING_HEADER]
    for s in range(5_000):
        split = "test" if s % 5 == 0 else "training"
        folder = tmp_path / "images" / f"st{s:05d}"
        folder.mkdir(parents=True)
        for k, (lat, view) in enumerate((("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))):
            image = f"im{s:05d}{k}"
            birads = "BI-RADS 4" if s % 7 == 0 and lat == "R" else "BI-RADS 1"
            common = f"st{s:05d},se{s:05d},{image},{lat},{view},3518,2800,{birads},DENSITY C"
            breast.append(f"{common},{split}")
            if s % 7 == 0 and lat == "R":
                finding.append(f"{common},\"['Mass']\",BI-RADS 4,100.5,200.5,300.0,400.0,{split}")
            else:
                finding.append(f"{common},['No Finding'],,,,,,{split}")
            (folder / f"{image}.dicom").touch()
    (tmp_path / "breast-level_annotations.csv").write_text("\n".join(breast) + "\n")
    (tmp_path / "finding_annotations.csv").write_text("\n".join(finding) + "\n")
    t0 = time.perf_counter()
    cohort, summary = build_manifest("vindr", tmp_path, tmp_path / "out" / "vindr.csv",
                                     split="official")
    elapsed = time.perf_counter() - t0
    print(f"\nbuild_manifest: 20,000 images in {elapsed:.1f} s")
    assert summary.images == 20_000 and len(cohort.bags) == 10_000
    assert len(cohort.lesions) == 2 * len(range(0, 5_000, 7))  # the R CC and MLO boxes
    assert elapsed < 10
