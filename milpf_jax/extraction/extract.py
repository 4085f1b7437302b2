"""Extraction: plan a cohort's tiles, then encode them into an embeddings store, resumably.

Two passes (DESIGN.md, "Embeddings store"):

  plan    read every image once (in DataLoader workers), plan its tiles (`tiling.plan_view`) and
          write the store's skeleton (`Store.create`): ids, views, boxes, masks, all pending.
  encode  re-read the images of pending bags in DataLoader workers, cut the global view and the
          tiles, and embed them while the workers prepare the next bags; each bag is written
          with `Store.write_bag`, whose last write is the bag's status.

Bit-exact resume (`milpf_jax.extraction.schedule`): a rerun re-encodes only the batches that
hold rows of pending bags, re-reading the done or failed neighbours those batches share (failed
bags contribute zeros, in every run), and keeps only the pending bags' rows. So every embedding
comes from the same batch as in an uninterrupted run: a store killed at any point and resumed
holds the same arrays, bit for bit. What a path already holds (a finished plan, a plan cut
short, something else) is decided by the store's lifecycle (`milpf_jax.data.store`).

Failures: an image that cannot be read fails its bag (status failed) and is listed with the
reason in this shard's `<store>.failures/shard-<i>-of-<n>.csv` BESIDE the store
(`milpf_jax.extraction.failures`; read back merged); the run goes on unless `strict`.
Work-up views (`ExcludedView`) are dropped from their bag and counted; a bag left with no view
fails.

Pseudonymised cohorts: an image with a manifest `view_ref` is recorded by that ref, never by its
path, in the store's `view_path`, its attributes and the failure lists (the path is scrubbed from
failure reasons too); the encode pass finds the file again through the cohort.

Example:
    cfg = ExtractConfig(encoder="efficientnet-lite0")
    result = extract("mias:data/mias-dev", cfg, "mias.zarr")   # result.done == 80
    path = ensure_store("mias:data/mias-dev", cfg)               # cached under $MILPF_CACHE
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milpf_jax.config import parse_k_of_n
from milpf_jax.data.store import (
    DONE,
    FAILED,
    PENDING,
    PLAN_WAIT_S,
    BagPlan,
    Store,
    existing_store,
    mark_plan_failures,
    wait_for_plan,
)
from milpf_jax.extraction import encoders
from milpf_jax.extraction.config import ExtractConfig, tiling_config
from milpf_jax.extraction.encode import check_encoder, encode_pending, image_locations
from milpf_jax.extraction.failures import (
    ExtractionFailed,
    append_failures,
    failures_dir,
    failures_path,
)
from milpf_jax.extraction.inputs import PlanJob, ordered
from milpf_jax.paths import stores_dir
from milpf_jax.progress import progress_bar
from milpf_jax.reading.cohort import Cohort
from milpf_jax.reading.imaging import READER_VERSION
from milpf_jax.reading.sources import read_cohort
from milpf_jax.reading.tiling import TilingConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What one `extract` call found and did.

    failures: the store's failures folder (`read_failures(failures)` merges every shard's list).
    done / failed / pending: bags of the whole store by status after this call (pending bags
    belong to other shards or were not reached). excluded_views: work-up views dropped at plan
    time, by reason. encoded_bags / encoded_rows: bags written and encoder inputs (views + tiles)
    embedded for them by this call; reencoded_rows: inputs of done bags embedded again to
    rebuild a batch on resume. encode_s: wall time of the encode pass; embed_s: the part of it
    spent in the encoder's forward pass.
    """

    path: str
    failures: str
    shard: tuple[int, int]
    n_bags: int
    done: int
    failed: int
    pending: int
    n_tiles: int
    excluded_views: dict
    planned: bool
    encoded_bags: int
    encoded_rows: int
    reencoded_rows: int
    plan_s: float
    encode_s: float
    embed_s: float

    @property
    def rows_per_s(self) -> float:
        """Encoder inputs written per second of the encode pass (0 when nothing was encoded)."""
        return self.encoded_rows / self.encode_s if self.encode_s > 0 else 0.0


