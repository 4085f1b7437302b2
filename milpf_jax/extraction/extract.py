"""Extraction: plan a cohort's tiles, then encode them into an embeddings store, resumably.

Two passes (DESIGN.md, "Embeddings store"):

  plan    read every image once (in DataLoader workers), plan its tiles (`breast.plan_view`) and
          write the store's skeleton (`Store.create`): ids, views, boxes, masks, all pending.
  encode  re-read the images of pending bags in DataLoader workers, cut the global view and the
          tiles, and embed them while the workers prepare the next bags; each bag is written
          with `Store.write_bag`, whose last write is the bag's status.

Bit-exact resume. Per store chunk, the encoder inputs of its bags (each bag: its V global views,
then its T tiles, view by view) form one stream, cut into batches every `batch_size` rows from
the chunk's start; `batch_size` is fixed in the store when it is planned. A rerun re-encodes
only the batches that hold rows of pending bags, re-reading the done or failed neighbours those
batches share (failed bags contribute zeros, in every run), and keeps only the pending bags'
rows. So every embedding comes from the same batch as in an uninterrupted run: a store killed at
any point and resumed holds the same arrays, bit for bit.

Failures: an image that cannot be read fails its bag (status failed) and is listed with the
reason in `<store>.failures.csv` BESIDE the store (`milpf_jax.extraction.failures`); the run goes on unless
`strict`. Work-up views (`ExcludedView`)
are dropped from their bag and counted; a bag left with no view fails.

Pseudonymised cohorts: an image with a manifest `view_ref` is recorded by that ref, never by its
path, in the store's `view_path`, its attributes and the failures CSV (the path is scrubbed from
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
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milpf_jax.extraction import encoders
from milpf_jax.reading.tiling import ORIGINAL_OVERLAP, PRESETS, TilingConfig
from milpf_jax.reading.cohort import Cohort, resolve_cohort
from milpf_jax.extraction.inputs import EncodeJob, PlanJob, bag_inputs, ordered
from milpf_jax.extraction.failures import append_failures, failures_path, shown_as
from milpf_jax.progress import progress_bar
from milpf_jax.data.store import DEFAULT_CHUNK_BAGS, DONE, FAILED, PENDING, BagPlan, Store, StoreMismatch

log = logging.getLogger(__name__)

PLAN_WAIT_S = 3600.0  # how long shards other than 0 wait for shard 0's plan
# The arrays Store.create makes, in order: a zarr group holding only some of them and no
# attributes is a plan that was killed, which may be planned again; anything else is refused.
STORE_ARRAYS = frozenset({
    "global", "tiles", "global_mask", "tiles_mask", "tile_boxes", "view_path", "view_name",
    "view_flipped", "view_shape", "raw_label", "split_given", "bag_id", "patient_id", "status",
})  # fmt: skip


class ExtractionFailed(ValueError):
    """`strict` extraction stopped at the first image that failed (named in the message)."""


@dataclass(frozen=True)
class ExtractConfig:
    """Encoder and preprocessing of a store, plus how to run the extraction.

    One CLI flag per field (`milpf_jax.cli.add_config_flags`), shared by experiments/extract.py
    and experiments/sweep.py. Defaults follow the paper: no tile overlap for classification
    (section 3.2), tissue threshold 0.05 (original code), tiles and global view at the encoder's
    input size.

    encoder: registry name (milpf_jax.extraction.encoders.ENCODERS).
    model_dir: local weights folder (or .pth for efficientnet); None: cache, then hub.
    tile_size: tile edge in working pixels; None = the encoder's input size. Other sizes are
      resized to the encoder's input by area averaging.
    overlap: minimum tile overlap in [0, 1); None = the preset's (default 0, original 0.25).
    tissue_threshold: keep a tile whose mean exceeds this x the crop's maximum.
    pixel_spacing_mm: resample every view to this spacing first; None keeps the file's pixels.
    preset: "default", or "original" (the original code's preprocessing).
    batch_size: encoder inputs per forward pass; fixed in the store when it is planned.
    workers: DataLoader processes reading and tiling images (0: in the main process).
    device: torch device, or "auto" (CUDA when available, else CPU).
    precision: "auto" (bf16 autocast on CUDA and on CPUs with native bf16), "float32",
      "bfloat16".
    strict: stop at the first image that fails instead of failing its bag and going on.
    chunk_bags: bags per store chunk, the unit of --shard and of encoder batch boundaries.
    """

    encoder: str = encoders.DEFAULT_ENCODER
    model_dir: str | None = None
    tile_size: int | None = None
    overlap: float | None = None
    tissue_threshold: float = 0.05
    pixel_spacing_mm: float | None = None
    preset: str = "default"
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    strict: bool = False
    chunk_bags: int = DEFAULT_CHUNK_BAGS

    def __post_init__(self):
        if self.encoder not in encoders.ENCODERS:
            raise ValueError(
                f"ExtractConfig.encoder={self.encoder!r} unknown; valid names: "
                f"{', '.join(sorted(encoders.ENCODERS))}"
            )
        for name in ("batch_size", "chunk_bags"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ExtractConfig.{name}={getattr(self, name)!r}; expected >= 1")
        if int(self.workers) < 0:
            raise ValueError(f"ExtractConfig.workers={self.workers!r}; expected >= 0")
        if self.precision not in encoders.PRECISIONS:
            raise ValueError(
                f"ExtractConfig.precision={self.precision!r}; expected one of {encoders.PRECISIONS}"
            )
        if self.preset not in PRESETS:
            raise ValueError(f"ExtractConfig.preset={self.preset!r}; expected one of {PRESETS}")
        tiling_config(self, self.tile_size or 1)  # TilingConfig checks the rest, naming the field


FIELD_HELP = {
    "encoder": "encoder registry name",
    "model_dir": "local weights folder (HF save_pretrained layout, or the .pth for efficientnet)",
    "tile_size": "tile edge in working pixels; unset = encoder input size (else area-resized)",
    "overlap": "minimum tile overlap fraction; unset = the preset's (default 0, original 0.25)",
    "tissue_threshold": "keep a tile whose mean exceeds this x the crop maximum",
    "pixel_spacing_mm": "resample every view to this pixel spacing first; unset = file pixels",
    "preset": "preprocessing: default, or original (the original MIL-PF code's)",
    "batch_size": "encoder inputs per forward pass (fixed in the store when planned)",
    "workers": "DataLoader processes that read and tile images (0 = main process)",
    "device": "torch device, or auto (CUDA if available)",
    "precision": "auto (bf16 on CUDA and bf16-capable CPUs), float32 or bfloat16",
    "strict": "stop at the first image that fails",
    "chunk_bags": "bags per store chunk (the unit of --shard)",
}


@dataclass(frozen=True)
class ExtractResult:
    """What one `extract` call found and did.

    done / failed / pending: bags of the whole store by status after this call (pending bags
    belong to other shards or were not reached). excluded_views: work-up views dropped at plan
    time, by reason. encoded_bags / encoded_rows: bags written and encoder inputs (views + tiles)
    embedded for them by this call; reencoded_rows: inputs of done bags embedded again to
    rebuild a batch on resume. encode_s: wall time of the encode pass; embed_s: the part of it
    spent in the encoder's forward pass.
    """

    path: str
    failures_csv: str
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


def tiling_config(cfg: ExtractConfig, input_size: int) -> TilingConfig:
    """The TilingConfig a store records: tile size and global view resolved from the encoder."""
    overlap = cfg.overlap
    if overlap is None:
        overlap = ORIGINAL_OVERLAP if cfg.preset == "original" else 0.0
    return TilingConfig(
        tile_size=int(cfg.tile_size or input_size),
        overlap=float(overlap),
        tissue_threshold=float(cfg.tissue_threshold),
        pixel_spacing_mm=None if cfg.pixel_spacing_mm is None else float(cfg.pixel_spacing_mm),
        preset=cfg.preset,
        global_size=int(input_size),
    )


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
    return _digest([cohort.name, cohort.label_kind, bags])[:16]


def expected_attrs(cohort: Cohort, cfg: ExtractConfig, spec) -> dict:
    """The store attributes that must match for a store to be reused (Store.open(expect=))."""
    tiling = tiling_config(cfg, spec.input_size)
    return {
        "cohort": cohort.name,
        "label_kind": cohort.label_kind,
        "encoder": spec.name,
        "model_id": spec.model_id,
        "dim": int(spec.dim),
        "preprocessing": dataclasses.asdict(tiling),
    }


def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else $MILPF_CACHE, else ~/.cache/milpf-jax."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("MILPF_CACHE") or Path.home() / ".cache" / "milpf-jax").expanduser()


def store_name(cohort: Cohort, cfg: ExtractConfig) -> str:
    """`<cohort>-<encoder>-<hash>.zarr`, the hash over the preprocessing and the cohort identity.

    Label mappings and split seeds are applied at load time, so they are not part of the key.
    """
    spec = _spec(cfg.encoder)
    key = _digest([cohort_identity(cohort), expected_attrs(cohort, cfg, spec)])[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", cohort.name) or "cohort"
    return f"{safe}-{cfg.encoder}-{key}.zarr"


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), with 0 <= i < n."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match[1]), int(match[2])


def shard_from_env(env=None) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as set by torchrun; (0, 1) when not launched by it."""
    env = os.environ if env is None else env
    if not env.get("WORLD_SIZE"):
        return 0, 1
    return parse_shard(f"{env.get('RANK', '0')}/{env['WORLD_SIZE']}")


def _spec(name: str):
    if name not in encoders.ENCODERS:
        raise ValueError(
            f"unknown encoder {name!r}; valid names: {', '.join(sorted(encoders.ENCODERS))}"
        )
    return encoders.ENCODERS[name]


# --- batch schedule (pure) ---------------------------------------------------------------------


def batch_schedule(rows, status, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which batches of one store chunk to encode, and which of its bags to read for them.

    The chunk's encoder inputs form one stream, bag after bag; batch k holds stream rows
    [k * batch_size, (k + 1) * batch_size). The batches to encode are those holding a row of a
    pending bag; every bag with a row in them is read, pending or not, so each batch is the
    same as in an uninterrupted run.

    Args:
      rows: [n] encoder inputs per bag (views + tiles); status: [n] store status per bag.
    Returns:
      batches: [K] ascending batch indices; read: [n] bool.
    """
    rows = np.asarray(rows, np.int64)
    ends = np.cumsum(rows)  # [n]
    starts = ends - rows
    n_batches = math.ceil(int(ends[-1]) / batch_size) if len(rows) else 0
    need = np.zeros(n_batches, bool)
    first = starts // batch_size
    last = (ends - 1) // batch_size
    for b in np.flatnonzero((np.asarray(status) == PENDING) & (rows > 0)):
        need[first[b] : last[b] + 1] = True
    read = np.array(
        [rows[b] > 0 and bool(need[first[b] : last[b] + 1].any()) for b in range(len(rows))], bool
    )
    return np.flatnonzero(need), read


# --- the two passes ----------------------------------------------------------------------------


def _plan(cohort: Cohort, tiling: TilingConfig, cfg: ExtractConfig, csv_path: Path, progress):
    """Plan every bag. Returns (plans, excluded counts, {bag index: failure reason})."""
    plans, excluded, failed = [], Counter(), {}
    results = ordered(PlanJob(cohort.bags, tiling), cfg.workers)
    for i, (plan, dropped, failures) in enumerate(
        progress_bar(results, total=len(cohort.bags), desc="plan", unit="bag", disable=not progress)
    ):
        bag = cohort.bags[i]
        excluded.update(reason for _, reason in dropped)
        if failures:
            append_failures(csv_path, [(bag.bag_id, p, "plan", r) for p, r in failures])
            if cfg.strict:
                raise ExtractionFailed(
                    f"--strict: bag {bag.bag_id} failed at planning: {failures[0][0]}: "
                    f"{failures[0][1]} (listed in {csv_path})"
                )
            failed[i] = failures[0][1]
            plan = BagPlan(bag.bag_id, bag.patient_id, bag.raw_label, bag.split_given)
        plans.append(plan)
    return plans, dict(excluded), failed


def image_locations(cohort: Cohort) -> dict[str, str]:
    """{view_ref: path} of a cohort's images that have a ref (what the store records for them)."""
    return {im.ref: im.path for bag in cohort.bags for im in bag.images if im.ref}


def _bag_views(store_arrays: dict, b: int, locate: dict[str, str] | None = None):
    """[(path, view name, source boxes [T_v, 4])] of bag b, as planned; `locate` maps a stored
    view_ref to its file (`image_locations`)."""
    locate = locate or {}
    v = int(store_arrays["global_mask"][b].sum())
    t = int(store_arrays["tiles_mask"][b].sum())
    boxes = store_arrays["tile_boxes"][b, :t]  # [T, 5]
    stored = [str(store_arrays["view_path"][b, j]) for j in range(v)]
    return tuple(
        (locate.get(stored[j], stored[j]), str(store_arrays["view_name"][b, j]),
         boxes[boxes[:, 0] == j, 1:])
        for j in range(v)
    )  # fmt: skip


class _Encoding:
    """One encode pass over whole chunks: fixed batches in, finished bags out (batch_schedule)."""

    def __init__(
        self, store: Store, encoder, cfg: ExtractConfig, csv_path: Path, arrays: dict, locate=None
    ):
        self.store, self.encoder, self.cfg, self.csv_path = store, encoder, cfg, csv_path
        self.refs = {path: ref for ref, path in (locate or {}).items()}  # path -> view_ref
        self.status = store.status()  # [B]
        self.bag_ids = store.array("bag_id")
        self.n_views = arrays["global_mask"].sum(axis=1).astype(np.int64)  # [B]
        self.rows = self.n_views + arrays["tiles_mask"].sum(axis=1)  # [B]
        # Stream offsets restart at every chunk: batches never straddle two chunks (two shards).
        self.starts = np.zeros_like(self.rows)
        self.ends = np.zeros_like(self.rows)
        for c0 in range(0, store.n_bags, store.chunk_bags):
            ends = np.cumsum(self.rows[c0 : c0 + store.chunk_bags])
            self.ends[c0 : c0 + store.chunk_bags] = ends
            self.starts[c0 : c0 + store.chunk_bags] = ends - self.rows[c0 : c0 + store.chunk_bags]
        self.cache: dict[int, np.ndarray | None] = {}  # bag -> its inputs (None: zeros)
        self.results: dict[int, np.ndarray] = {}  # pending bag -> [rows, D] being filled
        self.stats = Counter()
        self.bar = None

    def members(self, c0: int, c1: int, lo: int, hi: int) -> list[int]:
        """Bags of chunk [c0, c1) with a row in stream rows [lo, hi)."""
        first = int(np.searchsorted(self.ends[c0:c1], lo, side="right"))
        last = int(np.searchsorted(self.starts[c0:c1], hi, side="left"))
        return [b for b in range(c0 + first, c0 + last) if self.rows[b] > 0]

    def take(self, item) -> None:
        """Receive one bag's inputs from the loader; a pending bag that failed is marked."""
        b, inputs, failure = item
        if failure is not None:
            failure = shown_as(failure[0], self.refs.get(failure[0], ""), failure[1])
            bag_id = str(self.bag_ids[b])
            if self.status[b] == PENDING:
                append_failures(self.csv_path, [(bag_id, failure[0], "encode", failure[1])])
                self.store.mark_failed(b)
                self.status[b] = FAILED
                self.stats["failed"] += 1
                if self.cfg.strict:
                    raise ExtractionFailed(
                        f"--strict: bag {bag_id} failed: {failure[0]}: {failure[1]} "
                        f"(listed in {self.csv_path})"
                    )
            else:
                log.warning(
                    "bag %s (done) could not be read again to rebuild its batch (%s: %s); its "
                    "neighbours in that batch are embedded next to zeros instead",
                    bag_id,
                    *failure,
                )
        elif self.status[b] == PENDING:
            self.results[b] = np.empty((int(self.rows[b]), self.encoder.spec.dim), np.float32)
        self.cache[b] = inputs

    def run_batch(self, lo: int, hi: int, members: list[int]) -> None:
        """Embed stream rows [lo, hi) of a chunk, then write every pending bag they complete."""
        size = self.encoder.spec.input_size
        batch = np.zeros((hi - lo, size, size), np.float32)  # [n, S, S]; failed bags stay 0
        for b in members:
            s, e = max(int(self.starts[b]), lo), min(int(self.ends[b]), hi)
            if self.cache[b] is not None:
                batch[s - lo : e - lo] = self.cache[b][s - self.starts[b] : e - self.starts[b]]
        t0 = time.perf_counter()
        emb = self.encoder.embed(batch, batch_size=len(batch))  # [n, D]
        self.stats["embed_ns"] += int(1e9 * (time.perf_counter() - t0))
        written = 0
        for b in members:
            s, e = max(int(self.starts[b]), lo), min(int(self.ends[b]), hi)
            if b not in self.results:
                self.stats["reencoded_rows"] += (e - s) if self.status[b] == DONE else 0
                continue
            self.results[b][s - self.starts[b] : e - self.starts[b]] = emb[s - lo : e - lo]
            written += e - s
            if self.ends[b] <= hi:  # the bag's last row: write it, status last
                out = self.results.pop(b)
                v = int(self.n_views[b])
                self.store.write_bag(b, out[:v], out[v:])
                self.status[b] = DONE
                self.stats["bags"] += 1
                self.stats["rows"] += len(out)
        if self.bar is not None:
            self.bar.update(written)
        for b in members:
            if self.ends[b] <= hi:
                self.cache.pop(b, None)


def _encode(
    store: Store, encoder, tiling, cfg, bags: range, csv_path: Path, progress, locate=None
) -> Counter:
    """Encode the pending bags among `bags` (whole chunks); returns counters of what was done.

    locate: {view_ref: path} (`image_locations`) for a store that records refs, not paths."""
    arrays = {name: store.array(name) for name in (
        "global_mask", "tiles_mask", "tile_boxes", "view_path", "view_name")}  # fmt: skip
    state = _Encoding(store, encoder, cfg, csv_path, arrays, locate)
    batch_size = int(store.attrs["batch_size"])
    schedule, items = [], []
    for c0 in range(bags.start, bags.stop, store.chunk_bags):
        c1 = min(c0 + store.chunk_bags, bags.stop)
        batches, read = batch_schedule(state.rows[c0:c1], state.status[c0:c1], batch_size)
        schedule += [(c0, c1, int(k)) for k in batches]
        items += [
            (int(b), _bag_views(arrays, b, locate), bool(state.status[b] != FAILED))
            for b in np.flatnonzero(read) + c0
        ]
    if not schedule:
        return state.stats
    mine = state.status[bags.start : bags.stop] == PENDING
    todo = int(state.rows[bags.start : bags.stop][mine].sum())
    state.bar = progress_bar(total=todo, desc="encode", unit="tile", disable=not progress)
    loaded = ordered(EncodeJob(items, tiling, encoder.spec.input_size), cfg.workers)
    try:
        for c0, c1, k in schedule:
            # A bag read for a batch may also reach into a later batch that is not re-encoded.
            state.cache = {b: x for b, x in state.cache.items() if b >= c0}
            lo = k * batch_size
            hi = min(lo + batch_size, int(state.ends[c1 - 1]))
            members = state.members(c0, c1, lo, hi)
            for b in members:
                while b not in state.cache:  # the loader yields bags in order
                    state.take(next(loaded))
            state.run_batch(lo, hi, members)
    finally:
        state.bar.close()
    return state.stats


def _load_encoder(cfg: ExtractConfig):
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return encoders.get_encoder(
        cfg.encoder, model_dir=cfg.model_dir, device=device, precision=cfg.precision
    )


def _check_encoder(store: Store, encoder) -> None:
    """Refuse to add embeddings computed differently from those already in the store."""
    attrs = store.attrs
    diffs = []
    if attrs.get("precision") not in (None, encoder.precision):
        diffs.append(("precision", attrs["precision"], encoder.precision))
    stored, now = attrs.get("model_revision"), encoder.model_revision
    if stored is not None and now is not None and stored != now:
        diffs.append(("model_revision", stored, now))
    if diffs:
        lines = "\n".join(f"  {k}: stored {s!r}, this run {r!r}" for k, s, r in diffs)
        raise StoreMismatch(
            f"store {store.path} holds embeddings computed otherwise:\n{lines}\n"
            "Mixing them would make one store hold two encoders' outputs; pass the stored "
            "settings (e.g. --precision), or use another store path."
        )


def _plan_leftovers(folder: str) -> bool:
    """Whether a folder that is no zarr group holds only what a SIGKILLed `Store.create` leaves:
    zarr's temporary `zarr.<hex>.partial` of the group's metadata (killed while writing it) and
    store arrays, whole or half-deleted (killed while clearing an earlier interrupted plan)."""

    def partial(name):  # zarr writes `<key stem>.<uuid4 hex>.partial`, then renames it
        return re.fullmatch(r"zarr\.[0-9a-f]{32}\.partial", name) is not None

    try:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if partial(name) and os.path.isfile(path):
                continue
            if name not in STORE_ARRAYS or not os.path.isdir(path):
                return False
            if not all(n in ("zarr.json", "c") or partial(n) for n in os.listdir(path)):
                return False
    except FileNotFoundError:  # removed meanwhile (shard 0 is clearing it): nothing is there
        return True
    return True


def _existing_store(out, expect: dict, cohort_id: str) -> Store | None:
    """The planned store at `out`, checked against the settings; None when there is none yet or
    its plan was cut short (then it is planned again). Anything else at `out` is refused."""
    import zarr

    try:
        group = zarr.open_group(str(out), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        text = str(out)
        if (
            "://" not in text
            and os.path.exists(text)
            and (not os.path.isdir(text) or os.listdir(text))
        ):
            if _plan_leftovers(text):
                log.warning("%s: its plan pass was interrupted; planning again", out)
                return None
            raise ValueError(
                f"{out} exists and is not a zarr store; choose another store path"
            ) from None
        return None
    attrs = group.attrs.asdict()
    if not attrs.get("planned"):
        ours = "format_version" in attrs or (not attrs and set(group.keys()) <= STORE_ARRAYS)
        if not ours:
            raise ValueError(f"{out} is a zarr group but not a milpf-jax embeddings store")
        log.warning("%s: its plan pass was interrupted; planning again", out)
        return None
    store = Store.open(out, expect=expect, mode="r+")
    if attrs.get("cohort_id") != cohort_id:
        raise StoreMismatch(
            f"store {out} was made with other settings:\n  cohort_id: stored "
            f"{attrs.get('cohort_id')!r}, requested {cohort_id!r} (other bags, labels or image "
            "paths)\nUse another store path, or delete this one to re-extract."
        )
    return store


def _wait_for_plan(out, expect, cohort_id, shard, wait_s: float) -> Store:
    """Shards other than 0 wait for shard 0 to finish the plan."""
    log.info("shard %d/%d: waiting for shard 0 to plan %s", *shard, out)
    deadline = time.monotonic() + wait_s
    while True:
        store = _existing_store(out, expect, cohort_id)
        if store is not None:
            return store
        if time.monotonic() >= deadline:
            raise ValueError(
                f"shard {shard[0]}/{shard[1]}: no finished plan at {out} after {wait_s:.0f} s; "
                "shard 0 plans the store: start it too (or first)"
            )
        time.sleep(min(1.0, wait_s))


def _mark_plan_failures(store: Store, bags: range) -> None:
    """Bags that failed at planning get status failed (in this shard's chunks only)."""
    status = store.status()
    for key in store.attrs.get("plan_failed", {}):
        b = int(key)
        if b in bags and status[b] == PENDING:
            store.mark_failed(b)


def extract(
    cohort: Cohort | str,
    cfg: ExtractConfig,
    out,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    plan_wait_s: float = PLAN_WAIT_S,
) -> ExtractResult:
    """Plan the store at `out` if it has no finished plan, then encode this shard's pending bags.

    Args:
      cohort: a Cohort, or a spec for `cohort.resolve_cohort` ("x.csv", "mias:DIR", ...).
      cfg: encoder, preprocessing and run settings.
      out: store path (a local folder, or an fsspec URL zarr can open).
      shard: (i, n): encode the bags of `Store.shard_range(i, n)` (whole chunks). Shard 0 plans
        when needed; the others wait up to `plan_wait_s` seconds for its plan.
      progress: tqdm bars (bags planned; tiles encoded, with rate and ETA) on stderr.

    Returns:
      ExtractResult with the store's bag counts and what this call did.

    Raises:
      StoreMismatch: the store was made with other settings (each one named, stored vs asked).
      EncoderUnavailable: the encoder's weights are missing; raised before any planning.
      ExtractionFailed: `cfg.strict` and an image failed (it is in the failures CSV first).
    """
    if isinstance(cohort, str):
        cohort = resolve_cohort(cohort)
    index, count = parse_shard(f"{shard[0]}/{shard[1]}")
    spec = _spec(cfg.encoder)
    tiling = tiling_config(cfg, spec.input_size)
    expect = expected_attrs(cohort, cfg, spec)
    cohort_id = cohort_identity(cohort)
    csv_path = failures_path(out)
    encoder, planned, plan_s = None, False, 0.0
    store = _existing_store(out, expect, cohort_id)
    if store is None and index != 0:
        store = _wait_for_plan(out, expect, cohort_id, (index, count), plan_wait_s)
    if store is None:
        encoder = _load_encoder(cfg)  # before planning: a missing model fails at once
        t0 = time.perf_counter()
        plans, excluded, failed = _plan(cohort, tiling, cfg, csv_path, progress)
        attrs = dict(
            expect,
            cohort_id=cohort_id,
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
    _mark_plan_failures(store, bags)
    stats, encode_s = Counter(), 0.0
    if np.any(store.status()[bags.start : bags.stop] == PENDING):
        encoder = encoder or _load_encoder(cfg)
        _check_encoder(store, encoder)
        t0 = time.perf_counter()
        locate = image_locations(cohort)
        stats = _encode(store, encoder, tiling, cfg, bags, csv_path, progress, locate)
        encode_s = time.perf_counter() - t0
    status = store.status()
    return ExtractResult(
        path=str(out),
        failures_csv=str(csv_path),
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
    """The store of (cohort, encoder, preprocessing) under `<cache>/stores/`, finished.

    Found by name (`store_name`), reused when complete, otherwise planned and/or encoded for
    its missing bags only. The cache is `cache_dir`, else $MILPF_CACHE, else ~/.cache/milpf-jax.
    Offline, a missing hub model raises EncoderUnavailable before any planning.

    Returns:
      The store's path. Bags that failed stay failed (see the failures CSV beside the store).
    """
    root = cache_root(cache_dir)
    if isinstance(cohort_spec, Cohort):
        cohort = cohort_spec
    else:
        cohort = resolve_cohort(cohort_spec, cache_dir=root, progress=progress)
    path = root / "stores" / store_name(cohort, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = extract(cohort, cfg, path, progress=progress)
    if result.failed:
        log.warning(
            "%s: %d of %d bags failed; see %s",
            path,
            result.failed,
            result.n_bags,
            result.failures_csv,
        )
    return path


def measure_throughput(
    cohort,
    cfg: ExtractConfig,
    work_dir,
    *,
    precisions: Sequence[str] = ("float32", "bfloat16"),
    max_bags: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Extraction throughput against the encoder's raw forward pass on the same inputs.

    For each precision: extract the cohort (its first `max_bags` bags) into a fresh store under
    `work_dir` (the encode pass is timed: reading and tiling in cfg.workers processes, overlapped
    with the forward pass), then embed the same inputs, already in memory, in batches of
    cfg.batch_size (timed after one warm-up batch).

    Returns:
      One dict per precision: precision, device, inputs (views + tiles), extract_per_s,
      forward_per_s, ratio (extract / forward), plan_s, encode_s, embed_s (forward time inside
      the extraction), forward_s.
    """
    cohort = cohort if isinstance(cohort, Cohort) else resolve_cohort(cohort)
    if max_bags is not None:
        cohort = dataclasses.replace(cohort, bags=cohort.bags[: int(max_bags)])
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for precision in precisions:
        pcfg = dataclasses.replace(cfg, precision=precision)
        folder = Path(tempfile.mkdtemp(dir=work, prefix=f"throughput-{precision}-"))
        result = extract(cohort, pcfg, folder / "store.zarr", progress=progress)
        store = Store.open(result.path)
        arrays = {name: store.array(name) for name in (
            "global_mask", "tiles_mask", "tile_boxes", "view_path", "view_name")}  # fmt: skip
        spec = _spec(pcfg.encoder)
        tiling = tiling_config(pcfg, spec.input_size)
        done = np.flatnonzero(store.status() == DONE)
        locate = image_locations(cohort)
        inputs = np.concatenate(
            [bag_inputs(_bag_views(arrays, b, locate), tiling, spec.input_size) for b in done]
        )  # [N, S, S]
        encoder = _load_encoder(pcfg)
        step = pcfg.batch_size
        encoder.embed(inputs[:step], batch_size=step)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        for i in range(0, len(inputs), step):
            encoder.embed(inputs[i : i + step], batch_size=step)
        forward_s = time.perf_counter() - t0
        forward = len(inputs) / forward_s
        rows.append({
            "precision": getattr(encoder, "precision", precision),
            "device": str(getattr(encoder, "device", pcfg.device)),
            "inputs": len(inputs),
            "extract_per_s": result.rows_per_s,
            "forward_per_s": forward,
            "ratio": result.rows_per_s / forward,
            "plan_s": result.plan_s,
            "encode_s": result.encode_s,
            "embed_s": result.embed_s,
            "forward_s": forward_s,
        })  # fmt: skip
    return rows
