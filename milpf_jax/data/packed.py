"""Packed bags: what training reads from a store, real tiles only, along one axis.

`load_packed(store, mapping=..., split_seed=...)` maps raw labels (bags the mapping leaves out
are dropped, with a count), makes or keeps the splits, refuses unfinished bags unless
`allow_partial`, and packs the valid rows (`tiles[tiles_mask]`) into one [N, D] array plus a
bag index and a view index, so the heavy first layer runs on real tiles only. `pack` does the
same for padded arrays in memory, with no store.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from milpf_jax.config import check, option
from milpf_jax.data import labels
from milpf_jax.data.store import DONE, FAILED, Store
from milpf_jax.files import write_text
from milpf_jax.reading.cohort import task_name_of


@dataclass(frozen=True)
class DataConfig:
    """How a store's bags become training data: the label mapping and the split (`load_packed`).

    Applied at load time, so a new mapping or split costs seconds, not a re-extraction.
    """

    task: str | None = option(
        None, "the task to train on, of those the store holds raw labels for (a public "
              "cohort's: vindr birads, mass, calcification; embed birads, pathology); default: "
              "its first")
    mapping: str | None = option(
        None, "label mapping (default: the task's label kind's: birads, binary, mias -> "
              "abnormal)")
    split_seed: int = option(0, "seed of the patient-grouped 70/10/20 split (a manifest's "
                                "split wins)")
    fold: str | None = option(
        None, "k/n: train and test on fold k of an n-fold cross-validation (see --folds)")
    allow_partial: bool = option(False, "skip bags whose extraction is unfinished or failed "
                                        "(counted), instead of refusing the store")

    def __post_init__(self):
        check(self, self.mapping is None or self.mapping in labels.MAPPINGS, "mapping",
              f"{self.mapping!r}: choose one of {', '.join(sorted(labels.MAPPINGS))}")
        if self.fold is not None:
            labels.parse_fold(self.fold)

    def replace(self, **changes) -> DataConfig:
        return dataclasses.replace(self, **changes)


# Rows converted per step when tiles change dtype on a copy: no full-size temporary is made.
COPY_ROWS = 1 << 16


@dataclass(frozen=True)
class PackedBags:
    """Bags ready for training: real tiles only, packed along one axis.

    tiles [N, D], tile_bag [N] (index into the B bags, non-decreasing), tile_view [N],
    tile_boxes [N, 4] (y0, x0, y1, x1 source pixels); views [B, Vmax, D], views_mask [B, Vmax];
    labels [B] int8 (0/1), splits [B] int8 (0 train, 1 val, 2 test); bag_ids, patient_ids,
    exam_ids, lateralities, raw_labels [B] str (exam_ids "" where the bags name no exam);
    store_index [B] (row in the store, -1 for bags packed from arrays). `info` records the
    mapping, split seed, excluded and skipped counts, and the store's attributes.
    """

    tiles: np.ndarray
    tile_bag: np.ndarray
    tile_view: np.ndarray
    tile_boxes: np.ndarray
    views: np.ndarray
    views_mask: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    bag_ids: np.ndarray
    patient_ids: np.ndarray
    exam_ids: np.ndarray
    lateralities: np.ndarray
    raw_labels: np.ndarray
    store_index: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def n_bags(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return self.views.shape[-1]

    def tiles_per_bag(self) -> np.ndarray:
        return np.bincount(self.tile_bag, minlength=self.n_bags)

    def subset(self, bags: np.ndarray, *, tiles_dtype=None) -> PackedBags:
        """The bags selected by a boolean mask or sorted indices, tiles re-indexed to match.

        tiles_dtype: the subset's tiles in this dtype (default: as they are), copied a slice
        at a time, so no full-size copy in the wider dtype is made on the way.
        """
        idx = np.flatnonzero(bags) if np.asarray(bags).dtype == bool else np.asarray(bags)
        new_index = np.full(self.n_bags, -1, np.int64)
        new_index[idx] = np.arange(len(idx))
        kept = np.flatnonzero(new_index[self.tile_bag] >= 0)
        # One gather per array (never a masked copy first): the tiles are most of the memory.
        rows = kept[np.argsort(new_index[self.tile_bag[kept]], kind="stable")]

        def take_tiles(a):
            return a[rows]

        per_bag = {f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)
                   if f.name not in ("tiles", "tile_bag", "tile_view", "tile_boxes", "info")}
        if tiles_dtype is None or np.dtype(tiles_dtype) == self.tiles.dtype:
            tiles = take_tiles(self.tiles)
        else:
            tiles = np.empty((len(rows), self.tiles.shape[1]), tiles_dtype)
            for i in range(0, len(rows), COPY_ROWS):
                tiles[i:i + COPY_ROWS] = self.tiles[rows[i:i + COPY_ROWS]]
        return PackedBags(
            tiles=tiles,
            tile_bag=new_index[take_tiles(self.tile_bag)].astype(np.int32),
            tile_view=take_tiles(self.tile_view),
            tile_boxes=take_tiles(self.tile_boxes),
            info=dict(self.info),
            **per_bag,
        )

    def split(self, name: str, *, tiles_dtype=None) -> PackedBags:
        return self.subset(self.splits == labels.SPLIT_NAMES.index(name), tiles_dtype=tiles_dtype)


def load_packed(
    store: Store | str,
    *,
    task: str | None = None,
    mapping: str | None = None,
    split_seed: int = 0,
    fold: str | None = None,
    allow_partial: bool = False,
    unlabelled: bool = False,
    dtype=np.float32,
) -> PackedBags:
    """Read a store into packed bags, applying a label mapping and a split seed.

    Args:
      store: a Store or a path.
      task: which of the store's tasks' raw labels to use (`Store.tasks`); default: its first.
        Bags the task leaves out (raw label "") are dropped and counted like a mapping's.
      mapping: a name in labels.MAPPINGS; default: the one for the task's label kind. Bags
        whose raw label the mapping leaves out are dropped and counted in info["excluded"].
      split_seed: seed of the 70/10/20 patient-grouped split (a manifest's split wins). Splits
        are drawn over every planned bag, so they do not change with the mapping.
      fold: "k/n": instead, fold k of an n-fold patient-grouped cross-validation drawn with
        split_seed (`labels.make_folds`): fold k is the test split.
      allow_partial: if False (default) a store with pending or failed bags is refused; if True
        those bags are skipped and counted in info["skipped"]. Never read as zeros. Bags that
        hold NaN or inf (written outside `write_bag`) are refused, named.
      unlabelled: keep the bags the mapping (or the task) leaves out too, with label -1: every
        bag of the store scored, as `predict.py` does. A store of label kind "none" (a folder
        of new exams) keeps them always.
      dtype: the compute dtype embeddings are cast to (the disk format is float16).
    """
    if not isinstance(store, Store):
        store = Store.open(store)
    attrs = store.attrs
    status = store.status()
    bag_ids = store.array("bag_id")
    not_done = np.flatnonzero(status != DONE)
    if len(not_done) and not allow_partial:
        n_fail = int(np.sum(status == FAILED))
        raise ValueError(
            f"store {store.path}: {len(not_done)} of {len(status)} bags are not done "
            f"({len(not_done) - n_fail} pending, {n_fail} failed; e.g. "
            f"{[str(bag_ids[i]) for i in not_done[:3]]}). Finish the extraction, or pass "
            "allow_partial=True (--allow-partial) to skip them."
        )
    task_name, label_kind, raw = store.task_raw_labels(task)
    patients = store.array("patient_id")
    exams, sides = store.array("exam_id"), store.array("laterality")
    mapping_name, table = labels.resolve_mapping(mapping, label_kind)
    mapped = labels.map_labels(raw, table)
    if fold is None:
        splits = labels.make_splits(patients, raw, store.array("split_given"), seed=split_seed)
    else:
        k, n = labels.parse_fold(fold)
        splits = labels.make_folds(patients, raw, store.array("split_given"), fold=k, n_folds=n,
                                   seed=split_seed)
    done = status == DONE
    keep = done & ((mapped >= 0) | bool(unlabelled or label_kind == "none"))
    kept = np.flatnonzero(keep)
    views, views_mask, tiles, tile_bag, tile_view, tile_boxes = _read_kept(store, kept, dtype)
    info = dict(
        task=task_name,
        mapping=mapping_name,
        split_seed=int(split_seed),
        fold=fold,
        excluded=labels.excluded_counts(raw[done], mapped[done]),
        skipped=int(len(not_done)),
        store=store.path,
        attrs=attrs,
    )
    return PackedBags(
        tiles=tiles,
        tile_bag=tile_bag,
        tile_view=tile_view,
        tile_boxes=tile_boxes,
        views=views,
        views_mask=views_mask,
        labels=mapped[kept],
        splits=splits[kept],
        bag_ids=bag_ids[kept],
        patient_ids=patients[kept],
        exam_ids=exams[kept],
        lateralities=sides[kept],
        raw_labels=raw[kept],
        store_index=kept.astype(np.int32),
        info=info,
    )


def _read_kept(store: Store, kept: np.ndarray, dtype):
    """Read the kept bags chunk by chunk, packing real tiles as we go (bounded memory)."""
    g = store._g
    d = store.dim
    vmax = g["global"].shape[1]
    tiles_mask = g["tiles_mask"][...]
    counts = tiles_mask[kept].sum(axis=1)
    n = int(counts.sum())
    tiles = np.empty((n, d), dtype)
    tile_bag = np.repeat(np.arange(len(kept), dtype=np.int32), counts)
    tile_view = np.empty(n, np.int32)
    tile_boxes = np.empty((n, 4), np.int32)
    views = np.empty((len(kept), vmax, d), dtype)
    views_mask = g["global_mask"][...][kept]
    boxes_all = g["tile_boxes"]
    cb = store.chunk_bags
    pos = 0
    row = 0
    for c0 in range(0, store.n_bags, cb):
        sel = kept[(kept >= c0) & (kept < c0 + cb)]
        if not len(sel):
            continue
        local = sel - c0
        chunk_tiles = g["tiles"][c0:c0 + cb][local]  # [b, Tmax, D] float16
        chunk_views = g["global"][c0:c0 + cb][local]  # [b, Vmax, D] float16
        chunk_boxes = boxes_all[c0:c0 + cb][local]
        m = tiles_mask[sel]
        k = int(m.sum())
        tiles[pos:pos + k] = chunk_tiles[m]
        tile_view[pos:pos + k] = chunk_boxes[m][:, 0]
        tile_boxes[pos:pos + k] = chunk_boxes[m][:, 1:]
        views[row:row + len(sel)] = chunk_views
        # write_bag refuses NaN and inf, so these come from writes outside it: never train on
        # them. Checked on the cast copy (fast for float32).
        tile_ok = np.isfinite(tiles[pos:pos + k]).all(axis=1)  # [k]
        view_ok = np.isfinite(views[row:row + len(sel)]).all(axis=(1, 2))  # [b]
        if not (tile_ok.all() and view_ok.all()):
            bad = np.union1d(tile_bag[pos:pos + k][~tile_ok], row + np.flatnonzero(~view_ok))
            ids = [str(i) for i in g["bag_id"][...][kept[bad]]]
            raise ValueError(f"store {store.path}: bag(s) {ids[:5]} hold NaN or inf embeddings "
                             "(written outside Store.write_bag?); re-extract them")
        pos += k
        row += len(sel)
    return views, views_mask, tiles, tile_bag, tile_view, tile_boxes


def pack(views, views_mask, tiles, tiles_mask, *, raw_labels, mapping=None, label_kind="binary",
         patient_ids=None, bag_ids=None, exam_ids=None, lateralities=None, split_given=None,
         split_seed: int = 0, tile_boxes=None, dtype=np.float32) -> PackedBags:
    """PackedBags from padded arrays in memory: the same labels, splits and packing as
    `load_packed`, with no store.

    Args:
      views [B, V, D], views_mask [B, V], tiles [B, T, D], tiles_mask [B, T]: padded bags.
      raw_labels [B]: raw labels, mapped by `mapping` (default: the one for `label_kind`).
      patient_ids, bag_ids, exam_ids, lateralities [B]: default one patient per bag, bag ids
        "B<i>", no exams; split_given [B]: -1 (none) by default, drawn with `split_seed`.
      tile_boxes [B, T, 5]: view index, y0, x0, y1, x1 (default zeros).
    """
    views = np.asarray(views)
    b = views.shape[0]
    tiles = np.asarray(tiles).reshape(b, -1, views.shape[-1])
    tiles_mask = np.asarray(tiles_mask, bool).reshape(tiles.shape[:2])

    def per_bag(values, default):
        return np.array(default if values is None else [str(v) for v in values], dtype=object)

    bag_ids = per_bag(bag_ids, [f"B{i}" for i in range(b)])
    patients = per_bag(patient_ids, list(bag_ids))
    raw = per_bag(raw_labels, None)
    mapping_name, table = labels.resolve_mapping(mapping, label_kind)
    mapped = labels.map_labels(raw, table)
    given = np.full(b, -1, np.int8) if split_given is None else np.asarray(split_given, np.int8)
    splits = labels.make_splits(patients, raw, given, seed=split_seed)
    kept = np.flatnonzero(mapped >= 0)
    boxes = (np.zeros((*tiles.shape[:2], 5), np.int32) if tile_boxes is None
             else np.asarray(tile_boxes, np.int32))
    m = tiles_mask[kept]
    counts = m.sum(axis=1)
    return PackedBags(
        tiles=np.asarray(tiles[kept][m], dtype),
        tile_bag=np.repeat(np.arange(len(kept), dtype=np.int32), counts),
        tile_view=boxes[kept][m][:, 0].astype(np.int32),
        tile_boxes=boxes[kept][m][:, 1:].astype(np.int32),
        views=np.asarray(views[kept], dtype),
        views_mask=np.asarray(views_mask, bool)[kept],
        labels=mapped[kept],
        splits=splits[kept],
        bag_ids=bag_ids[kept],
        patient_ids=patients[kept],
        exam_ids=per_bag(exam_ids, [""] * b)[kept],
        lateralities=per_bag(lateralities, [""] * b)[kept],
        raw_labels=raw[kept],
        store_index=np.full(len(kept), -1, np.int32),
        info=dict(task=task_name_of(label_kind), mapping=mapping_name, split_seed=int(split_seed),
                  fold=None, excluded=labels.excluded_counts(raw, mapped), skipped=0, store=None,
                  attrs=dict(label_kind=label_kind)),
    )


# -- a folder of .npy files: packed bags memory-mapped by worker processes (no zarr needed) --


def numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes  # a JAX dependency: numpy's own dtypes lack bfloat16

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_ARRAY_FIELDS = [f.name for f in dataclasses.fields(PackedBags) if f.name != "info"]


def save_packed(packed: PackedBags, folder) -> Path:
    """Write PackedBags as one .npy per field (+ info.json), for workers to memory-map."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtypes = {}
    for name in _ARRAY_FIELDS:
        a = np.asarray(getattr(packed, name))
        dtypes[name] = str(a.dtype) if a.dtype != numpy_dtype("bfloat16") else "bfloat16"
        if dtypes[name] == "bfloat16":
            a = a.view(np.uint16)  # .npy has no bfloat16: store the bits
        np.save(folder / f"{name}.npy", a, allow_pickle=False)
    meta = dict(info=packed.info, dtypes=dtypes)
    write_text(folder / "info.json", json.dumps(meta, default=str))
    return folder


def open_packed(folder) -> PackedBags:
    """PackedBags written by `save_packed`; the big arrays are memory-mapped, not read."""
    folder = Path(folder)
    meta_path = folder / "info.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a folder written by save_packed")
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for name in _ARRAY_FIELDS:
        a = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        if meta["dtypes"][name] == "bfloat16":
            a = a.view(numpy_dtype("bfloat16"))
        arrays[name] = a
    return PackedBags(info=meta["info"], **arrays)

