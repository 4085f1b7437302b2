"""Extraction as a job array through submitit: N shards on SLURM (or locally), with retries.

`submit_extraction` submits shards 0..N-1 of one store as one job array (`submitit`'s SLURM
executor; its local executor runs the same code path as processes on this machine, which is what
the tests use). Each job is `ExtractShard`: `extract(..., shard=(i, N))`, the same call a
worker started by hand makes, so the store's guarantees hold unchanged: shard 0 plans, the
others wait for its plan, each writes only its own whole chunks, `status` is written last.

While the jobs run, one progress bar shows the store's finished bags (done or failed, read from
the store's `status`, whichever job wrote them). A job that ends with its shard unfinished
(it raised, was killed, ran out of memory or time, its node failed) is submitted again, up to
`retries` times; the rerun resumes from the store. A job that SLURM pre-empts or times out is
requeued by submitit itself (`ExtractShard.checkpoint`) and resumes the same way. The call ends
when every job has ended, and says where the failures are: the store's failure lists
(`<store>.failures/`) and the log of every shard that gave up.

Example:
    sub = SubmitConfig(submit="slurm", jobs=16, partition="gpu", time="12:00", mem="64G")
    result = submit_extraction("data/embed.csv", ExtractConfig(encoder="medsiglip"),
                               "s3://bucket/embed.zarr", sub)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from milpf_jax.config import check, option
from milpf_jax.data.store import DONE, FAILED, PENDING, Store, existing_store, is_url
from milpf_jax.extraction import encoders
from milpf_jax.extraction.config import ExtractConfig
from milpf_jax.extraction.extract import cohort_identity, expected_attrs, extract
from milpf_jax.extraction.failures import failures_dir
from milpf_jax.progress import progress_bar
from milpf_jax.reading.cohort import Cohort
from milpf_jax.reading.sources import read_cohort

log = logging.getLogger(__name__)

_TIME = re.compile(r"(\d+):([0-5]\d)")


@dataclass(frozen=True)
class SubmitConfig:
    """How `experiments/extract.py --submit` runs its shards (`--workers` stays the number of
    reader processes inside each job)."""

    submit: Literal["slurm", "local"] | None = option(
        None, "run the shards as a job array through submitit: slurm, or local (processes on "
              "this machine, the same code path)")
    jobs: int = option(1, "shards, one job each (one SLURM job array)")
    partition: str | None = option(None, "SLURM partition; unset: the cluster's default")
    gpus_per_job: int = option(1, "GPUs per job")
    time: str = option("12:00", "time limit per job, H:MM")
    mem: str | None = option(None, "memory per job in SLURM's syntax, e.g. 64G; unset: the "
                                   "cluster's default")
    retries: int = option(2, "times a shard whose job ended unfinished is submitted again")
    log_dir: str | None = option(
        None, "submitit's job folder (pickles, logs; on a shared file system for SLURM); "
              "unset: <store>.submitit beside a local store, ./<name>.submitit for a URL")

    def __post_init__(self):
        check(self, int(self.jobs) >= 1, "jobs", f"{self.jobs!r}; expected >= 1")
        check(self, int(self.gpus_per_job) >= 0, "gpus_per_job",
              f"{self.gpus_per_job!r}; expected >= 0")
        check(self, int(self.retries) >= 0, "retries", f"{self.retries!r}; expected >= 0")
        check(self, _TIME.fullmatch(str(self.time)) is not None and timeout_min(self.time) > 0,
              "time", f"{self.time!r}; expected H:MM, e.g. 4:00")


def timeout_min(text: str) -> int:
    """'H:MM' -> minutes."""
    hours, minutes = _TIME.fullmatch(str(text)).groups()
    return int(hours) * 60 + int(minutes)


def log_folder(out, sub: SubmitConfig) -> Path:
    """submitit's folder: `--log-dir`, else `<store stem>.submitit` beside a local store, else
    `./<store name>.submitit` for a URL."""
    if sub.log_dir:
        return Path(sub.log_dir)
    stem = str(out).rstrip("/").removesuffix(".zarr")
    if is_url(stem):
        return Path(stem.rsplit("/", 1)[-1] + ".submitit")
    return Path(stem + ".submitit")


def executor_parameters(sub: SubmitConfig, cfg: ExtractConfig) -> dict:
    """submitit's parameters (AutoExecutor names; `slurm_` ones are ignored by the local one)."""
    params = dict(
        name="milpf-extract",
        timeout_min=timeout_min(sub.time),
        gpus_per_node=int(sub.gpus_per_job),
        cpus_per_task=int(cfg.workers) + 1,  # the readers and the encoding process
        slurm_array_parallelism=int(sub.jobs),
    )
    if sub.partition:
        params["slurm_partition"] = sub.partition
    if sub.mem:
        params["slurm_mem"] = sub.mem
    return params


