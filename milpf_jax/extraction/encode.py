"""The encode pass: pending bags' inputs through the encoder, in the batches the schedule fixes.

Reading and tiling run in DataLoader workers (`milpf_jax.extraction.inputs`) while the encoder
embeds the previous batch; each finished bag is written with `Store.write_bag`, whose last
write is the bag's status, so a kill at any moment leaves every written bag whole.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from milpf_jax.data.store import DONE, FAILED, PENDING, Store, StoreMismatch
from milpf_jax.extraction.config import ExtractConfig
from milpf_jax.extraction.failures import ExtractionFailed, append_failures, shown_as
from milpf_jax.extraction.inputs import EncodeJob, ordered
from milpf_jax.extraction.schedule import batch_schedule
from milpf_jax.progress import progress_bar
from milpf_jax.reading.cohort import Cohort

log = logging.getLogger(__name__)


def image_locations(cohort: Cohort) -> dict[str, str]:
    """{view_ref: path} of a cohort's images that have a ref (what the store records for them)."""
    return {im.ref: im.path for bag in cohort.bags for im in bag.images if im.ref}


def bag_views(store_arrays: dict, b: int, locate: dict[str, str] | None = None):
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


def encode_pending(
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
            (int(b), bag_views(arrays, b, locate), bool(state.status[b] != FAILED))
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


def check_encoder(store: Store, encoder) -> None:
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

