"""Import of precomputed features: the original code's HDF5 and TRIDENT/CLAM .h5 per image.

Files are written with h5py in each pipeline's own layout (`helpers.features`), imported by
`experiments/import_features.py` as a user runs it, and trained through `experiments/sweep.py`:
the metrics must equal those of a store written from the same arrays with `Store.from_arrays`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np
import pytest

from helpers.features import PATCH, milpf_bags, write_milpf_h5, write_trident_h5s
from helpers.repo import load_script
from milpf_jax.data.imported import imported_encoder
from milpf_jax.data.packed import load_packed
from milpf_jax.data.store import Store, StoreMismatch
from milpf_jax.explanation.explain import load_explainer
from milpf_jax.extraction.imports import ImportConfig, import_features
from milpf_jax.learning.checkpoint import read_metadata

SWEEP = ["--seeds", "3", "--epochs", "60", "--lr", "1e-2", "--bootstrap", "0", "--quiet"]
LEGACY = {3, 10}  # rows written in the older layout: one `embeddings` key, no tiles


@pytest.fixture(scope="module")
def items():
    return milpf_bags(n_bags=160)


@pytest.fixture
def milpf_files(tmp_path, items):
    write_milpf_h5(tmp_path / "embeddings.hdf5", tmp_path / "bags.csv", items, legacy=LEGACY)
    return tmp_path / "embeddings.hdf5", tmp_path / "bags.csv"


def run_import(*args) -> int:
    return load_script("import_features").main([str(a) for a in args])


def run_sweep(store, out, *extra) -> dict:
    assert load_script("sweep").main(["--store", str(store), "--out", str(out), *SWEEP,
                                      *extra]) == 0
    return json.loads((out / "results.json").read_text())


def aucs(results) -> list:
    return [(r["val"]["auc"], r["test"]["auc"]) for r in results["runs"]]


def test_milpf_h5_trains_as_the_same_arrays_written_directly(tmp_path, items, milpf_files):
    h5, bags = milpf_files
    assert run_import("--format", "milpf-h5", "--h5", h5, "--bags", bags,
                      "--encoder-name", "medsiglip", "--out", tmp_path / "imported.zarr") == 0
    store = Store.open(tmp_path / "imported.zarr")
    attrs = store.attrs
    assert attrs["encoder"] == "imported:medsiglip" and attrs["import_format"] == "milpf-h5"
    assert attrs["source_file"] == str(h5.resolve()) and len(attrs["source_sha256"]) == 64
    assert attrs["view_embeddings"] is True
    # The legacy groups' views are read from `embeddings`; they have no tiles.
    mask = store.array("tiles_mask").sum(axis=1)
    assert [int(mask[r]) for r in sorted(LEGACY)] == [0, 0]
    assert int(mask.sum()) == sum(len(t) for r, (_, _, t) in enumerate(items) if r not in LEGACY)
    bag = store.read_bag(5)
    np.testing.assert_array_equal(bag["tile_emb"], items[5][2].astype(np.float16))
    np.testing.assert_array_equal(bag["global_emb"], items[5][1].astype(np.float16))

    plans = [dataclasses.replace(p, tile_boxes=np.zeros((0, 5), np.int32)) if r in LEGACY
             else p for r, (p, _, _) in enumerate(items)]
    direct = Store.from_arrays(
        tmp_path / "direct.zarr", plans,
        [t[:0] if r in LEGACY else t for r, (_, _, t) in enumerate(items)],
        [v for _, v, _ in items], attrs=dict(label_kind="birads", cohort="direct"))
    imported = run_sweep(tmp_path / "imported.zarr", tmp_path / "run-imported")
    written = run_sweep(direct.path, tmp_path / "run-direct")
    assert imported["data"]["bags"] == written["data"]["bags"]
    assert aucs(imported) == aucs(written)
    assert imported["best"]["test"]["auc"]["value"] > 0.75  # the planted signal is learnt
    # A run on imported embeddings says so: no encoder to re-run (what predict.py refuses).
    assert imported_encoder(imported["store_attrs"]) == "medsiglip"
    meta = read_metadata(tmp_path / "run-imported" / "best")
    assert imported_encoder(meta["store_attrs"]) == "medsiglip"
    assert imported_encoder(written["store_attrs"]) is None
    with pytest.raises(ValueError, match=r"trained on imported embeddings \(encoder "
                                         r"'imported:medsiglip'\)"):
        load_explainer(tmp_path / "run-imported")


def test_h5_per_image_makes_tiles_with_boxes_and_trains_a_local_only_head(tmp_path, items):
    manifest, h5_dir, boxes = write_trident_h5s(tmp_path / "trident", items)
    out = tmp_path / "uni.zarr"
    assert run_import("--format", "h5-per-image", "--manifest", manifest, "--h5-dir", h5_dir,
                      "--encoder-name", "uni2", "--out", out) == 0
    store = Store.open(out)
    assert store.attrs["view_embeddings"] is False
    assert store.attrs["preprocessing"] == {"patch_size": [PATCH]}  # patch_size_level0 won
    assert store.attrs["cohort_spec"] == str(manifest.resolve())
    for b in (0, 7):
        bag = store.read_bag(b)
        np.testing.assert_array_equal(bag["tile_boxes"], boxes[b])
        np.testing.assert_array_equal(bag["tile_emb"], items[b][2].astype(np.float16))
        assert bag["view_name"] == ["CC", "MLO"] and not bag["view_flipped"].any()
        assert bag["view_path"][0].endswith(f"{items[b][0].bag_id.replace('/', '_')}_CC.png")

    with pytest.raises(ValueError, match="only --global-pool none heads can train on it"):
        run_sweep(out, tmp_path / "run-refused")
    assert not (tmp_path / "run-refused").exists()

    direct = Store.from_arrays(tmp_path / "direct.zarr", [p for p, _, _ in items],
                               [t for _, _, t in items], None,
                               attrs=dict(label_kind="birads", cohort="direct"))
    assert direct.attrs["view_embeddings"] is False
    # What training reads is the same as from the arrays written directly (so are the metrics:
    # the slow test below trains on both).
    a, b = load_packed(out), load_packed(direct)
    for name in ("tiles", "tile_bag", "views_mask", "labels", "splits", "bag_ids",
                 "patient_ids", "exam_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not a.views.any() and not b.views.any()
    # Training a local-only head on it is the README's command (tests/test_readme.py).


@pytest.mark.slow
def test_h5_per_image_trains_a_local_only_head_as_the_same_arrays(tmp_path, items):
    manifest, h5_dir, _ = write_trident_h5s(tmp_path / "trident", items)
    out = tmp_path / "uni.zarr"
    assert run_import("--format", "h5-per-image", "--manifest", manifest, "--h5-dir", h5_dir,
                      "--encoder-name", "uni2", "--out", out) == 0
    direct = Store.from_arrays(tmp_path / "direct.zarr", [p for p, _, _ in items],
                               [t for _, _, t in items], None,
                               attrs=dict(label_kind="birads", cohort="direct"))
    imported = run_sweep(out, tmp_path / "run-imported", "--global-pool", "none")
    written = run_sweep(direct.path, tmp_path / "run-direct", "--global-pool", "none")
    assert imported["head"]["global_pool"] == "none"
    assert aucs(imported) == aucs(written)
    assert imported["best"]["test"]["auc"]["value"] > 0.75


def test_a_global_dataset_gives_the_view_embeddings(tmp_path, items):
    manifest, h5_dir, _ = write_trident_h5s(tmp_path / "t", items[:6], global_dataset="slide")
    r = import_features(ImportConfig(format="h5-per-image", manifest=str(manifest),
                                     h5_dir=str(h5_dir), global_dataset="slide",
                                     patch_size=64, encoder_name="uni2",
                                     out=str(tmp_path / "g.zarr")))
    assert r.view_embeddings and r.n_bags == 6
    bag = Store.open(r.path).read_bag(2)
    np.testing.assert_array_equal(bag["global_emb"], items[2][1].astype(np.float16))
    assert (bag["tile_boxes"][:, 3] - bag["tile_boxes"][:, 1] == 64).all()  # --patch-size won


def test_the_same_source_again_writes_nothing_and_another_is_refused(tmp_path, milpf_files):
    h5, bags = milpf_files
    out = tmp_path / "m.zarr"
    cfg = ImportConfig(format="milpf-h5", h5=str(h5), bags=str(bags), encoder_name="medsiglip",
                       out=str(out))
    assert import_features(cfg).found is False
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = import_features(cfg)
    assert again.found is True and again.n_bags == 160
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with h5py.File(h5, "a") as f:  # another file now: its SHA-256 differs
        f["0/images"][0, 0] += 1.0
    with pytest.raises(StoreMismatch, match="source_sha256: stored"):
        import_features(cfg)
    with pytest.raises(StoreMismatch, match="encoder: stored 'imported:medsiglip', requested "
                                            "'imported:dinov2'"):
        import_features(ImportConfig(**{**cfg.__dict__, "encoder_name": "dinov2",
                                        "h5": str(h5)}))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def _edit(group, key, value):
    """An edit of the file: `key` of `group` replaced by `value` (None: removed)."""
    def edit(h5):
        with h5py.File(h5, "a") as f:
            g = f.require_group(group)
            if key in g:
                del g[key]
            if value is not None:
                g.create_dataset(key, data=value)
    return edit


def _drop_group(group):
    def edit(h5):
        with h5py.File(h5, "a") as f:
            del f[group]
    return edit


BAD = {
    "group without a row": (_edit("160", "images", np.zeros((2, 16), np.float32)),
                            r"groups without a row in bags.csv: 160"),
    "row without a group": (_drop_group("7"),
                            r"rows of bags.csv without a group in the file: row 9 \(7\)"),
    "tiles of another D": (_edit("4", "tiles", np.zeros((3, 8), np.float32)),
                           r"group '4': 'tiles' has shape \[3, 8\]; expected \[N, 16\]"),
    "label out of step": (_edit("2", "label", np.array([9])),
                          r"group '2' has label 9, but its row in bags.csv \(row 4, bag "
                          r"P001/E1/L\)"),
    "label of two values": (_edit("6", "label", np.array([0, 1])),
                            r"group '6': 'label' has shape \[2\]; expected \[1\]"),
    "no embeddings": (_edit("5", "images", None),
                      r"group '5' has neither 'images' nor 'embeddings'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_source_is_refused_naming_the_group_and_nothing_is_written(tmp_path, milpf_files,
                                                                         case):
    h5, bags = milpf_files
    edit, message = BAD[case]
    edit(h5)
    with pytest.raises(ValueError, match=message):
        import_features(ImportConfig(format="milpf-h5", h5=str(h5), bags=str(bags),
                                     encoder_name="x", out=str(tmp_path / "bad.zarr")))
    assert sorted(os.listdir(tmp_path)) == ["bags.csv", "embeddings.hdf5"]


def test_a_killed_import_leaves_nothing_at_the_path(tmp_path, milpf_files, monkeypatch):
    h5, bags = milpf_files
    calls = []

    def fail_on_second_chunk(self, start, tiles, views):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, start, tiles, views)

    original = Store.write_bags
    monkeypatch.setattr(Store, "write_bags", fail_on_second_chunk)
    cfg = ImportConfig(format="milpf-h5", h5=str(h5), bags=str(bags), encoder_name="x",
                       out=str(tmp_path / "k.zarr"), chunk_bags=64)
    with pytest.raises(KeyboardInterrupt):
        import_features(cfg)
    assert calls == [0, 64]
    assert sorted(os.listdir(tmp_path)) == ["bags.csv", "embeddings.hdf5"]
    monkeypatch.setattr(Store, "write_bags", original)
    assert import_features(cfg).found is False and Store.open(tmp_path / "k.zarr").status().all()


@pytest.mark.parametrize("args, flags", [
    (["--format", "milpf-h5", "--h5", "e.hdf5"], ["--bags"]),
    (["--format", "h5-per-image", "--manifest", "m.csv", "--h5-dir", "d", "--bags", "b.csv"],
     ["--bags"]),
    (["--format", "milpf-h5", "--h5", "e.hdf5", "--bags", "b.csv", "--patch-size", "224"],
     ["--patch-size"]),
])
def test_usage_errors_name_the_flag(tmp_path, capsys, args, flags):
    with pytest.raises(SystemExit) as exit_:
        run_import(*args, "--encoder-name", "x", "--out", tmp_path / "o.zarr")
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(f in last for f in flags), last
    assert not (tmp_path / "o.zarr").exists()