@dataclass(frozen=True)
class ExtractShard:
    """One job: shard `shard` of the store at `out` (a picklable callable, submitit's unit).

    `attempt` counts resubmissions (0 first). `checkpoint` makes submitit requeue the job when
    SLURM pre-empts it or its time runs out; the requeued job resumes from the store.
    """

    cohort: str
    cfg: ExtractConfig
    out: str
    shard: tuple[int, int]
    attempt: int = 0
    cache_dir: str | None = None

    def __call__(self):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        return extract(self.cohort, self.cfg, self.out, shard=self.shard, progress=False,
                       cache_dir=self.cache_dir)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass(frozen=True)
class SubmitResult:
    """What `submit_extraction` saw: the store's bag counts at the end, attempts per shard, and
    the shards that gave up ({shard index: reason, log file})."""

    path: str
    failures: str
    log_dir: str
    n_bags: int
    done: int
    failed: int
    pending: int
    attempts: dict
    gave_up: dict

    @property
    def complete(self) -> bool:
        return self.n_bags > 0 and self.pending == 0


def _planned(out) -> Store | None:
    """The store once shard 0's plan is finished (checked against the settings before)."""
    try:
        return Store.open(out)
    except (FileNotFoundError, ValueError):  # not there yet, or its plan is being written
        return None


def _shard_bags(store, shard) -> range:
    return store.shard_range(*shard)


def _why(job) -> str:
    """How a job ended, for the log: its exception's last line, else its state."""
    if job.paths.result_pickle.exists():
        err = job.exception()
        if err is not None:
            lines = [x for x in str(err).splitlines() if x.strip() and not x.startswith("---")]
            tail = [x for x in lines if not x.startswith(("You can check", "or at paths", "  -"))]
            return tail[-1].strip() if tail else "raised"
    return f"ended without a result (state {job.state})"


