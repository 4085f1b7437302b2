"""Head checkpoints: round trips, provenance, crash safety under SIGKILL, clear refusals."""

import datetime
import inspect
import json
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers.checkpoints import (
    SAVER,
    TMP_MARK,
    assert_same_params,
    seeded_params,
    wait_for_unfinished_save,
)
from milpf_jax.learning.checkpoint import load_head, read_metadata, save_head
from milpf_jax.learning.head import HeadConfig, init_params
from milpf_jax.learning.inference import Bag, Head, predict


def random_bags(dim, seed=0):
    rng = np.random.default_rng(seed)
    views = rng.standard_normal((3, 2, dim)).astype(np.float32)
    tiles = rng.standard_normal((3, 5, dim)).astype(np.float32)
    views_mask = np.array([[True, True], [True, False], [True, True]])
    tiles_mask = np.array([[True] * 5, [True, True, False, False, False], [False] * 5])
    return Bag(views, views_mask, tiles, tiles_mask)


def step_dirs(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(
    "cfg",
    [
        HeadConfig(dim=32),
        HeadConfig(dim=32, global_pool="mean", local_pool="max"),
        HeadConfig(dim=24, global_pool="attn", local_pool="none", hidden=12, proj=4),
    ],
)
def test_round_trip_gives_identical_params_and_predictions(tmp_path, cfg):
    head = Head(params=init_params(jax.random.key(7), cfg), config=cfg)
    step_dir = save_head(tmp_path / "ckpt", head)
    loaded = load_head(tmp_path / "ckpt")
    assert loaded.config == cfg
    assert_same_params(loaded.params, head.params)
    bags = random_bags(cfg.dim)
    expected = np.asarray(predict(head, bags))
    assert expected.std() > 0  # distinct bags, distinct probabilities
    np.testing.assert_array_equal(np.asarray(predict(loaded, bags)), expected)
    # The step folder that save_head returns is accepted too.
    assert step_dir == tmp_path / "ckpt" / "0"
    assert_same_params(load_head(step_dir).params, head.params)
    with pytest.raises(ValueError, match="it is one step of a checkpoint"):
        save_head(step_dir, head)


def test_metadata_round_trip_with_provenance(tmp_path):
    cfg = HeadConfig(dim=16)
    head = Head(seeded_params(cfg, 0), cfg)
    metadata = {
        "store": {"encoder": "efficientnet-lite0", "D": np.int64(16), "tile_size": 224},
        "seed": np.int32(3),
        "lr": 2e-3,
        "weight_decay": np.float32(1e-4),
        "val_auc": np.float64(0.8125),
        "best_epoch": 41,
        "epochs_run": jax.numpy.asarray(61),
        "splits": ["train", "val"],
        "early_stopped": True,
    }
    save_head(tmp_path, head, metadata)
    got = read_metadata(tmp_path)
    assert got["store"] == {"encoder": "efficientnet-lite0", "D": 16, "tile_size": 224}
    assert got["seed"] == 3 and isinstance(got["seed"], int)
    assert got["lr"] == 2e-3 and got["best_epoch"] == 41 and got["epochs_run"] == 61
    assert got["weight_decay"] == pytest.approx(1e-4, rel=1e-6)
    assert got["val_auc"] == 0.8125
    assert got["splits"] == ["train", "val"] and got["early_stopped"] is True
    import milpf_jax

    assert got["package_version"] == milpf_jax.__version__
    created = datetime.datetime.fromisoformat(got["created"])
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
    # Values given by the caller win over the automatic ones.
    save_head(tmp_path, head, {"created": "2024-01-01T00:00:00+00:00"})
    assert read_metadata(tmp_path)["created"] == "2024-01-01T00:00:00+00:00"


def test_non_json_metadata_is_refused_before_anything_is_written(tmp_path):
    cfg = HeadConfig(dim=16)
    with pytest.raises(ValueError, match=r"metadata\['store'\]\['opened'\] is a object"):
        save_head(tmp_path / "c", Head(seeded_params(cfg, 0), cfg), {"store": {"opened": object()}})
    assert not (tmp_path / "c").exists()


def test_new_saves_are_new_steps_and_two_are_kept(tmp_path):
    cfg = HeadConfig(dim=16)
    heads = [Head(seeded_params(cfg, s), cfg) for s in range(3)]
    for s, head in enumerate(heads[:2]):
        save_head(tmp_path, head, {"seed": s})
    assert step_dirs(tmp_path) == ["0", "1"]
    assert_same_params(load_head(tmp_path).params, heads[1].params)
    assert_same_params(load_head(tmp_path, step=0).params, heads[0].params)
    assert read_metadata(tmp_path, step=0)["seed"] == 0
    save_head(tmp_path, heads[2], {"seed": 2})
    assert step_dirs(tmp_path) == ["1", "2"]
    assert_same_params(load_head(tmp_path).params, heads[2].params)
    with pytest.raises(FileNotFoundError, match=r"no complete step 0 .*complete steps: \[1, 2\]"):
        load_head(tmp_path, step=0)


def test_params_that_do_not_match_the_config_are_refused(tmp_path):
    cfg = HeadConfig(dim=16)
    stacked = jax.tree_util.tree_map(lambda a: np.stack([a, a]), seeded_params(cfg, 0))
    with pytest.raises(ValueError, match=r"global_proj/0/kernel: shape \(2, 16, 16\), expected"):
        save_head(tmp_path / "c", Head(stacked, cfg))
    with pytest.raises(ValueError, match="missing local_attn/latent"):
        save_head(tmp_path / "c", Head(seeded_params(cfg.replace(local_pool="max"), 0), cfg))


def test_missing_empty_and_foreign_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent: the directory does not exist"):
        load_head(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in .*empty"):
        load_head(tmp_path / "empty")
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no numbered step folders \(found \['images'"):
        read_metadata(other)
    (other / "3").mkdir()
    (other / "3" / "log.txt").write_text("x")
    with pytest.raises(ValueError, match=r"other/3 is not a MIL-PF head checkpoint"):
        load_head(other)
    (tmp_path / "file.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="is a file"):
        load_head(tmp_path / "file.bin")


def test_checkpoint_of_something_else_is_refused_and_not_overwritten(tmp_path):
    import orbax.checkpoint as ocp

    foreign = tmp_path / "foreign"
    with ocp.CheckpointManager(
        foreign,
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    ) as mngr:
        mngr.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.ones(3)})))
    with pytest.raises(ValueError, match=r"foreign/5 is not a MIL-PF head checkpoint.*'state'"):
        load_head(foreign)
    cfg = HeadConfig(dim=16)
    with pytest.raises(ValueError, match="not a MIL-PF head checkpoint"):
        save_head(foreign, Head(seeded_params(cfg, 0), cfg))
    assert step_dirs(foreign) == ["5"]
    # A JSON item of another format is refused as well.
    with ocp.CheckpointManager(
        tmp_path / "json",
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        item_handlers={"head": ocp.JsonCheckpointHandler()},
    ) as mngr:
        mngr.save(0, args=ocp.args.Composite(head=ocp.args.JsonSave({"format": "something"})))
    with pytest.raises(ValueError, match="has format 'something', expected 'milpf_jax.head'"):
        load_head(tmp_path / "json")


def test_only_an_interrupted_save_is_reported_as_such(tmp_path):
    (tmp_path / f"0{TMP_MARK}-1700000000").mkdir()
    with pytest.raises(FileNotFoundError, match="a save was interrupted"):
        load_head(tmp_path)


def largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_truncated_files_give_a_clear_error(tmp_path):
    cfg = HeadConfig(dim=64)
    save_head(tmp_path, Head(seeded_params(cfg, 0), cfg))
    save_head(tmp_path, Head(seeded_params(cfg, 1), cfg))
    data = largest_file(tmp_path / "1" / "params")
    assert data.stat().st_size > 64 * 16 * 4  # the first layer's kernel lives here
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"1/params is unreadable.*step=0"):
        load_head(tmp_path)
    assert_same_params(load_head(tmp_path, step=0).params, seeded_params(cfg, 0))

    meta = tmp_path / "0" / "head" / "metadata"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"0/head is unreadable \(truncated or corrupt\?\)"):
        read_metadata(tmp_path, step=0)


