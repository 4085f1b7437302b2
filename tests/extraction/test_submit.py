"""Tests for milpf_jax.extraction.submit: shards as a submitit job array, retries, the CLI.

Jobs run through submitit's local executor (the same code path as SLURM: pickled callables,
one process per job, logs in the job folder) with the coupled stand-in encoder, whose rows
depend on their batch, so a store built by several jobs equals a single worker's only if every
batch is the same. The SLURM executor itself needs a cluster; its sbatch text is checked here
from the parameters we give it.
"""

from __future__ import annotations

import functools
import logging
import os

import pytest

from helpers import cluster
from helpers.repo import REPO, load_script
from helpers.standin import assert_same_store, read_arrays
from helpers.standin import extract_cfg as cfg
from milpf_jax.data.store import DONE, Store
from milpf_jax.extraction import submit
from milpf_jax.extraction.extract import extract
from milpf_jax.extraction.submit import SubmitConfig, executor_parameters, submit_extraction

PHANTOM = "phantom:n_patients=3,rows=256,cols=208,pixel_spacing_mm=0.8"  # its first 6 bags


@pytest.fixture
def jobs_env(tmp_path, monkeypatch):
    """A private cache the jobs share, tests/ importable in the jobs, the stand-in job."""
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(submit, "ExtractShard", cluster.StandinShard)
    return tmp_path


def reference(tmp_path, chunk_bags=2):
    """A single worker's store, in this process, with the same coupled stand-in."""
    out = tmp_path / "one.zarr"
    extract(PHANTOM, cfg(chunk_bags=chunk_bags), out, progress=False)
    return read_arrays(out)


def job_logs(folder) -> str:
    """The tail of every job's stderr, for a failure message."""
    return "\n".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-6:])
                     for p in sorted(folder.glob("*_log.err")))


def test_submit_local_three_jobs_equal_one_worker(jobs_env, coupled, capsys, caplog):
    one = reference(jobs_env)
    out = jobs_env / "three.zarr"
    cli = load_script("extract")
    argv = ["--cohort", PHANTOM, "--encoder", "standin-proj", "--out", str(out),
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--chunk-bags", "2",
            "--submit", "local", "--jobs", "3", "--quiet"]
    with caplog.at_level(logging.WARNING, logger="milpf_jax.extraction.submit"):
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "bags      6: 6 done, 0 failed, 0 pending" in printed
    assert f"3 shard(s) run, 3 job(s) in all; logs in {jobs_env}/three.submitit" in printed, \
        caplog.text + job_logs(jobs_env / "three.submitit")
    store = Store.open(out)
    assert [store.shard_range(i, 3) for i in range(3)] == [range(0, 2), range(2, 4), range(4, 6)]
    assert_same_store(one, read_arrays(out))
    logs = list((jobs_env / "three.submitit").glob("*_log.err"))
    assert len(logs) == 3  # one job each
    # Run again: the store is complete, nothing is submitted.
    assert cli.main(argv) == 0
    assert "0 shard(s) run, 0 job(s) in all" in capsys.readouterr().out


def test_a_job_killed_mid_shard_is_submitted_again_and_completes(jobs_env, coupled, monkeypatch,
                                                                  caplog):
    one = reference(jobs_env)
    # Shard 1's first attempt SIGKILLs itself at its 3rd encoder batch, bags half written.
    monkeypatch.setattr(submit, "ExtractShard",
                        functools.partial(cluster.StandinShard, kill=(1, 0, 3)))
    out = jobs_env / "s.zarr"
    sub = SubmitConfig(submit="local", jobs=3, retries=1, gpus_per_job=0)
    with caplog.at_level(logging.WARNING, logger="milpf_jax.extraction.submit"):
        result = submit_extraction(PHANTOM, cfg(chunk_bags=2), out, sub, progress=False)
    assert result.complete and (result.done, result.failed) == (6, 0)
    assert result.attempts == {0: 1, 1: 2, 2: 1} and result.gave_up == {}
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("shard 1/3: ended without a result") and "retry 1 of 1" in warning
    assert_same_store(one, read_arrays(out))


def test_a_shard_out_of_retries_is_named_with_its_log(jobs_env, coupled, monkeypatch):
    monkeypatch.setattr(submit, "ExtractShard",
                        functools.partial(cluster.StandinShard, kill=(2, 0, 1)))
    out = jobs_env / "s.zarr"
    sub = SubmitConfig(submit="local", jobs=3, retries=0, gpus_per_job=0)
    result = submit_extraction(PHANTOM, cfg(chunk_bags=2), out, sub, progress=False)
    assert not result.complete and result.pending == 2 and result.done == 4
    assert list(result.gave_up) == [2] and "_log.err" in result.gave_up[2]
    status = Store.open(out).status()
    assert (status[:4] == DONE).all()


def test_submit_flags_are_checked_before_anything_runs(tmp_path, capsys):
    cli = load_script("extract")
    for argv, message in [
        (["--submit", "local", "--shard", "0/2"], "give it without --shard"),
        (["--jobs", "3"], "--jobs: needs --submit"),
        (["--submit", "slurm", "--time", "90"], "--time: '90'; expected H:MM"),
        (["--submit", "slurm", "--jobs", "0"], "--jobs: 0; expected >= 1"),
    ]:
        with pytest.raises(SystemExit) as usage:
            cli.main(["--cohort", str(tmp_path / "none.csv"), *argv])
        assert usage.value.code == 2 and message in capsys.readouterr().err


def test_slurm_job_text_carries_the_resources(standin):
    from submitit.slurm.slurm import _make_sbatch_string

    sub = SubmitConfig(submit="slurm", jobs=16, partition="gpu", gpus_per_job=1, time="1:30",
                       mem="64G")
    params = executor_parameters(sub, cfg(workers=6))
    assert params == dict(name="milpf-extract", timeout_min=90, gpus_per_node=1, cpus_per_task=7,
                          slurm_array_parallelism=16, slurm_partition="gpu", slurm_mem="64G")
    slurm = {k.removeprefix("slurm_"): v for k, v in params.items()
             if k not in ("name", "timeout_min", "slurm_array_parallelism")}
    text = _make_sbatch_string(command="python -m x", folder="/jobs", job_name="milpf-extract",
                               time=90, **slurm, map_count=16, array_parallelism=16)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --mem=64G",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=7",
                 "#SBATCH --array=0-15%16"):
        assert line in text
