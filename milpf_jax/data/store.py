"""The embeddings store (Zarr v3): its schema and whole lifecycle: plan once, fill resumably.

Schema (DESIGN.md, "Embeddings store"), format version 2, bag axis first:

  global      [B, Vmax, D] float16   one embedding per view
  global_mask [B, Vmax]    bool
  tiles       [B, Tmax, D] float16   one embedding per tissue tile, all views of the bag
  tiles_mask  [B, Tmax]    bool
  tile_boxes  [B, Tmax, 5] int32     view index, y0, x0, y1, x1 (half-open, source pixels)
  view_path, view_name [B, Vmax] str;  view_flipped [B, Vmax] bool;  view_shape [B, Vmax, 2] int32
  raw_label [B] str;  split_given [B] int8;  bag_id, patient_id [B] str
  exam_id, laterality [B] str        the bag's exam and breast ("" where a store has none)
  task_labels [B, K] str             a cohort whose tasks are named (a public cohort's birads,
                                     mass, calcification; rsna's one cancer): each task's raw
                                     label ("" = left out); raw_label is the first (default) one
  status    [B] int8                 0 pending, 1 done, 2 failed; written last per bag

Attributes: format_version, label_kind, tasks ([[task, label kind], ...] when named), encoder,
model_id, dim, preprocessing, cohort (its name)
and cohort_spec (the spec that reads the cohort again, `milpf_jax.reading.sources`), chunk_bags,
batch_size, package_version; view_embeddings (False for a store imported without view
embeddings, `Store.from_arrays`: `global` is then zeros; absent means True). A version-1 store
(no exam_id, laterality) is refused with the command that upgrades it in place:
`python -m milpf_jax.data.upgrade STORE`.

A plan pass (`Store.create`) fixes every shape, id, view, box and mask before any encoding;
encoding workers then fill embeddings with `write_bag`, which writes `status` last. The bag axis
is cut into chunks of `chunk_bags` bags (zarr shards, one inner chunk per bag), and
`shard_range(i, n)` hands each worker whole chunks, so no two writers ever touch one file.
Labels stay raw: the mapping and the split seed are applied by `milpf_jax.data.packed`.

The lifecycle at the end of this module decides what a path holds before an extraction writes:
a finished plan to reuse (checked against the settings asked for), a plan that a kill cut short
(planned again), or something else (refused); shards other than 0 wait for shard 0's plan.

Example:
  >>> store = Store.create("x.zarr", plans, dim=1280, attrs=dict(label_kind="birads", ...))
  >>> store.write_bag(0, global_emb, tile_emb)    # [V, D], [T, D]
  >>> packed = load_packed(Store.open("x.zarr"), split_seed=0)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from milpf_jax import __version__
from milpf_jax.reading.cohort import task_name_of

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
UPGRADE_COMMAND = "python -m milpf_jax.data.upgrade"
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
    exam_id: str = ""  # "" where the bags name no exam (synthetic stores)
    laterality: str = ""  # "L", "R", or ""
    task_labels: tuple[str, ...] = ()  # one raw label per task of attrs["tasks"], when named

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


def is_url(path) -> bool:
    """Whether a store path is an fsspec URL (`s3://`, `gs://`, `file://`, ...), not a folder."""
    return "://" in str(path)


def _open_zarr_group(path, mode: str, storage_options: Mapping | None = None):
    """zarr's group at a folder or an fsspec URL; `storage_options` go to the URL's file system
    (s3fs: key, secret, endpoint_url, ...; without them it reads AWS_* from the environment)."""
    import zarr

    if storage_options and not is_url(path):
        raise ValueError(f"store {path}: storage_options are for an fsspec URL (s3://...), "
                         "not a local folder")
    kw = {"storage_options": dict(storage_options)} if storage_options else {}
    try:
        return zarr.open_group(str(path), mode=mode, **kw)
    except ImportError as err:  # fsspec names the package of the URL's protocol
        raise ValueError(f"store {path}: {err} (for s3://: the s3 extra, "
                         "pip install -e '.[s3]')") from err


class Store:
    """A handle on one embeddings store. Create with `Store.create`, reopen with `Store.open`.

    A store path is a local folder or an fsspec URL zarr can open (`s3://bucket/x.zarr`,
    `gs://...`, `file://...`); `storage_options` (credentials, endpoint) go to its file system.
    """

    def __init__(self, group, path, storage_options: Mapping | None = None):
        self._g = group
        self.path = str(path)
        self.storage_options = dict(storage_options or {})

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
        storage_options: Mapping | None = None,
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
        n_tasks = len(attrs.get("tasks") or ())
        if n_tasks and any(len(b.task_labels) != n_tasks for b in bags):
            raise ValueError(f"store {path}: every bag needs one raw label per task "
                             f"({n_tasks}: {[t for t, _ in attrs['tasks']]})")
        ids = [b.bag_id for b in bags]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"store {path}: duplicate bag ids in the plan, e.g. {dup}")
        n = len(bags)
        vmax = max(1, max(b.n_views for b in bags))
        tmax = max(1, max(b.n_tiles for b in bags))
        cb = int(chunk_bags)
        g = _open_zarr_group(path, mode="w", storage_options=storage_options)

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
            ("exam_id", np.array([b.exam_id for b in bags], dtype=object), str, ""),
            ("laterality", np.array([b.laterality for b in bags], dtype=object), str, ""),
            ("status", np.zeros(n, np.int8), "int8", PENDING),
        ] + ([("task_labels", np.array([b.task_labels for b in bags], dtype=object), str, "")]
             if n_tasks else []):
            a = array(name, value.shape, dtype, fill)
            a[...] = value.astype(str) if dtype is str else value
        meta = dict(attrs)
        meta.update(format_version=FORMAT_VERSION, dim=int(dim), chunk_bags=cb,
                    package_version=__version__)
        # One write: zarr's attrs.update writes key by key, and a shard waiting for this plan
        # that read a part of them would take the store for a foreign one.
        g.attrs.put(meta)
        g.attrs["planned"] = True  # last: marks a complete plan
        return cls(g, path, storage_options)

    @classmethod
    def from_arrays(
        cls,
        path,
        bags: Sequence[BagPlan],
        tile_embs: Sequence[np.ndarray],
        global_embs: Sequence[np.ndarray] | None = None,
        *,
        attrs: Mapping,
        chunk_bags: int = DEFAULT_CHUNK_BAGS,
    ) -> Store:
        """A finished store from embeddings you already hold ("bring your own embeddings").

        bags: one BagPlan per bag (ids, labels, views, tile boxes); tile_embs: per bag [T, D]
        (T = its plan's tiles, may be 0); global_embs: per bag [V, D] (V = its plan's views), or
        None when there are none: the store then records `view_embeddings = False` and only
        heads without a global stream (`--global-pool none`) train on it. `attrs` must hold
        `label_kind`; D is taken from the arrays. Written a chunk of bags at a time (one write
        per array and chunk, `status` last), checked like `write_bag`.

            store = Store.from_arrays("mine.zarr", plans, tiles, views,
                                      attrs=dict(label_kind="birads", encoder="mine"))
        """
        if len(tile_embs) != len(bags) or (global_embs is not None
                                           and len(global_embs) != len(bags)):
            raise ValueError(f"store {path}: {len(bags)} bags but {len(tile_embs)} tile arrays"
                             + ("" if global_embs is None else f", {len(global_embs)} view "
                                "arrays"))
        dims = {np.shape(a)[-1] for a in [*tile_embs, *(global_embs or ())] if np.size(a)}
        if len(dims) != 1:
            raise ValueError(f"store {path}: the embeddings have dimensions {sorted(dims)}; "
                             "expected one D" if dims else f"store {path}: no embeddings at all")
        meta = dict(attrs, view_embeddings=global_embs is not None)
        store = cls.create(path, bags, dim=dims.pop(), attrs=meta, chunk_bags=chunk_bags)
        for c0 in range(0, len(bags), store.chunk_bags):
            sel = slice(c0, min(len(bags), c0 + store.chunk_bags))
            store.write_bags(c0, tile_embs[sel], None if global_embs is None else global_embs[sel])
        return store

    @classmethod
    def open(cls, path, *, expect: Mapping | None = None, mode: str = "r",
             storage_options: Mapping | None = None) -> Store:
        """Open an existing store; with `expect`, refuse one made with other settings.

        Raises FileNotFoundError if there is no store, ValueError for an unfinished plan or a
        foreign format, StoreMismatch naming every differing setting (stored vs requested).
        """
        import zarr

        try:
            g = _open_zarr_group(path, mode="r" if mode == "r" else "r+",
                                 storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
            raise FileNotFoundError(f"no embeddings store at {path}") from err
        attrs = dict(g.attrs)
        if attrs.get("format_version") is None:
            raise ValueError(f"{path} is a zarr group but not a milpf-jax embeddings store")
        if attrs["format_version"] == 1:
            raise ValueError(
                f"store {path} has format version 1, this milpf-jax reads version "
                f"{FORMAT_VERSION} (which records each bag's exam and laterality): upgrade it in "
                f"place with `{UPGRADE_COMMAND} {path}`"
            )
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
        return cls(g, path, storage_options)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def attrs(self) -> dict:
        return dict(self._g.attrs)

    def tasks(self) -> list[tuple[str, str]]:
        """(task, label kind) of every task the store holds raw labels for, the default first."""
        attrs = self._g.attrs
        held = attrs.get("tasks")
        if held:
            return [(str(t), str(k)) for t, k in held]
        return [(task_name_of(attrs["label_kind"]), attrs["label_kind"])]

    def task_raw_labels(self, task: str | None) -> tuple[str, str, np.ndarray]:
        """(task, label kind, [B] raw labels) of `task` (None: the default task); an unknown
        task raises naming the store's tasks."""
        tasks = self.tasks()
        names = [t for t, _ in tasks]
        if task is None:
            task = names[0]
        if task not in names:
            raise ValueError(f"store {self.path}: no task {task!r}; it holds "
                             f"{', '.join(names)} (choose one with --task)")
        i = names.index(task)
        raw = (self.array("task_labels")[:, i] if self._g.attrs.get("tasks")
               else self.array("raw_label"))
        return task, tasks[i][1], raw

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

    def write_bags(self, start: int, tile_embs: Sequence[np.ndarray],
                   global_embs: Sequence[np.ndarray] | None) -> None:
        """Store bags start, start + 1, ... at once (one write per array; status last), with
        `write_bag`'s checks; None for global_embs leaves the views' embeddings unwritten
        (zeros: a store whose `view_embeddings` attribute is False). Nothing is written when a
        bag is refused."""
        stop = start + len(tile_embs)
        ids = self._g["bag_id"][start:stop]
        n_views = self._g["global_mask"][start:stop].sum(axis=1)
        n_tiles = self._g["tiles_mask"][start:stop].sum(axis=1)
        gpad = np.zeros((len(tile_embs), *self._g["global"].shape[1:]), np.float16)
        tpad = np.zeros((len(tile_embs), *self._g["tiles"].shape[1:]), np.float16)
        for k, tiles in enumerate(tile_embs):
            tiles = np.asarray(tiles).reshape(-1, self.dim) if np.size(tiles) == 0 else tiles
            tpad[k, :n_tiles[k]] = _checked(str(ids[k]), "tile", tiles, int(n_tiles[k]), self.dim)
            if global_embs is not None:
                gpad[k, :n_views[k]] = _checked(str(ids[k]), "global", global_embs[k],
                                                int(n_views[k]), self.dim)
        if global_embs is not None:
            self._g["global"][start:stop] = gpad
        self._g["tiles"][start:stop] = tpad
        self._g["status"][start:stop] = DONE

    def mark_failed(self, b: int) -> None:
        self._g["status"][b] = FAILED


