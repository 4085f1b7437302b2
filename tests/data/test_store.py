import numpy as np
import pytest

from helpers.plans import embeddings_for, make_plans
from milpf_jax.data.packed import load_packed
from milpf_jax.data.store import DONE, FAILED, PENDING, Store, StoreMismatch

ATTRS = dict(label_kind="birads", encoder="tiny", model_id="t/tiny", cohort="c",
             preprocessing=dict(tile_size=224, overlap=0.0, tissue_threshold=0.05))


def filled_store(path, plans, dim=6, skip=()):
    store = Store.create(path, plans, dim=dim, attrs=ATTRS, chunk_bags=4)
    for i, p in enumerate(plans):
        if i not in skip:
            store.write_bag(i, *embeddings_for(p, dim, seed=i))
    return store


def test_round_trip_packs_real_tiles_in_bag_order(tmp_path, plans):
    filled_store(tmp_path / "s.zarr", plans)
    store = Store.open(tmp_path / "s.zarr", expect=ATTRS)
    assert store.n_bags == 10 and store.dim == 6
    assert (store.status() == DONE).all()
    packed = load_packed(store, split_seed=0)
    # BI-RADS 2 bags (every third) are excluded by the default mapping, and counted.
    kept = [i for i, p in enumerate(plans) if p.raw_label != "2"]
    assert packed.store_index.tolist() == kept
    assert packed.info["excluded"] == {"2": 3}
    assert packed.labels.tolist() == [int(plans[i].raw_label == "4") for i in kept]
    row = 0
    for b, i in enumerate(kept):
        g, t = embeddings_for(plans[i], 6, seed=i)
        np.testing.assert_array_equal(packed.views[b], g.astype(np.float16).astype(np.float32))
        sel = packed.tile_bag == b
        assert sel.sum() == plans[i].n_tiles
        np.testing.assert_array_equal(packed.tiles[sel], t.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(packed.tile_boxes[sel], plans[i].tile_boxes[:, 1:])
        np.testing.assert_array_equal(packed.tile_view[sel], plans[i].tile_boxes[:, 0])
        row += sel.sum()
    assert row == len(packed.tiles)
    assert np.all(np.diff(packed.tile_bag) >= 0)
    one = store.read_bag(1)
    assert one["bag_id"] == "B001" and one["tile_emb"].shape == (5, 6)
    assert one["view_name"] == ["CC", "MLO"] and one["view_flipped"].tolist() == [True, True]


def test_unfinished_bags_are_refused_or_skipped_never_zeros(tmp_path, plans):
    store = filled_store(tmp_path / "s.zarr", plans, skip=(1, 4))
    store.mark_failed(4)
    assert store.status()[[1, 4]].tolist() == [PENDING, FAILED]
    with pytest.raises(ValueError, match=r"2 of 10 bags are not done \(1 pending, 1 failed"):
        load_packed(store)
    packed = load_packed(store, allow_partial=True)
    assert packed.info["skipped"] == 2
    assert 1 not in packed.store_index and 4 not in packed.store_index
    # The split of a bag does not depend on which other bags are done.
    full = filled_store(tmp_path / "full.zarr", plans)
    both = load_packed(full)
    common = np.isin(both.store_index, packed.store_index)
    assert np.array_equal(both.splits[common], packed.splits)


def test_reopening_with_other_settings_names_each_difference(tmp_path, plans):
    filled_store(tmp_path / "s.zarr", plans)
    other = dict(ATTRS, encoder="dinov2-giant",
                 preprocessing=dict(ATTRS["preprocessing"], tile_size=518))
    with pytest.raises(StoreMismatch) as err:
        Store.open(tmp_path / "s.zarr", expect=other)
    msg = str(err.value)
    assert "encoder: stored 'tiny', requested 'dinov2-giant'" in msg
    assert "preprocessing.tile_size: stored 224, requested 518" in msg
    assert "overlap" not in msg


def test_bad_embeddings_name_the_bag_and_write_nothing(tmp_path, plans):
    store = Store.create(tmp_path / "s.zarr", plans, dim=6, attrs=ATTRS, chunk_bags=4)
    g, t = embeddings_for(plans[1], 6, seed=0)
    t[2, 3] = np.nan
    with pytest.raises(ValueError, match="bag B001: tile embeddings hold NaN"):
        store.write_bag(1, g, t)
    with pytest.raises(ValueError, match=r"bag B001: global embeddings have shape \(1, 6\)"):
        store.write_bag(1, g[:1], t)
    with pytest.raises(ValueError, match="overflow float16"):
        store.write_bag(1, g * 1e6, np.zeros_like(t))
    assert store.status()[1] == PENDING


def test_shards_are_whole_disjoint_chunks(tmp_path):
    store = Store.create(tmp_path / "s.zarr", make_plans(n_bags=23), dim=4, attrs=ATTRS,
                         chunk_bags=4)
    ranges = [store.shard_range(i, 3) for i in range(3)]
    covered = [b for r in ranges for b in r]
    assert covered == list(range(23))
    assert all(r.start % 4 == 0 for r in ranges)
    with pytest.raises(ValueError):
        store.shard_range(3, 3)


def test_not_a_store_and_unfinished_plan(tmp_path, plans):
    with pytest.raises(FileNotFoundError, match="no embeddings store"):
        Store.open(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(ValueError, match="not a milpf-jax embeddings store"):
        Store.open(tmp_path / "foreign.zarr")
    filled_store(tmp_path / "s.zarr", plans)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g.attrs["planned"] = False
    with pytest.raises(ValueError, match="plan pass did not finish"):
        Store.open(tmp_path / "s.zarr")


def test_subset_reindexes_tiles(tmp_path, plans):
    filled_store(tmp_path / "s.zarr", plans)
    packed = load_packed(tmp_path / "s.zarr", mapping="birads")
    sub = packed.subset(np.array([1, 3]))
    assert sub.n_bags == 2
    assert sub.tiles_per_bag().tolist() == packed.tiles_per_bag()[[1, 3]].tolist()
    np.testing.assert_array_equal(sub.tiles, packed.tiles[np.isin(packed.tile_bag, [1, 3])])


def test_a_store_of_several_tasks_loads_the_one_asked_for(tmp_path, plans):
    import dataclasses

    tasks = [["birads", "birads"], ["mass", "binary"]]
    mass = ["1" if i % 4 == 1 else "0" if i % 4 != 3 else "" for i in range(len(plans))]
    plans = [dataclasses.replace(p, task_labels=(p.raw_label, m)) for p, m in zip(plans, mass)]
    attrs = dict(ATTRS, tasks=tasks)
    store = Store.create(tmp_path / "s.zarr", plans, dim=6, attrs=attrs, chunk_bags=4)
    for i, p in enumerate(plans):
        store.write_bag(i, *embeddings_for(p, 6, seed=i))
    store = Store.open(tmp_path / "s.zarr")
    assert store.tasks() == [("birads", "birads"), ("mass", "binary")]
    default = load_packed(store)
    assert default.info["task"] == "birads" and default.info["mapping"] == "birads"
    assert default.info["excluded"] == {"2": 3}
    by_mass = load_packed(store, task="mass")
    assert by_mass.info["task"] == "mass" and by_mass.info["mapping"] == "binary"
    kept = [i for i, m in enumerate(mass) if m]
    assert by_mass.store_index.tolist() == kept
    assert by_mass.labels.tolist() == [int(mass[i]) for i in kept]
    assert by_mass.info["excluded"] == {"": mass.count("")}  # the task leaves them out
    with pytest.raises(ValueError, match=r"no task 'cancer'; it holds birads, mass \(choose one "
                                         r"with --task\)"):
        load_packed(store, task="cancer")
    # a one-task store's task is named by its label kind
    single = filled_store(tmp_path / "one.zarr", make_plans())
    assert single.tasks() == [("birads", "birads")]
    assert load_packed(single, task="birads").info["task"] == "birads"
    with pytest.raises(ValueError, match="one raw label per task"):
        Store.create(tmp_path / "bad.zarr", make_plans(), dim=6, attrs=attrs)


def test_from_arrays_writes_what_write_bag_writes_a_chunk_at_a_time(tmp_path, plans):
    embs = [embeddings_for(p, 8, seed=i) for i, p in enumerate(plans)]
    one_by_one = Store.create(tmp_path / "a.zarr", plans, dim=8, attrs=dict(label_kind="birads"),
                              chunk_bags=4)
    for b, (views, tiles) in enumerate(embs):
        one_by_one.write_bag(b, views, tiles)
    at_once = Store.from_arrays(tmp_path / "b.zarr", plans, [t for _, t in embs],
                                [v for v, _ in embs], attrs=dict(label_kind="birads"),
                                chunk_bags=4)
    assert at_once.attrs["view_embeddings"] is True and at_once.dim == 8
    for name in ("global", "tiles", "status", "tile_boxes", "bag_id"):
        np.testing.assert_array_equal(at_once.array(name), one_by_one.array(name), name)
    no_views = Store.from_arrays(tmp_path / "c.zarr", plans, [t for _, t in embs], None,
                                 attrs=dict(label_kind="birads"))
    assert no_views.attrs["view_embeddings"] is False and not no_views.array("global").any()
    np.testing.assert_array_equal(no_views.array("tiles"), one_by_one.array("tiles"))


def test_from_arrays_refuses_mixed_dimensions_and_bad_bags(tmp_path, plans):
    embs = [embeddings_for(p, 8, seed=i) for i, p in enumerate(plans)]
    tiles = [t for _, t in embs]
    views = [v for v, _ in embs]
    with pytest.raises(ValueError, match=r"dimensions \[6, 8\]"):
        Store.from_arrays(tmp_path / "d.zarr", plans, tiles, [*views[:-1], views[-1][:, :6]],
                          attrs=dict(label_kind="birads"))
    tiles[4] = tiles[4].copy()
    tiles[4][0, 0] = np.nan
    with pytest.raises(ValueError, match="bag B004: tile embeddings hold NaN"):
        Store.from_arrays(tmp_path / "e.zarr", plans, tiles, views,
                          attrs=dict(label_kind="birads"))
