"""milpf_jax.reading.public.rsna: the RSNA Kaggle train.csv in its published format."""

from __future__ import annotations

from pathlib import Path

import pytest

from milpf_jax.reading.public import rsna
from milpf_jax.reading.public.common import DatasetOptions

HEADER = ("site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,"
          "implant,density,machine_id,difficult_negative_case")
# Patient 10006: left breast with four images (CC, MLO, MLO, AT), cancer on one MLO only;
# right breast negative. Patient 10011: a missing file, an invalid cancer value, a NaN age.
ROWS = [
    "2,10006,462822612,L,CC,61.0,0,0,0,,0,,29,False",
    "2,10006,1459541791,L,MLO,61.0,1,1,1,0,0,,29,False",
    "2,10006,1864590858,L,MLO,61.0,0,0,0,,0,,29,False",
    "2,10006,1874946579,L,AT,61.0,0,0,0,,0,,29,False",
    "2,10006,220375232,R,CC,61.0,0,0,0,,0,,29,False",
    "1,10011,270344397,R,MLO,,0,0,0,1,1,C,21,False",
    "1,10011,541722628,R,CC,,0,0,0,1,1,C,21,False",
    "1,10011,1031443799,L,CC,55.0,2,0,0,1,0,B,21,False",
]
MISSING = {"541722628"}


def _write(root: Path, header: str = HEADER) -> None:
    (root / "train.csv").write_text("\n".join([header, *ROWS]) + "\n")
    for row in ROWS:
        patient, image = row.split(",")[1:3]
        if image not in MISSING:
            path = root / "train_images" / patient / f"{image}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")


@pytest.fixture
def tables(tmp_path):
    _write(tmp_path)
    return rsna.read_tables(tmp_path, DatasetOptions())


def test_module_constants():
    assert (rsna.NAME, rsna.TASKS, rsna.HAS_OFFICIAL_SPLIT) == ("rsna", ("cancer",), False)
    assert "kaggle.com/competitions/rsna-breast-cancer-detection" in rsna.DOC


def test_breast_of_four_images_with_an_at_view(tables, tmp_path):
    images = {Path(i["path"]).stem: i for i in tables.images}
    assert sorted(images) == sorted(["462822612", "1459541791", "1864590858", "1874946579",
                                     "220375232", "270344397"])
    left = [images[i] for i in ("462822612", "1459541791", "1864590858", "1874946579")]
    assert [i["view"] for i in left] == ["CC", "MLO", "MLO", "AT"]
    assert {(i["patient_id"], i["exam_id"], i["laterality"]) for i in left} == {
        ("10006", "10006", "L")}
    assert [i["cancer"] for i in left] == ["1", "1", "1", "1"]  # breast level, from one image
    assert images["220375232"]["cancer"] == "0"
    assert images["270344397"]["cancer"] == "0"
    first = images["462822612"]
    assert first["path"] == str(tmp_path / "train_images" / "10006" / "462822612.dcm")
    assert (first["official_split"], first["site"], first["age"], first["implant"],
            first["density"], first["machine_id"]) == ("", "2", "61", "0", "", "29")
    other = images["270344397"]
    assert (other["age"], other["implant"], other["density"], other["site"]) == ("", "1", "C",
                                                                                 "1")
    assert "manufacturer" not in first
    assert tables.has_official_split is False


def test_exclusions_with_reasons(tables, tmp_path):
    assert sorted((e["path"], e["reason"]) for e in tables.excluded) == sorted([
        (str(tmp_path / "train_images" / "10011" / "541722628.dcm"), "file missing"),
        (str(tmp_path / "train_images" / "10011" / "1031443799.dcm"), "unknown label value"),
    ])
    bad = next(e for e in tables.excluded if e["reason"] == "unknown label value")
    assert (bad["patient_id"], bad["exam_id"], bad["laterality"], bad["view"]) == (
        "10011", "10011", "L", "CC")
    assert tables.lesions == []


def test_duplicated_image_id_excludes_every_copy(tmp_path):
    _write(tmp_path)
    table = tmp_path / "train.csv"
    table.write_text(table.read_text() + ROWS[0] + "\n")
    tables = rsna.read_tables(tmp_path, DatasetOptions())
    assert [e["reason"] for e in tables.excluded].count("duplicated image id") == 2
    assert "462822612" not in {Path(i["path"]).stem for i in tables.images}


def test_missing_column_names_file_and_column(tmp_path):
    _write(tmp_path, header=HEADER.replace("cancer", "label"))
    with pytest.raises(ValueError, match=r"train\.csv.*cancer"):
        rsna.read_tables(tmp_path, DatasetOptions())