def _checked(bag_id: str, what: str, arr, rows: int, dim: int) -> np.ndarray:
    """`arr` as a [rows, dim] array of finite values float16 can hold, else ValueError naming
    the bag (the checks of `Store.write_bag`)."""
    arr = np.asarray(arr)
    if arr.shape != (rows, dim):
        raise ValueError(f"bag {bag_id}: {what} embeddings have shape {arr.shape}, the plan "
                         f"expects {(rows, dim)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"bag {bag_id}: {what} embeddings hold NaN or inf")
    if np.abs(arr).max(initial=0) > np.finfo(np.float16).max:
        raise ValueError(f"bag {bag_id}: {what} embeddings overflow float16")
    return arr


# -- lifecycle: a store found, planned again, or waited for --------------------------------

PLAN_WAIT_S = 3600.0  # how long shards other than 0 wait for shard 0's plan
# The arrays Store.create makes, in order: a zarr group holding only some of them and no
# attributes is a plan that was killed, which may be planned again; anything else is refused.
STORE_ARRAYS = frozenset({
    "global", "tiles", "global_mask", "tiles_mask", "tile_boxes", "view_path", "view_name",
    "view_flipped", "view_shape", "raw_label", "split_given", "bag_id", "patient_id", "exam_id",
    "laterality", "status", "task_labels",
})  # fmt: skip


def plan_leftovers(folder: str) -> bool:
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


def existing_store(out, expect: dict, cohort_id: str) -> Store | None:
    """The planned store at `out`, checked against the settings; None when there is none yet or
    its plan was cut short (then it is planned again). Anything else at `out` is refused."""
    import zarr

    try:
        group = _open_zarr_group(out, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        text = str(out)
        if (
            not is_url(text)
            and os.path.exists(text)
            and (not os.path.isdir(text) or os.listdir(text))
        ):
            if plan_leftovers(text):
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


def wait_for_plan(out, expect, cohort_id, shard, wait_s: float) -> Store:
    """Shards other than 0 wait for shard 0 to finish the plan."""
    log.info("shard %d/%d: waiting for shard 0 to plan %s", *shard, out)
    deadline = time.monotonic() + wait_s
    while True:
        store = existing_store(out, expect, cohort_id)
        if store is not None:
            return store
        if time.monotonic() >= deadline:
            raise ValueError(
                f"shard {shard[0]}/{shard[1]}: no finished plan at {out} after {wait_s:.0f} s; "
                "shard 0 plans the store: start it too (or first)"
            )
        time.sleep(min(1.0, wait_s))


def mark_plan_failures(store: Store, bags: range) -> None:
    """Bags that failed at planning get status failed (in this shard's chunks only)."""
    status = store.status()
    for key in store.attrs.get("plan_failed", {}):
        b = int(key)
        if b in bags and status[b] == PENDING:
            store.mark_failed(b)