def submit_extraction(
    cohort: str,
    cfg: ExtractConfig,
    out,
    sub: SubmitConfig,
    *,
    cohort_read: Cohort | None = None,
    cache_dir=None,
    progress: bool = True,
    poll_s: float | None = None,
) -> SubmitResult:
    """Run `sub.jobs` shards of the store at `out` as one submitit job array; see the module.

    Args:
      cohort: the cohort's spec (`read_cohort`), read again by every job.
      cfg: encoder, preprocessing and run settings of each job.
      out: the store (local folder on a shared file system, or an fsspec URL).
      sub: executor (slurm or local), jobs, resources, retries.
      cohort_read: the cohort already read from `cohort` (else it is read here).
      poll_s: seconds between looks at the jobs and the store (default 0.5 local, 10 SLURM:
        submitit asks SLURM's accounting at most once a minute anyway).
    Returns:
      SubmitResult; `complete` is False when a shard gave up (named in `gave_up` with its log).
    Raises:
      StoreMismatch: a store at `out` was made otherwise; checked before anything is submitted.
    """
    # submitit configures logging when first imported (logging.config.dictConfig), which shuts
    # down every handler already installed, absl's among them (orbax brings it), closing the
    # stream that handler writes to; unless the user chose otherwise, leave logging to us.
    os.environ.setdefault("SUBMITIT_LOG_LEVEL", "NOCONFIG")
    try:
        import submitit
    except ImportError as err:
        raise ValueError("--submit runs jobs through submitit, which is not installed: "
                         "install the slurm extra (pip install -e '.[slurm]')") from err

    poll_s = poll_s if poll_s is not None else (0.5 if sub.submit == "local" else 10.0)
    if sub.submit is None:
        raise ValueError("submit_extraction needs SubmitConfig.submit: slurm or local")
    out = str(out)
    if not is_url(out):
        out = str(Path(out).absolute())  # jobs may start elsewhere
    parsed = cohort_read or read_cohort(cohort, cache_dir=cache_dir, progress=False)
    expect = expected_attrs(parsed, cfg, encoders.ENCODERS[cfg.encoder])
    cohort_id = cohort_identity(parsed)
    store = existing_store(out, expect, cohort_id)  # a store made otherwise is refused now
    folder = log_folder(out, sub)
    executor = submitit.AutoExecutor(folder=folder, cluster=sub.submit)
    executor.update_parameters(**executor_parameters(sub, cfg))
    n = int(sub.jobs)
    cache = None if cache_dir is None else str(cache_dir)
    shards = {i: ExtractShard(cohort, cfg, out, (i, n), 0, cache) for i in range(n)}
    if store is not None:  # resume: submit only the shards with pending bags
        status = store.status()
        shards = {i: s for i, s in shards.items()
                  if np.any(status[_shard_bags(store, s.shard)] == PENDING)}
    jobs = executor.submit_array(list(shards.values())) if shards else []
    running = dict(zip(shards, jobs, strict=True))
    log.info("submitted %d job(s) of %s to %s (logs in %s)", len(running), out, sub.submit,
             folder)
    attempts = {i: 1 for i in running}
    gave_up: dict[int, str] = {}
    bar = progress_bar(total=None, desc="bags", unit="bag", disable=not progress)
    try:
        while running:
            time.sleep(poll_s)
            store = store or _planned(out)
            if store is not None:
                status = store.status()
                if bar.total is None:
                    bar.reset(total=len(status))
                bar.n = int(np.sum(status != PENDING))
                bar.refresh()
            for i, job in list(running.items()):
                if not job.done():
                    continue
                del running[i]
                shard = shards[i]
                store = store or _planned(out)  # planned since the look above, perhaps
                finished = store is not None and not np.any(
                    store.status()[_shard_bags(store, shard.shard)] == PENDING)
                if finished:
                    continue
                why = _why(job)
                if attempts[i] <= sub.retries:
                    log.warning("shard %d/%d: %s; submitting it again (retry %d of %d)", i, n,
                                why, attempts[i], sub.retries)
                    shards[i] = dataclasses.replace(shard, attempt=attempts[i])
                    running[i] = executor.submit(shards[i])
                    attempts[i] += 1
                else:
                    gave_up[i] = f"{why}; log {job.paths.stderr}"
                    log.error("shard %d/%d gave up after %d attempt(s): %s", i, n, attempts[i],
                              gave_up[i])
            if 0 in gave_up and store is None:  # no plan will come: the others wait in vain
                for job in running.values():
                    job.cancel(check=False)
                for i, job in running.items():
                    gave_up[i] = ("cancelled: shard 0 gave up before planning; log "
                                  f"{job.paths.stderr}")
                running = {}
    finally:
        bar.close()
    status = store.status() if store is not None else np.zeros(0, np.int8)
    return SubmitResult(
        path=out,
        failures=failures_dir(out),
        log_dir=str(folder),
        n_bags=len(status),
        done=int(np.sum(status == DONE)),
        failed=int(np.sum(status == FAILED)),
        pending=int(np.sum(status == PENDING)),
        attempts=attempts,
        gave_up=gave_up,
    )
