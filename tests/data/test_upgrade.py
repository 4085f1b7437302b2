"""Store format version 2 and the in-place upgrade of a version-1 store (milpf_jax.data.upgrade)."""

import subprocess
import sys

import numpy as np
import pytest
import zarr

from helpers.plans import embeddings_for
from milpf_jax.data.packed import load_packed
from milpf_jax.data.store import FORMAT_VERSION, BagPlan, Store
from milpf_jax.data.upgrade import upgrade


def manifest_plans(n_patients=6):
    """Both breasts of one exam per patient, ids as a manifest makes them."""
    plans = []
    for i in range(n_patients):
        for side, label in (("L", "1"), ("R", "4" if i % 2 else "1")):
            boxes = np.array([[0, 0, 0, 10, 10], [1, 5, 5, 15, 15]], np.int32)
            plans.append(BagPlan(bag_id=f"P{i}/E{i % 2}/{side}", patient_id=f"P{i}",
                                 raw_label=label, view_paths=("a.dcm", "b.dcm"),
                                 view_names=("CC", "MLO"), view_flipped=(False, False),
                                 view_shapes=((20, 20), (20, 20)), tile_boxes=boxes,
                                 exam_id=f"E{i % 2}", laterality=side))
    return plans


def filled_store(path, plans):
    store = Store.create(path, plans, dim=4, attrs=dict(label_kind="birads", cohort="m",
                                                        cohort_spec="/data/m.csv"))
    for b, plan in enumerate(plans):
        store.write_bag(b, *embeddings_for(plan, 4, b))
    return store


def as_version_1(path):
    """What an older milpf-jax wrote: no exam_id, no laterality, format version 1."""
    g = zarr.open_group(str(path), mode="r+")
    del g["exam_id"], g["laterality"]
    g.attrs["format_version"] = 1
    g.attrs.pop("cohort_spec", None)


def test_version_2_records_exam_and_laterality_and_packs_them(tmp_path):
    plans = manifest_plans()
    store = filled_store(tmp_path / "s.zarr", plans)
    assert store.attrs["format_version"] == FORMAT_VERSION == 2
    assert store.attrs["cohort_spec"] == "/data/m.csv"
    assert list(store.array("exam_id")) == [p.exam_id for p in plans]
    assert list(store.array("laterality")) == [p.laterality for p in plans]
    packed = load_packed(tmp_path / "s.zarr")
    by_bag = dict(zip(packed.bag_ids, zip(packed.exam_ids, packed.lateralities, strict=True),
                      strict=True))
    assert by_bag["P3/E1/R"] == ("E1", "R") and by_bag["P2/E0/L"] == ("E0", "L")


def test_a_version_1_store_is_refused_with_the_upgrade_command_then_upgraded(tmp_path):
    path = tmp_path / "old.zarr"
    filled_store(path, manifest_plans())
    before = zarr.open_group(str(path), mode="r")["tiles"][...]
    as_version_1(path)
    with pytest.raises(ValueError, match=rf"python -m milpf_jax.data.upgrade {path}"):
        Store.open(path)
    assert upgrade(path, cohort_spec="/data/m.csv") is True
    store = Store.open(path)
    assert store.attrs["format_version"] == 2 and store.attrs["cohort_spec"] == "/data/m.csv"
    assert list(store.array("exam_id")[:4]) == ["E0", "E0", "E1", "E1"]
    assert list(store.array("laterality")[:4]) == ["L", "R", "L", "R"]
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["tiles"][...], before)
    assert upgrade(path) is False  # already version 2: nothing written


def test_ids_of_another_form_are_refused_naming_the_bag_and_nothing_is_written(tmp_path):
    path = tmp_path / "synthetic.zarr"
    plans = [BagPlan(bag_id=f"S{i:05d}", patient_id=f"P{i}", raw_label="1") for i in range(3)]
    Store.create(path, plans, dim=4, attrs=dict(label_kind="binary"))
    as_version_1(path)
    with pytest.raises(ValueError, match=r"bag 'S00000' .*not patient/exam/laterality"):
        upgrade(path)
    g = zarr.open_group(str(path), mode="r")
    assert g.attrs["format_version"] == 1 and "exam_id" not in g


def test_the_command_line_upgrades_and_names_what_it_refuses(tmp_path):
    good, bad = tmp_path / "good.zarr", tmp_path / "bad.zarr"
    filled_store(good, manifest_plans(2))
    as_version_1(good)
    Store.create(bad, [BagPlan(bag_id="X", patient_id="P", raw_label="1")], dim=4,
                 attrs=dict(label_kind="binary"))
    as_version_1(bad)
    cmd = [sys.executable, "-m", "milpf_jax.data.upgrade"]
    ok = subprocess.run(cmd + [str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "upgraded to format version 2" in ok.stdout
    refused = subprocess.run(cmd + [str(bad)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.startswith("error: bag 'X'")
    assert "Traceback" not in refused.stderr
    missing = subprocess.run(cmd + [str(tmp_path / "none.zarr")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no embeddings store at" in missing.stderr
