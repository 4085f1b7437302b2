"""Stores on object storage: extraction with shards, resume after SIGKILL, loading, the cache.

Against a real S3 API served on 127.0.0.1 by moto's server mode inside this process, with s3fs
as the client (credentials and endpoint from the environment, as a user's would be, or as
storage_options); nothing of our own is mocked, and nothing reaches AWS (helpers.s3).
"""

from __future__ import annotations

import signal
import time
import uuid

import numpy as np
import pytest

from helpers import s3
from helpers.standin import assert_same_store, read_arrays
from helpers.standin import extract_cfg as cfg
from helpers.workers import start_worker
from milpf_jax.data.cache import cache_key, local_copy
from milpf_jax.data.packed import load_packed
from milpf_jax.data.store import DONE, FAILED, PENDING, Store
from milpf_jax.extraction.extract import extract
from milpf_jax.extraction.failures import append_failures, failures_path, read_failures
from milpf_jax.paths import stores_dir
from milpf_jax.reading.sources import read_cohort
from milpf_jax.synthetic.embeddings import SyntheticConfig, write_synthetic_store

PHANTOM = "phantom:n_patients=3,rows=256,cols=208,pixel_spacing_mm=0.8"  # 6 bags


@pytest.fixture(scope="module")
def endpoint():
    with s3.s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch, tmp_path):
    """A fresh bucket; the environment points s3fs (and subprocesses) at the local server."""
    for key, value in s3.s3_env(endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path / "cache"))
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(name)
    return name


def test_two_shards_on_s3_killed_and_resumed_equal_a_local_store(bucket, tmp_path, coupled):
    read_cohort(PHANTOM, progress=False)  # the phantom's files, made once for every worker
    local = tmp_path / "local.zarr"
    extract(PHANTOM, cfg(chunk_bags=2), local, progress=False)  # uninterrupted, one worker
    url = f"s3://{bucket}/stores/phantom.zarr"
    # Both shards at once; shard 1 (bags 2-5) SIGKILLs itself at its 60th encoder batch.
    logs = [tmp_path / f"shard{i}.log" for i in (0, 1)]
    workers = [start_worker({"cohort": PHANTOM, "out": url, "shard": [i, 2],
                             "kill_at_call": 60 if i == 1 else None}, log)
               for i, log in zip((1, 0), logs[::-1])]
    for worker in workers:
        worker.wait(timeout=120)
    assert workers[0].returncode == -signal.SIGKILL, logs[1].read_text()
    assert workers[1].returncode == 0, logs[0].read_text()
    status = Store.open(url).status()
    assert (status[:2] == DONE).all()  # shard 0 finished
    assert (status[2:] == DONE).any() and (status[2:] == PENDING).any()  # killed mid-shard
    result = extract(PHANTOM, cfg(chunk_bags=2), url, shard=(1, 2), progress=False)
    assert (result.done, result.pending, result.planned) == (6, 0, False)
    assert result.reencoded_rows > 0  # the batch the kill cut was rebuilt from done bags
    assert_same_store(read_arrays(local), read_arrays(url))
    assert Store.open(url).attrs == {**Store.open(local).attrs}


def test_failure_lists_beside_a_store_on_s3_are_per_shard_and_merged(bucket):
    url = f"s3://{bucket}/x.zarr"
    append_failures(failures_path(url, (1, 2)), [("B2", "b.dcm", "encode", "gone")])
    append_failures(failures_path(url, (0, 2)), [("B1", "a.dcm", "plan", "truncated")])
    append_failures(failures_path(url, (0, 2)), [("B0", "c.dcm", "plan", "not MG")])
    assert [r["bag_id"] for r in read_failures(url)] == ["B1", "B0", "B2"]
    import s3fs

    listed = s3fs.S3FileSystem(skip_instance_cache=True).ls(f"{bucket}/x.failures")
    assert sorted(p.rsplit("/", 1)[-1] for p in listed) == ["shard-0-of-2.csv", "shard-1-of-2.csv"]


def test_training_reads_a_local_copy_made_once(bucket, tmp_path, endpoint, monkeypatch):
    url = f"s3://{bucket}/synthetic.zarr"
    write_synthetic_store(url, SyntheticConfig(n_bags=40, dim=8, max_tiles=6))
    remote = Store.open(url)
    copy = local_copy(url)
    assert copy.parent == stores_dir() / "remote"
    assert copy.name == f"synthetic-{cache_key(remote.attrs, remote.status())}.zarr"
    made = copy.stat().st_mtime_ns
    assert local_copy(url) == copy and copy.stat().st_mtime_ns == made  # found, not copied
    direct, cached = load_packed(url, split_seed=3), load_packed(copy, split_seed=3)
    for name in ("tiles", "tile_bag", "views", "views_mask", "labels", "splits", "bag_ids"):
        np.testing.assert_array_equal(getattr(direct, name), getattr(cached, name), err_msg=name)
    # The store changes (a bag marked failed): its status, hence the key, differ: copied again.
    Store.open(url, mode="r+").mark_failed(0)
    again = local_copy(url)
    assert again != copy and Store.open(again).status()[0] == FAILED
    assert not list(copy.parent.glob(".*"))  # no temporary copy left behind
    # Credentials and endpoint as storage_options instead of the environment.
    for key in s3.s3_env(endpoint):
        monkeypatch.delenv(key)
    opened = Store.open(url, storage_options=s3.storage_options(endpoint))
    assert opened.n_bags == 40 and opened.status()[0] == FAILED
    with pytest.raises(ValueError, match="storage_options are for an fsspec URL"):
        Store.open(tmp_path / "x.zarr", storage_options={"key": "k"})


def test_a_store_still_being_written_is_not_copied(bucket, monkeypatch):
    url = f"s3://{bucket}/moving.zarr"
    write_synthetic_store(url, SyntheticConfig(n_bags=8, dim=8, max_tiles=4))
    real = Store.status
    calls = []

    def status_then_a_worker_writes(self):  # a worker marks a bag while the copy is made
        out = real(self)
        if not calls:
            calls.append(1)
            Store.open(url, mode="r+").mark_failed(3)
            time.sleep(0.01)
        return out

    monkeypatch.setattr(Store, "status", status_then_a_worker_writes)
    with pytest.raises(ValueError, match="changed while it was copied"):
        local_copy(url)
    assert not (stores_dir() / "remote").exists() or not list((stores_dir() / "remote").iterdir())


def test_no_cache_goes_with_a_store(capsys):
    from milpf_jax.cli import parse_sweep, sweep_parser

    with pytest.raises(SystemExit) as usage:
        parse_sweep(sweep_parser(), ["--cohort", "x.csv", "--no-cache"])
    assert usage.value.code == 2 and "--no-cache: goes with --store" in capsys.readouterr().err
    _, command, _, _ = parse_sweep(sweep_parser(), ["--store", "s3://b/x.zarr", "--no-cache"])
    assert command.no_cache and command.store == "s3://b/x.zarr"