def test_config_that_disagrees_with_stored_params_is_refused(tmp_path):
    cfg = HeadConfig(dim=16)
    save_head(tmp_path, Head(seeded_params(cfg, 0), cfg))
    meta = tmp_path / "0" / "head" / "metadata"
    item = json.loads(meta.read_text())
    item["config"]["dim"] = 20
    meta.write_text(json.dumps(item))
    with pytest.raises(ValueError, match=r"0/head does not match the checksum saved with it"):
        load_head(tmp_path)
    del item["sha256"]  # as written before checksums were added: the other checks still hold
    meta.write_text(json.dumps(item))
    with pytest.raises(ValueError, match=r"global_proj/0/kernel: shape \(16, 16\), expected \(20"):
        load_head(tmp_path)
    item["config"]["tiles_per_view"] = 4
    meta.write_text(json.dumps(item))
    with pytest.raises(ValueError, match=r"fields \['tiles_per_view'\] that this milpf_jax"):
        load_head(tmp_path)


def test_a_save_killed_half_way_leaves_the_last_good_checkpoint(tmp_path):
    """SIGKILL a process that saves a large head (D=100000, 12.8 MB) in a loop, several times.

    Each kill comes a random delay after a save has started: short delays land mid-write,
    longer ones also hit the rename and the deletion of the old step. After each kill, the
    latest complete step must load, be one that was saved in full, and not be older than the
    last save the process reported as done.
    """
    dim, directory = 100_000, tmp_path / "ckpt"
    code = SAVER.format(helper=inspect.getsource(seeded_params))
    rng = np.random.default_rng(0)
    next_seed, mid_write_kills = 0, 0
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(directory), str(dim), str(next_seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            first = proc.stdout.readline()  # one full save done; the next one follows
            assert first.strip(), f"the saver exited early with code {proc.wait()}"
            wait_for_unfinished_save(directory)
            time.sleep(rng.uniform(0.0, 0.05 if attempt % 2 == 0 else 0.4))
        finally:
            proc.kill()
            proc.wait()
        done = [int(line) for line in [first, *proc.stdout.read().split()] if line.strip()]
        proc.stdout.close()
        mid_write_kills += any(TMP_MARK in p.name for p in directory.iterdir())

        seed = read_metadata(directory)["seed"]
        assert done[-1] <= seed <= done[-1] + 1  # every reported save survives the kill
        cfg = HeadConfig(dim=dim)
        assert_same_params(load_head(directory).params, seeded_params(cfg, seed))
        next_seed = done[-1] + 2  # fresh seeds, so a mix-up between steps would show
    # The kills must really have landed during writes for this test to mean anything.
    assert mid_write_kills >= 2