# --- settings, identities, paths ---------------------------------------------------------------


def _digest(payload) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def cohort_identity(cohort: Cohort) -> str:
    """A hash of everything the store copies from the cohort: bags, raw labels, given splits and
    images (absolute path, view, laterality, view_ref if any). Moving the images, editing a label
    or pseudonymising with another key changes it."""
    bags = [
        [b.bag_id, b.patient_id, b.raw_label, b.split_given,
         [[i.path, i.view, i.laterality] + ([i.ref] if i.ref else []) for i in b.images]]
        for b in cohort.bags
    ]  # fmt: skip
    if cohort.tasks:  # named tasks: every task's raw labels are copied too
        tasks = [list(cohort.tasks), [list(b.task_labels) for b in cohort.bags]]
        return _digest([cohort.name, cohort.label_kind, bags, tasks])[:16]
    return _digest([cohort.name, cohort.label_kind, bags])[:16]


def preprocessing_attrs(tiling: TilingConfig) -> dict:
    """The store's `preprocessing` attribute: the tiling's settings and the reading rule's version
    (`imaging.READER_VERSION`), so a store read under another rule is refused, never mixed in."""
    return dict(dataclasses.asdict(tiling), reader_version=READER_VERSION)


def tiling_from_attrs(preprocessing) -> tuple[TilingConfig, int]:
    """(TilingConfig, reader version) of a store's `preprocessing` attribute; the inverse of
    `preprocessing_attrs`. A store made before the version was recorded was read under rule 1."""
    settings = dict(preprocessing)
    version = int(settings.pop("reader_version", 1))
    return TilingConfig(**settings), version


def expected_attrs(cohort: Cohort, cfg: ExtractConfig, spec) -> dict:
    """The store attributes that must match for a store to be reused (Store.open(expect=))."""
    tiling = tiling_config(cfg, spec.input_size)
    return {
        "cohort": cohort.name,
        "label_kind": cohort.label_kind,
        **({"tasks": [list(t) for t in cohort.tasks]} if cohort.tasks else {}),
        "encoder": spec.name,
        "model_id": spec.model_id,
        "dim": int(spec.dim),
        "preprocessing": preprocessing_attrs(tiling),
    }


def store_name(cohort: Cohort, cfg: ExtractConfig) -> str:
    """`<cohort>-<encoder>-<hash>.zarr`, the hash over the preprocessing and the cohort identity.

    Label mappings and split seeds are applied at load time, so they are not part of the key.
    """
    spec = _spec(cfg.encoder)
    key = _digest([cohort_identity(cohort), expected_attrs(cohort, cfg, spec)])[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cohort.name) or "cohort"
    return f"{safe}-{cfg.encoder}-{key}.zarr"


def slurm_shard(env=None) -> tuple[int, int] | None:
    """This worker's shard under a SLURM job array; None outside one.

    Array task `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`; under
    `srun` with several tasks per array task, task `index * SLURM_NTASKS + SLURM_PROCID` of
    `count * SLURM_NTASKS`. (`--array=0-15%4` runs 16 shards, 4 at a time; a sparse array such
    as `--array=1,5` is refused: its ids are not 0..count-1 above the minimum.)
    """
    env = os.environ if env is None else env
    if not env.get("SLURM_ARRAY_TASK_ID"):
        return None
    try:
        task, low = int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", "1"))
        ntasks = int(env.get("SLURM_NTASKS") or "1")
        procid = int(env.get("SLURM_PROCID") or "0")
    except ValueError as err:
        raise ValueError(f"SLURM array variables are not whole numbers: {err}") from None
    if not 0 <= task - low < count:
        raise ValueError(
            f"SLURM array task {task} is not within {low}..{low + count - 1} "
            f"(SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_COUNT={count}): use a contiguous "
            "--array such as 0-15, or give --shard i/n"
        )
    if ntasks > 1:
        return parse_shard(f"{(task - low) * ntasks + procid}/{count * ntasks}")
    return parse_shard(f"{task - low}/{count}")


