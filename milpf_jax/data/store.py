"""The embeddings store (Zarr v3): plan once, fill resumably, load packed.

Schema (DESIGN.md, "Embeddings store"), bag axis first:

  global      [B, Vmax, D] float16   one embedding per view
  global_mask [B, Vmax]    bool
  tiles       [B, Tmax, D] float16   one embedding per tissue tile, all views of the bag
  tiles_mask  [B, Tmax]    bool
  tile_boxes  [B, Tmax, 5] int32     view index, y0, x0, y1, x1 (half-open, source pixels)
  view_path, view_name [B, Vmax] str;  view_flipped [B, Vmax] bool;  view_shape [B, Vmax, 2] int32
  raw_label [B] str;  split_given [B] int8;  bag_id, patient_id [B] str
  status    [B] int8                 0 pending, 1 done, 2 failed; written last per bag

A plan pass (`Store.create`) fixes every shape, id, view, box and mask before any encoding;
encoding workers then fill embeddings with `write_bag`, which writes `status` last. The bag axis
is cut into chunks of `chunk_bags` bags (zarr shards, one inner chunk per bag), and
`shard_range(i, n)` hands each worker whole chunks, so no two writers ever touch one file.
Labels stay raw: the mapping and the split seed are applied by `load_packed`.

Example:
  >>> store = Store.create("x.zarr", plans, dim=1280, attrs=dict(label_kind="birads", ...))
  >>> store.write_bag(0, global_emb, tile_emb)    # [V, D], [T, D]
  >>> packed = load_packed(Store.open("x.zarr"), split_seed=0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from milpf_jax import __version__

from milpf_jax.data import labels

FORMAT_VERSION = 1
PENDING, DONE, FAILED = 0, 1, 2
DEFAULT_CHUNK_BAGS = 64
# Attributes compared when a caller reopens a store with what it expects: a store made with
# another encoder or other preprocessing holds other embeddings and must not be mixed in.
CHECKED_ATTRS = ("format_version", "cohort", "label_kind", "encoder", "model_id", "dim",
                 "preprocessing")


@dataclass(frozen=True)
class BagPlan:
    """Everything the plan pass knows about one bag before encoding.

    tile_boxes: [T, 5] int32 rows of (view index, y0, x0, y1, x1) in source pixels; T may be 0.
    """

    bag_id: str
    patient_id: str
    raw_label: str
    split_given: int = -1
    view_paths: tuple[str, ...] = ()
    view_names: tuple[str, ...] = ()
    view_flipped: tuple[bool, ...] = ()
    view_shapes: tuple[tuple[int, int], ...] = ()
    tile_boxes: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 5), np.int32)
    )

    @property
    def n_views(self) -> int:
        return len(self.view_paths)

    @property
    def n_tiles(self) -> int:
        return len(self.tile_boxes)


class StoreMismatch(ValueError):
    """A store was made with settings other than those requested."""


def _flatten(attrs: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def attr_differences(stored: Mapping, expected: Mapping) -> list[tuple[str, object, object]]:
    """(setting, stored value, requested value) for each checked setting that differs."""
    want = _flatten({k: v for k, v in expected.items() if k in CHECKED_ATTRS})
    have = _flatten({k: v for k, v in stored.items() if k in CHECKED_ATTRS})
    return [(k, have.get(k, "<missing>"), v) for k, v in sorted(want.items()) if have.get(k) != v]


def _open_zarr_group(path, mode: str):
    import zarr

    return zarr.open_group(str(path), mode=mode)


class Store:
    """A handle on one embeddings store. Create with `Store.create`, reopen with `Store.open`."""

    def __init__(self, group, path):
        self._g = group
        self.path = str(path)

    # -- creation (the plan pass) -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path,
        bags: Sequence[BagPlan],
        *,
        dim: int,
        attrs: Mapping,
        chunk_bags: int = DEFAULT_CHUNK_BAGS,
    ) -> Store:
        """Write the store's skeleton: every array, mask, id and box; all bags pending.

        `attrs` must hold at least `label_kind`; encoder, model_id, preprocessing and cohort are
        recorded when given. The attribute `planned` is written last: a store whose plan was
        interrupted is refused by `open` and can simply be created again.
        """
        if not bags:
            raise ValueError(f"store {path}: the plan has no bags")
        if "label_kind" not in attrs:
            raise ValueError(f"store {path}: attrs must include 'label_kind'")
        ids = [b.bag_id for b in bags]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"store {path}: duplicate bag ids in the plan, e.g. {dup}")
        n = len(bags)
        vmax = max(1, max(b.n_views for b in bags))
        tmax = max(1, max(b.n_tiles for b in bags))
        cb = int(chunk_bags)
        g = _open_zarr_group(path, mode="w")

        def array(name, shape, dtype, fill, inner=None):
            kw = {}
            if inner is not None:  # big arrays: one shard per bag chunk, one inner chunk per bag
                kw = dict(shards=(cb, *shape[1:]), chunks=(1, *shape[1:]), compressors=None)
            else:
                kw = dict(chunks=(cb, *shape[1:]))
            return g.create_array(name, shape=shape, dtype=dtype, fill_value=fill, **kw)

        array("global", (n, vmax, dim), "float16", 0, inner=True)
        array("tiles", (n, tmax, dim), "float16", 0, inner=True)
        gm = np.zeros((n, vmax), bool)
        tm = np.zeros((n, tmax), bool)
        boxes = np.zeros((n, tmax, 5), np.int32)
        vpath = np.full((n, vmax), "", dtype=object)
        vname = np.full((n, vmax), "", dtype=object)
        vflip = np.zeros((n, vmax), bool)
        vshape = np.zeros((n, vmax, 2), np.int32)
        for i, b in enumerate(bags):
            v, t = b.n_views, b.n_tiles
            if not (len(b.view_names) == len(b.view_flipped) == len(b.view_shapes) == v):
                raise ValueError(f"bag {b.bag_id}: view fields have different lengths")
            tb = np.asarray(b.tile_boxes, np.int32).reshape(t, 5)
            if t and (tb[:, 0].min() < 0 or tb[:, 0].max() >= max(v, 1)):
                raise ValueError(f"bag {b.bag_id}: a tile box names a view index outside 0..{v-1}")
            gm[i, :v] = True
            tm[i, :t] = True
            boxes[i, :t] = tb
            vpath[i, :v] = b.view_paths
            vname[i, :v] = b.view_names
            vflip[i, :v] = b.view_flipped
            vshape[i, :v] = np.asarray(b.view_shapes, np.int32).reshape(v, 2)
        for name, value, dtype, fill in [
            ("global_mask", gm, bool, False),
            ("tiles_mask", tm, bool, False),
            ("tile_boxes", boxes, "int32", 0),
            ("view_path", vpath, str, ""),
            ("view_name", vname, str, ""),
            ("view_flipped", vflip, bool, False),
            ("view_shape", vshape, "int32", 0),
            ("raw_label", np.array([b.raw_label for b in bags], dtype=object), str, ""),
            ("split_given", np.array([b.split_given for b in bags], np.int8), "int8", -1),
            ("bag_id", np.array(ids, dtype=object), str, ""),
            ("patient_id", np.array([b.patient_id for b in bags], dtype=object), str, ""),
            ("status", np.zeros(n, np.int8), "int8", PENDING),
        ]:
            a = array(name, value.shape, dtype, fill)
            a[...] = value.astype(str) if dtype is str else value
        meta = dict(attrs)
        meta.update(format_version=FORMAT_VERSION, dim=int(dim), chunk_bags=cb,
                    package_version=__version__)
        g.attrs.update(meta)
        g.attrs["planned"] = True  # last: marks a complete plan
        return cls(g, path)

    @classmethod
    def open(cls, path, *, expect: Mapping | None = None, mode: str = "r") -> Store:
        """Open an existing store; with `expect`, refuse one made with other settings.

        Raises FileNotFoundError if there is no store, ValueError for an unfinished plan or a
        foreign format, StoreMismatch naming every differing setting (stored vs requested).
        """
        import zarr

        try:
            g = _open_zarr_group(path, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise FileNotFoundError(f"no embeddings store at {path}") from err
        attrs = dict(g.attrs)
        if attrs.get("format_version") is None:
            raise ValueError(f"{path} is a zarr group but not a milpf-jax embeddings store")
        if attrs["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"store {path} has format version {attrs['format_version']}, this milpf-jax "
                f"reads version {FORMAT_VERSION}: re-extract it"
            )
        if not attrs.get("planned"):
            raise ValueError(f"store {path}: its plan pass did not finish; create it again")
        if expect is not None:
            diffs = attr_differences(attrs, expect)
            if diffs:
                lines = "\n".join(f"  {k}: stored {s!r}, requested {r!r}" for k, s, r in diffs)
                raise StoreMismatch(
                    f"store {path} was made with other settings:\n{lines}\n"
                    "Use another store path, or delete this one to re-extract."
                )
        return cls(g, path)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def attrs(self) -> dict:
        return dict(self._g.attrs)

    @property
    def n_bags(self) -> int:
        return self._g["status"].shape[0]

    @property
    def dim(self) -> int:
        return int(self._g.attrs["dim"])

    @property
    def chunk_bags(self) -> int:
        return int(self._g.attrs["chunk_bags"])

    def array(self, name: str) -> np.ndarray:
        """A whole small array (ids, masks, boxes, status), read into memory."""
        out = self._g[name][...]
        return out.astype(object) if out.dtype.kind in "OTU" else out

    def status(self) -> np.ndarray:
        return self._g["status"][...]

    def shard_range(self, index: int, count: int) -> range:
        """Bags of worker `index` of `count`: whole chunks, disjoint, covering every bag."""
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
        n_chunks = math.ceil(self.n_bags / self.chunk_bags)
        lo = index * n_chunks // count * self.chunk_bags
        hi = min(self.n_bags, (index + 1) * n_chunks // count * self.chunk_bags)
        return range(lo, hi)

    def read_bag(self, b: int) -> dict:
        """One bag's planned fields and embeddings (unpadded)."""
        gm = self._g["global_mask"][b]
        tm = self._g["tiles_mask"][b]
        v, t = int(gm.sum()), int(tm.sum())
        return dict(
            bag_id=str(self._g["bag_id"][b]),
            status=int(self._g["status"][b]),
            global_emb=self._g["global"][b, :v],
            tile_emb=self._g["tiles"][b, :t],
            tile_boxes=self._g["tile_boxes"][b, :t],
            view_path=[str(x) for x in self._g["view_path"][b, :v]],
            view_name=[str(x) for x in self._g["view_name"][b, :v]],
            view_flipped=self._g["view_flipped"][b, :v],
            view_shape=self._g["view_shape"][b, :v],
        )

    # -- filling (encoding workers) -----------------------------------------------------------

    def write_bag(self, b: int, global_emb: np.ndarray, tile_emb: np.ndarray) -> None:
        """Store one bag's embeddings, then mark it done (status is the last write).

        global_emb: [V, D] for the bag's planned views; tile_emb: [T, D] for its planned tiles.
        """
        bag_id = str(self._g["bag_id"][b])
        v = int(self._g["global_mask"][b].sum())
        t = int(self._g["tiles_mask"][b].sum())
        global_emb = np.asarray(global_emb)
        tile_emb = np.asarray(tile_emb)
        if tile_emb.size == 0:  # any empty shape stands for a bag without tiles
            tile_emb = tile_emb.reshape(0, self.dim)
        for what, arr, rows in (("global", global_emb, v), ("tile", tile_emb, t)):
            if arr.shape != (rows, self.dim):
                raise ValueError(
                    f"bag {bag_id}: {what} embeddings have shape {arr.shape}, the plan expects "
                    f"{(rows, self.dim)}"
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"bag {bag_id}: {what} embeddings hold NaN or inf")
            if np.abs(arr).max(initial=0) > np.finfo(np.float16).max:
                raise ValueError(f"bag {bag_id}: {what} embeddings overflow float16")
        gpad = np.zeros(self._g["global"].shape[1:], np.float16)
        gpad[:v] = global_emb
        tpad = np.zeros(self._g["tiles"].shape[1:], np.float16)
        tpad[:t] = tile_emb
        self._g["global"][b] = gpad
        self._g["tiles"][b] = tpad
        self._g["status"][b] = DONE

    def mark_failed(self, b: int) -> None:
        self._g["status"][b] = FAILED


