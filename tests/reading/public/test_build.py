"""milpf_jax.reading.public: a dataset's tables become the project's manifest, lesions and
exclusions; `experiments/manifest.py --dataset`; the `vindr:DIR` spec names the same store."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_vindr import _write as write_vindr

from helpers.repo import load_script
from milpf_jax.reading.cohort import SPLIT_CODES
from milpf_jax.reading.public import build_manifest, excluded_path
from milpf_jax.reading.sources import read_cohort


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def vindr_root(tmp_path):
    root = tmp_path / "vindr-mammo"
    root.mkdir()
    write_vindr(root)
    return root


def test_seeded_manifest_lesions_exclusions_and_summary(vindr_root, tmp_path):
    out = tmp_path / "out" / "vindr.csv"
    cohort, summary = build_manifest("vindr", vindr_root, out)
    rows = _rows(out)
    assert list(rows[0]) == ["path", "patient_id", "exam_id", "laterality", "view", "split",
                             "birads", "mass", "calcification", "density", "dataset"]
    assert {r["split"] for r in rows} == {""}  # drawn at load time
    assert {r["dataset"] for r in rows} == {"vindr"}
    assert cohort.name == "vindr" and [t for t, _ in cohort.task_list()] == [
        "birads", "mass", "calcification"]
    bags = {b.bag_id: b for b in cohort.bags}
    assert sorted(bags) == ["s1/s1/L", "s1/s1/R", "s2/s2/L"]
    assert bags["s1/s1/R"].task_labels == ("4", "1", "1")
    assert len(bags["s1/s1/R"].images) == 3  # two CC images and the MLO
    assert [im.view for im in bags["s1/s1/R"].images] == ["CC", "CC", "MLO"]
    assert bags["s2/s2/L"].task_labels == ("2", "0", "1")
    # one lesion row per box and category, read back as the cohort's lesions
    assert sorted((Path(les.path).stem, les.box, les.kind) for les in cohort.lesions) == [
        ("i1", (200, 100, 260, 151), "Mass"),
        ("i1", (200, 100, 260, 151), "Suspicious Calcification"),
        ("i3", (20, 10, 41, 31), "Mass"),
        ("j1", (6, 5, 9, 8), "Suspicious Calcification"),
    ]
    excluded = _rows(excluded_path(out))
    assert list(excluded[0]) == ["path", "patient_id", "exam_id", "laterality", "view", "reason"]
    reasons = sorted(r["reason"] for r in excluded)
    assert reasons == sorted(summary.excluded.elements())
    assert {"file missing", "unknown label value", "duplicated image id"} <= set(reasons)
    text = "\n".join(summary.lines())
    assert f"wrote {out}: 5 images, 3 bags (breasts), 2 patients (vindr)" in text
    assert "task mass: bags per raw label {0: 2, 1: 1}" in text
    assert "task calcification: bags per raw label {0: 1, 1: 2}" in text
    assert "task birads: bags per raw label {1: 1, 2: 1, 4: 1}" in text
    assert f"excluded {len(excluded)} images (" in text


def test_official_split_writes_trainval_and_keeps_test(vindr_root, tmp_path):
    cohort, summary = build_manifest("vindr", vindr_root, tmp_path / "m.csv", split="official")
    assert {b.patient_id: b.split_given for b in cohort.bags} == {
        "s1": SPLIT_CODES["trainval"], "s2": SPLIT_CODES["test"]}
    assert list(summary.per_split) == ["trainval", "test"]
    with pytest.raises(ValueError, match="rsna has no official test split with labels"):
        from test_rsna import _write as write_rsna

        (tmp_path / "rsna").mkdir()
        write_rsna(tmp_path / "rsna")
        build_manifest("rsna", tmp_path / "rsna", tmp_path / "r.csv", split="official")


def test_the_spec_and_the_manifest_name_one_store(vindr_root, tmp_path):
    from milpf_jax.extraction.config import ExtractConfig
    from milpf_jax.extraction.extract import store_name

    manifest = tmp_path / "mine" / "vindr.csv"
    build_manifest("vindr", vindr_root, manifest)
    from_csv = read_cohort(manifest)
    from_spec = read_cohort(f"vindr:{vindr_root}", cache_dir=tmp_path / "cache")
    assert from_spec.spec == f"vindr:{vindr_root}" and from_csv.spec == str(manifest.resolve())
    assert from_spec.name == from_csv.name == "vindr"
    cfg = ExtractConfig()
    assert store_name(from_spec, cfg) == store_name(from_csv, cfg)
    assert store_name(from_spec, cfg).startswith("vindr-")
    # another split policy is another cohort identity, hence another store
    official = read_cohort(build_manifest("vindr", vindr_root, tmp_path / "o.csv",
                                          split="official")[0].spec)
    assert store_name(official, cfg) != store_name(from_csv, cfg)


def test_pseudonymised_manifest_keeps_no_study_id(vindr_root, tmp_path):
    _, _ = build_manifest("vindr", vindr_root, tmp_path / "p.csv", key=b"k" * 32)
    text = (tmp_path / "p.csv").read_text() + excluded_path(tmp_path / "p.csv").read_text()
    rows = _rows(tmp_path / "p.csv")
    assert all(r["patient_id"].startswith("P-") and r["view_ref"].startswith("I-") for r in rows)
    assert ",s1," not in text and ",s2," not in text


def test_the_cli_prints_the_summary_and_refuses_a_missing_root(vindr_root, tmp_path, capsys):
    manifest = load_script("manifest")
    assert manifest.main(["--dataset", "vindr", "--root", str(vindr_root),
                          "--out", str(tmp_path / "v.csv"), "--split", "official"]) == 0
    out = capsys.readouterr().out
    assert "split trainval: 4 images, 2 bags, 1 patients" in out
    assert "split test: 1 images, 1 bags, 1 patients" in out
    with pytest.raises(FileNotFoundError, match="--root .*nothere: not a folder"):
        manifest.main(["--dataset", "vindr", "--root", str(tmp_path / "nothere"),
                       "--out", str(tmp_path / "w.csv")])