def shard_from_env(env=None) -> tuple[int, int]:
    """The shard the environment gives: a SLURM array task (`slurm_shard`), else torchrun's
    (RANK, WORLD_SIZE), else (0, 1). `--shard` wins over both (`experiments/extract.py`)."""
    env = os.environ if env is None else env
    slurm = slurm_shard(env)
    if slurm is not None:
        return slurm
    if not env.get("WORLD_SIZE"):
        return 0, 1
    return parse_shard(f"{env.get('RANK', '0')}/{env['WORLD_SIZE']}")


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), with 0 <= i < n (ConfigError naming `shard` otherwise)."""
    return parse_k_of_n(text, "shard", example="0/4")


def _spec(name: str):
    if name not in encoders.ENCODERS:
        raise ValueError(
            f"unknown encoder {name!r}; valid names: {', '.join(sorted(encoders.ENCODERS))}"
        )
    return encoders.ENCODERS[name]


# --- the plan pass ----------------------------------------------------------------------------


def _plan(cohort: Cohort, tiling: TilingConfig, cfg: ExtractConfig, csv_path: Path, progress):
    """Plan every bag. Returns (plans, excluded counts, {bag index: failure reason})."""
    plans, excluded, failed, rows = [], Counter(), {}, []
    results = ordered(PlanJob(cohort.bags, tiling), cfg.workers)
    for i, (plan, dropped, failures) in enumerate(
        progress_bar(results, total=len(cohort.bags), desc="plan", unit="bag", disable=not progress)
    ):
        bag = cohort.bags[i]
        excluded.update(reason for _, reason in dropped)
        if failures:
            rows += [(bag.bag_id, p, "plan", r) for p, r in failures]
            if cfg.strict:
                append_failures(csv_path, rows)
                raise ExtractionFailed(
                    f"--strict: bag {bag.bag_id} failed at planning: {failures[0][0]}: "
                    f"{failures[0][1]} (listed in {csv_path})"
                )
            failed[i] = failures[0][1]
            plan = BagPlan(bag.bag_id, bag.patient_id, bag.raw_label, bag.split_given,
                           exam_id=bag.exam_id, laterality=bag.laterality,
                           task_labels=bag.task_labels)
        plans.append(plan)
    # One write for the whole pass (a killed plan is planned again, failures and all).
    append_failures(csv_path, rows)
    return plans, dict(excluded), failed


def _load_encoder(cfg: ExtractConfig):
    return encoders.get_encoder(cfg.encoder, model_dir=cfg.model_dir,
                                device=encoders.resolve_device(cfg.device),
                                precision=cfg.precision)


def extract(
    cohort: Cohort | str,
    cfg: ExtractConfig = ExtractConfig(),
    out=None,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    plan_wait_s: float = PLAN_WAIT_S,
    cache_dir=None,
) -> ExtractResult:
    """Plan the store at `out` if it has no finished plan, then encode this shard's pending bags.

    Args:
      cohort: a Cohort, or a spec for `milpf_jax.reading.sources.read_cohort` ("x.csv",
        "mias:DIR", ...).
      cfg: encoder, preprocessing and run settings.
      out: store path (a local folder, or an fsspec URL zarr can open: `s3://`, `gs://`,
        `file://`; credentials and endpoint from the environment); None: the cached store
        of these settings, `<cache>/stores/<store_name>` (`milpf_jax.paths`), where later runs
        with the same cohort and settings find it.
      shard: (i, n): encode the bags of `Store.shard_range(i, n)` (whole chunks). Shard 0 plans
        when needed; the others wait up to `plan_wait_s` seconds for its plan.
      progress: tqdm bars (bags planned; tiles encoded, with rate and ETA) on stderr.

    Returns:
      ExtractResult with the store's bag counts and what this call did.

    Raises:
      StoreMismatch: the store was made with other settings (each one named, stored vs asked).
      EncoderUnavailable: the encoder's weights are missing; raised before any planning.
      ExtractionFailed: `cfg.strict` and an image failed (it is in the failure list first).
    """
    if not isinstance(cohort, Cohort):
        cohort = read_cohort(cohort, cache_dir=cache_dir, progress=progress)
    if out is None:
        out = stores_dir(cache_dir) / store_name(cohort, cfg)
        out.parent.mkdir(parents=True, exist_ok=True)
    index, count = parse_shard(f"{shard[0]}/{shard[1]}")
    spec = _spec(cfg.encoder)
    tiling = tiling_config(cfg, spec.input_size)
    expect = expected_attrs(cohort, cfg, spec)
    cohort_id = cohort_identity(cohort)
    csv_path = failures_path(out, (index, count))
    encoder, planned, plan_s = None, False, 0.0
    store = existing_store(out, expect, cohort_id)
    if store is None and index != 0:
        store = wait_for_plan(out, expect, cohort_id, (index, count), plan_wait_s)
    if store is None:
        encoder = _load_encoder(cfg)  # before planning: a missing model fails at once
        t0 = time.perf_counter()
        plans, excluded, failed = _plan(cohort, tiling, cfg, csv_path, progress)
        attrs = dict(
            expect,
            cohort_id=cohort_id,
            cohort_spec=cohort.spec,  # what reads the cohort again (explain, predict)
            model_revision=encoder.model_revision,
            precision=encoder.precision,
            batch_size=int(cfg.batch_size),  # encoder batch boundaries, fixed for resumes
            excluded_views=excluded,
            plan_failed={str(i): reason for i, reason in failed.items()},
        )
        store = Store.create(out, plans, dim=spec.dim, attrs=attrs, chunk_bags=cfg.chunk_bags)
        planned, plan_s = True, time.perf_counter() - t0
    elif int(store.attrs["batch_size"]) != cfg.batch_size:
        log.info(
            "%s: batches of %s as planned (not %s), so resumed bags embed identically",
            out,
            store.attrs["batch_size"],
            cfg.batch_size,
        )
    bags = store.shard_range(index, count)
    mark_plan_failures(store, bags)
    stats, encode_s = Counter(), 0.0
    if np.any(store.status()[bags.start : bags.stop] == PENDING):
        encoder = encoder or _load_encoder(cfg)
        check_encoder(store, encoder)
        t0 = time.perf_counter()
        locate = image_locations(cohort)
        stats = encode_pending(store, encoder, tiling, cfg, bags, csv_path, progress, locate)
        encode_s = time.perf_counter() - t0
    status = store.status()
    return ExtractResult(
        path=str(out),
        failures=failures_dir(out),
        shard=(index, count),
        n_bags=store.n_bags,
        done=int(np.sum(status == DONE)),
        failed=int(np.sum(status == FAILED)),
        pending=int(np.sum(status == PENDING)),
        n_tiles=int(store.array("tiles_mask").sum()),
        excluded_views=dict(store.attrs.get("excluded_views", {})),
        planned=planned,
        encoded_bags=int(stats["bags"]),
        encoded_rows=int(stats["rows"]),
        reencoded_rows=int(stats["reencoded_rows"]),
        plan_s=plan_s,
        encode_s=encode_s,
        embed_s=stats["embed_ns"] / 1e9,
    )


def ensure_store(cohort_spec, cfg: ExtractConfig, cache_dir=None, *, progress: bool = True) -> Path:
    """The cached store of (cohort, encoder, preprocessing), finished: `extract` with no `out`.

    Reused when complete, otherwise planned and/or encoded for its missing bags only. Offline,
    a missing hub model raises EncoderUnavailable before any planning. Bags that failed stay
    failed (listed in the failures folder beside the store).
    """
    result = extract(cohort_spec, cfg, progress=progress, cache_dir=cache_dir)
    if result.failed:
        log.warning("%s: %d of %d bags failed; see %s", result.path, result.failed,
                    result.n_bags, result.failures)
    return Path(result.path)