# Rows converted per step when tiles change dtype on a copy: no full-size temporary is made.
COPY_ROWS = 1 << 16


@dataclass(frozen=True)
class PackedBags:
    """Bags ready for training: real tiles only, packed along one axis.

    tiles [N, D], tile_bag [N] (index into the B bags, non-decreasing), tile_view [N],
    tile_boxes [N, 4] (y0, x0, y1, x1 source pixels); views [B, Vmax, D], views_mask [B, Vmax];
    labels [B] int8 (0/1), splits [B] int8 (0 train, 1 val, 2 test); bag_ids, patient_ids,
    raw_labels [B] str; store_index [B] (row in the store). `info` records the mapping,
    split seed, excluded and skipped counts, and the store's attributes.
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
    mapping: str | None = None,
    split_seed: int = 0,
    fold: str | None = None,
    allow_partial: bool = False,
    dtype=np.float32,
) -> PackedBags:
    """Read a store into packed bags, applying a label mapping and a split seed.

    Args:
      store: a Store or a path.
      mapping: a name in labels.MAPPINGS; default: the one for the store's `label_kind`. Bags
        whose raw label the mapping leaves out are dropped and counted in info["excluded"].
      split_seed: seed of the 70/10/20 patient-grouped split (a manifest's split wins). Splits
        are drawn over every planned bag, so they do not change with the mapping.
      fold: "k/n": instead, fold k of an n-fold patient-grouped cross-validation drawn with
        split_seed (`labels.make_folds`): fold k is the test split.
      allow_partial: if False (default) a store with pending or failed bags is refused; if True
        those bags are skipped and counted in info["skipped"]. Never read as zeros. Bags that
        hold NaN or inf (written outside `write_bag`) are refused, named.
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
    raw = store.array("raw_label")
    patients = store.array("patient_id")
    mapping_name, table = labels.resolve_mapping(mapping, attrs["label_kind"])
    mapped = labels.map_labels(raw, table)
    if fold is None:
        splits = labels.make_splits(patients, raw, store.array("split_given"), seed=split_seed)
    else:
        k, n = labels.parse_fold(fold)
        splits = labels.make_folds(patients, raw, store.array("split_given"), fold=k, n_folds=n,
                                   seed=split_seed)
    done = status == DONE
    keep = done & (mapped >= 0)
    kept = np.flatnonzero(keep)
    views, views_mask, tiles, tile_bag, tile_view, tile_boxes = _read_kept(store, kept, dtype)
    info = dict(
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
