"""Atomic writes (milpf_jax.files) and the cache root (milpf_jax.paths): one rule each."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from milpf_jax.files import atomic_open, write_csv, write_json, write_text
from milpf_jax.paths import cache_root, cohorts_dir, default_run_dir, run_stamp, stores_dir


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"auc": np.float32(0.5), "runs": np.arange(3)})
    assert json.loads(target.read_text()) == {"auc": 0.5, "runs": [0, 1, 2]}
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half a fi")
        raise RuntimeError("killed")
    assert json.loads(target.read_text())["auc"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_csv_and_text_are_written_whole(tmp_path):
    write_csv(tmp_path / "p.csv", ["bag_id", "p"], [["A/1/L", "0.25"], ["A/1/R", "0.75"]])
    assert (tmp_path / "p.csv").read_text() == "bag_id,p\nA/1/L,0.25\nA/1/R,0.75\n"
    write_text(tmp_path / "r.md", "# x\n")
    assert (tmp_path / "r.md").read_text() == "# x\n"


def test_the_cache_root_is_one_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" and stores_dir() == tmp_path / "c" / "stores"
    assert cohorts_dir(tmp_path / "other") == tmp_path / "other" / "cohorts"
    # Set but empty means unset (it used to send the sweep and extraction to two places).
    monkeypatch.setenv("MILPF_CACHE", "")
    assert cache_root() == Path.home() / ".cache" / "milpf-jax"
    monkeypatch.delenv("MILPF_CACHE")
    assert stores_dir() == Path.home() / ".cache" / "milpf-jax" / "stores"


def test_run_folders_are_stamped_in_utc():
    assert run_stamp(0) == "19700101T000000Z"
    name = default_run_dir("phantom", "efficientnet-lite0")
    assert name.parent == Path("runs") and name.name.startswith("phantom-efficientnet-lite0-")
    assert name.name.endswith("Z") and not os.path.isabs(name)
