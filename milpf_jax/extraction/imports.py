"""Import of precomputed features: another pipeline's embeddings into a store, no encoder run.

Formats (`ImportConfig.format`, `experiments/import_features.py --format`):

  milpf-h5      the original MIL-PF code's HDF5 file: one group per breast, named by the
                breast's row in that code's breast table, holding `images` [V, D] float32 (one
                embedding per view; the older layout's single `embeddings` key instead),
                optionally `tiles` [T, D], and `label` [1] (the mapped 0/1 label). The file holds
                no ids, so `bags.csv` gives them: columns group, bag_id, patient_id, exam_id,
                laterality, raw_label and optionally split (train, val, test, trainval).
                Groups without a row, rows without a group and arrays of the wrong shape are
                refused naming the group; so is a `label` that contradicts the row's raw label
                (a bags.csv out of step with the file). Tiles get no boxes (zeros).
  h5-per-image  one `.h5` per image, as TRIDENT and CLAM write them: `features` [N, D] and
                `coords` [N, 2] (x, y of each patch's top-left corner in level-0 pixels of the
                file as stored), and a patch size (`--patch-size`, else the attribute
                `patch_size_level0` or `patch_size` of `coords` or of the file). The manifest is
                this package's (`milpf_jax.reading.manifest`: bags, labels, splits; its images
                must be at their paths, their pixels are not read); image `<stem>.<ext>`'s
                features are `<h5-dir>/<stem>.h5`. Each patch becomes a tile of its bag with the
                box (view, y, x, y + ps, x + ps) and `view_flipped` false. `--global-dataset
                NAME` names each file's view embedding ([D] or [1, D]); without it the store has
                no view embeddings and only heads without a global stream
                (`--global-pool none`) train on it.

Provenance and writing are the data layer's (`milpf_jax.data.imported`): encoder
`imported:<name>`, the format, the source file and its SHA-256 (for h5-per-image, of the
manifest and every `.h5` file, in the manifest's order) are attributes; the same source
imported to the same path again finds the store and writes nothing.

    result = import_features(ImportConfig(format="milpf-h5", h5="emb.hdf5", bags="bags.csv",
                                          encoder_name="medsiglip", out="medsiglip.zarr"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from milpf_jax.config import check, check_choices, option
from milpf_jax.data.imported import (
    find_imported,
    has_view_embeddings,
    provenance,
    write_imported,
)
from milpf_jax.data.labels import MAPPINGS, map_labels
from milpf_jax.data.store import DEFAULT_CHUNK_BAGS, BagPlan, Store
from milpf_jax.reading.cohort import SPLIT_CODES, normalize_label
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.tables import add_problem, listing, raise_problems, read_csv

Format = Literal["milpf-h5", "h5-per-image"]
BAGS_COLUMNS = ("group", "bag_id", "patient_id", "exam_id", "laterality", "raw_label")
FORMAT_FLAGS = {"milpf-h5": ("h5", "bags"), "h5-per-image": ("manifest", "h5_dir")}


@dataclass(frozen=True)
class ImportConfig:
    """One import: the format, its source files, the name of the encoder that made them."""

    format: Format = option(help="milpf-h5: the original MIL-PF code's HDF5 file (with --h5, "
                                 "--bags); h5-per-image: a TRIDENT/CLAM .h5 per image (with "
                                 "--manifest, --h5-dir)")
    encoder_name: str = option(help="the encoder that computed the features (recorded as "
                                    "encoder 'imported:<name>')")
    out: str = option(help="the store to write (a local folder, e.g. mine.zarr)")
    h5: str | None = option(None, "milpf-h5: the HDF5 file of embeddings")
    bags: str | None = option(None, "milpf-h5: CSV of the file's groups (group, bag_id, "
                                    "patient_id, exam_id, laterality, raw_label, [split])")
    label_kind: Literal["birads", "binary"] = option(
        "birads", "milpf-h5: what bags.csv's raw_label holds (BI-RADS or 0/1)")
    manifest: str | None = option(None, "h5-per-image: the manifest CSV of the images")
    h5_dir: str | None = option(None, "h5-per-image: folder of <image stem>.h5 files")
    patch_size: int | None = option(None, "h5-per-image: patch side in level-0 pixels "
                                          "(default: the files' patch_size_level0 or "
                                          "patch_size attribute)")
    global_dataset: str | None = option(None, "h5-per-image: the dataset holding each image's "
                                              "view embedding (default: none)")
    chunk_bags: int = option(DEFAULT_CHUNK_BAGS, "bags per store chunk")

    def __post_init__(self):
        check_choices(self)
        for fmt, needed in FORMAT_FLAGS.items():
            if self.format == fmt:
                missing = [f for f in needed if getattr(self, f) is None]
                check(self, not missing, missing or "format", f"--format {fmt} needs them")
            else:
                given = [f for f in needed if getattr(self, f) is not None]
                check(self, not given, given or "format", f"not used by --format {self.format}")
        if self.format != "h5-per-image":
            given = [f for f in ("patch_size", "global_dataset") if getattr(self, f) is not None]
            check(self, not given, given or "format", "only for --format h5-per-image")
        check(self, self.patch_size is None or self.patch_size >= 1, "patch_size",
              f"{self.patch_size}; expected >= 1")
        check(self, self.chunk_bags >= 1, "chunk_bags", f"{self.chunk_bags}; expected >= 1")
        check(self, "://" not in self.out, "out", f"{self.out!r}: an import writes a local "
              "store; copy it to object storage afterwards")


@dataclass(frozen=True)
class ImportResult:
    """What `import_features` found or wrote: the store, and whether it was already there."""

    path: str
    found: bool
    n_bags: int
    n_tiles: int
    dim: int
    view_embeddings: bool


@dataclass(frozen=True)
class Imported:
    """A source read into the store's terms: plans and per-bag arrays, and the cohort's attrs."""

    bags: list[BagPlan]
    tiles: list[np.ndarray]  # per bag [T, D]
    views: list[np.ndarray] | None  # per bag [V, D]; None: the source has no view embeddings
    attrs: dict


# -- hashing -----------------------------------------------------------------------------------


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(paths: Iterable) -> str:
    """One SHA-256 over several files: of the lines `<sha256 of the file>  <file name>`."""
    lines = [f"{file_sha256(p)}  {Path(p).name}\n" for p in paths]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# -- milpf-h5: the original code's file --------------------------------------------------------


def _read_bags_csv(path: Path, label_kind: str) -> list[dict]:
    header, cells = read_csv(path)
    missing = [c for c in BAGS_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; bags.csv needs "
                         f"{list(BAGS_COLUMNS)} and optionally 'split' (found {header})")
    problems: dict[str, list[str]] = {}
    rows, seen = [], {}
    for n, c in cells:
        for col in BAGS_COLUMNS:
            if not c[col]:
                add_problem(problems, f"empty {col!r}", f"row {n}")
        label = normalize_label(label_kind, c["raw_label"])
        if c["raw_label"] and label is None:
            add_problem(problems, f"'raw_label' is not a {label_kind} value", f"row {n} "
                        f"({c['raw_label']!r})")
        if c["laterality"] and c["laterality"].upper() not in ("L", "R"):
            add_problem(problems, "laterality is not L or R", f"row {n} ({c['laterality']!r})")
        split = c.get("split", "").lower()
        if split and split not in SPLIT_CODES:
            add_problem(problems, f"'split' is not one of {', '.join(SPLIT_CODES)} or empty",
                        f"row {n} ({c['split']!r})")
        if c["group"] in seen:
            add_problem(problems, "group listed more than once",
                        f"row {seen[c['group']]} and row {n} ({c['group']})")
        seen.setdefault(c["group"], n)
        rows.append(dict(c, row=n, raw_label=label or "", laterality=c["laterality"].upper(),
                         split=SPLIT_CODES.get(split, -1)))
    raise_problems(path, problems)
    return rows


def _matrix(group, key: str, path: Path, dim: int | None) -> np.ndarray:
    a = np.asarray(group[key][...])
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim) or a.shape[1] == 0:
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise ValueError(f"{path}: group {group.name.lstrip('/')!r}: {key!r} has shape "
                         f"{list(a.shape)}; expected {want}")
    return a


def read_milpf_h5(h5_path, bags_csv, label_kind: str = "birads") -> Imported:
    """The original MIL-PF code's HDF5 file, its groups named by `bags_csv` (see the module)."""
    import h5py

    h5_path, bags_csv = Path(h5_path), Path(bags_csv)
    rows = _read_bags_csv(bags_csv, label_kind)
    mapping = MAPPINGS["birads" if label_kind == "birads" else "binary"]
    with h5py.File(h5_path, "r") as f:
        groups = set(f.keys())
        listed = {r["group"] for r in rows}
        unlisted = sorted(groups - listed)
        absent = sorted(listed - groups)
        row_of = {r["group"]: r["row"] for r in rows}
        parts = []
        if unlisted:
            parts.append(f"groups without a row in {bags_csv.name}: {listing(unlisted)}")
        if absent:
            parts.append(f"rows of {bags_csv.name} without a group in the file: "
                         f"{listing([f'row {row_of[g]} ({g})' for g in absent])}")
        if parts:
            raise ValueError(f"{h5_path}: " + "; ".join(parts))
        bags, tiles, views, dim = [], [], [], None
        for r in rows:
            g = f[r["group"]]
            if not isinstance(g, h5py.Group):
                raise ValueError(f"{h5_path}: {r['group']!r} is not a group")
            key = "images" if "images" in g else "embeddings" if "embeddings" in g else None
            if key is None:
                raise ValueError(f"{h5_path}: group {r['group']!r} has neither 'images' nor "
                                 f"'embeddings' (it holds {sorted(g.keys())})")
            v = _matrix(g, key, h5_path, dim)
            dim = v.shape[1]
            t = (_matrix(g, "tiles", h5_path, dim) if "tiles" in g
                 else np.zeros((0, dim), np.float32))
            if "label" in g:
                label = np.asarray(g["label"][...]).reshape(-1)
                if label.size != 1:
                    raise ValueError(f"{h5_path}: group {r['group']!r}: 'label' has shape "
                                     f"{list(g['label'].shape)}; expected [1]")
                mapped = int(map_labels([r["raw_label"]], mapping)[0])
                if mapped >= 0 and int(label[0]) != mapped:
                    raise ValueError(
                        f"{h5_path}: group {r['group']!r} has label {int(label[0])}, but its "
                        f"row in {bags_csv.name} (row {r['row']}, bag {r['bag_id']}) has raw "
                        f"label {r['raw_label']!r}, which maps to {mapped}: is bags.csv in "
                        "step with the file?")
            bags.append(BagPlan(
                bag_id=r["bag_id"], patient_id=r["patient_id"], raw_label=r["raw_label"],
                split_given=r["split"],
                view_paths=tuple(f"{r['group']}/{key}/{i}" for i in range(len(v))),
                view_names=("",) * len(v), view_flipped=(False,) * len(v),
                view_shapes=((0, 0),) * len(v),
                tile_boxes=np.zeros((len(t), 5), np.int32),
                exam_id=r["exam_id"], laterality=r["laterality"]))
            tiles.append(t)
            views.append(v)
    attrs = dict(cohort=h5_path.stem, cohort_spec="", label_kind=label_kind, preprocessing={})
    return Imported(bags=bags, tiles=tiles, views=views, attrs=attrs)


# -- h5-per-image: TRIDENT / CLAM files --------------------------------------------------------


def _patch_size(f, path: Path, given: int | None) -> int:
    if given is not None:
        return int(given)
    for where in (f["coords"].attrs, f.attrs):
        for name in ("patch_size_level0", "patch_size"):
            if name in where:
                return int(np.asarray(where[name]).reshape(-1)[0])
    raise ValueError(f"{path}: no patch size (no 'patch_size_level0' or 'patch_size' attribute "
                     "on 'coords' or the file); give --patch-size")


def _read_image_h5(path: Path, patch_size, global_dataset, view: int, dim):
    """(tile boxes [N, 5], features [N, D], view embedding [D] or None, patch size, shape)."""
    import h5py

    with h5py.File(path, "r") as f:
        for key in ("features", "coords", *([global_dataset] if global_dataset else [])):
            if key not in f:
                raise ValueError(f"{path}: no {key!r} dataset (it holds {sorted(f.keys())})")
        feats = np.asarray(f["features"][...])
        if feats.ndim == 3 and feats.shape[0] == 1:  # CLAM's [1, N, D]
            feats = feats[0]
        coords = np.asarray(f["coords"][...])
        if feats.ndim != 2 or (dim is not None and feats.shape[1] != dim):
            raise ValueError(f"{path}: 'features' has shape {list(feats.shape)}; expected "
                             f"[N, {dim or 'D'}]")
        if coords.shape != (len(feats), 2):
            raise ValueError(f"{path}: 'coords' has shape {list(coords.shape)}; expected "
                             f"[{len(feats)}, 2] (x, y per patch of 'features')")
        ps = _patch_size(f, path, patch_size)
        glob = None
        if global_dataset:
            glob = np.asarray(f[global_dataset][...]).reshape(-1)
            if glob.shape != (feats.shape[1],):
                raise ValueError(f"{path}: {global_dataset!r} has shape "
                                 f"{list(f[global_dataset].shape)}; expected [{feats.shape[1]}] "
                                 "or [1, D] (one view embedding)")
        attrs = f["coords"].attrs
        shape = (int(attrs.get("level0_height", 0)), int(attrs.get("level0_width", 0)))
    x, y = coords[:, 0].astype(np.int64), coords[:, 1].astype(np.int64)
    boxes = np.stack([np.full_like(x, view), y, x, y + ps, x + ps], axis=1).astype(np.int32)
    return boxes, feats, glob, ps, shape


def image_files(manifest, h5_dir):
    """(cohort, the .h5 file of each view of each bag) of a manifest's images, every file
    checked to exist; two images of one file stem are refused (one `<stem>.h5` for both)."""
    cohort = read_manifest(manifest)
    h5_dir = Path(h5_dir)
    if not h5_dir.is_dir():
        raise FileNotFoundError(2, "No such folder", str(h5_dir))
    stems: dict[str, str] = {}
    files, missing = [], []
    for b in cohort.bags:
        files.append([])
        for ref in b.images:
            stem = Path(ref.path).stem
            if stem in stems:
                raise ValueError(f"{manifest}: two images share the file stem {stem!r} "
                                 f"({stems[stem]}, {ref.path}), so one {stem}.h5 cannot tell "
                                 "them apart")
            stems[stem] = ref.path
            files[-1].append(h5_dir / f"{stem}.h5")
            if not files[-1][-1].is_file():
                missing.append(f"{stem}.h5 (row {ref.row})")
    if missing:
        raise ValueError(f"{h5_dir}: no features for {len(missing)} image(s) of {manifest}: "
                         f"{listing(missing)}")
    return cohort, files


def read_h5_per_image(manifest, h5_dir, *, patch_size: int | None = None,
                      global_dataset: str | None = None) -> Imported:
    """A TRIDENT/CLAM `.h5` per image of a manifest (see the module)."""
    cohort, files = image_files(manifest, h5_dir)
    bags, tiles, views, dim, sizes = [], [], [], None, set()
    for b in cohort.bags:
        boxes, feats, globs, shapes = [], [], [], []
        for v, path in enumerate(files[len(bags)]):
            bx, ft, gl, ps, shape = _read_image_h5(path, patch_size, global_dataset, v, dim)
            dim = ft.shape[1]
            sizes.add(ps)
            boxes.append(bx)
            feats.append(ft)
            globs.append(gl)
            shapes.append(shape)
        bags.append(BagPlan(
            bag_id=b.bag_id, patient_id=b.patient_id, raw_label=b.raw_label,
            split_given=b.split_given,
            view_paths=tuple(ref.ref or ref.path for ref in b.images),  # a view_ref, never a path
            view_names=tuple(ref.view for ref in b.images),
            view_flipped=(False,) * len(b.images), view_shapes=tuple(shapes),
            tile_boxes=np.concatenate(boxes).reshape(-1, 5), exam_id=b.exam_id,
            laterality=b.laterality, task_labels=b.task_labels))
        tiles.append(np.concatenate(feats).reshape(-1, dim))  # [T, D], views in order
        views.append(np.stack(globs) if global_dataset else None)
    attrs = dict(cohort=cohort.name, cohort_spec=cohort.spec, label_kind=cohort.label_kind,
                 preprocessing=dict(patch_size=sorted(sizes)),
                 **({"tasks": [list(t) for t in cohort.tasks]} if cohort.tasks else {}))
    return Imported(bags=bags, tiles=tiles, views=views if global_dataset else None, attrs=attrs)


# -- the import --------------------------------------------------------------------------------


def source_of(cfg: ImportConfig) -> tuple[str, str]:
    """(source file, SHA-256) of an import: the HDF5 file; or the manifest with every .h5."""
    if cfg.format == "milpf-h5":
        for p in (cfg.h5, cfg.bags):
            if not Path(p).is_file():
                raise FileNotFoundError(2, "No such file", p)
        return str(Path(cfg.h5).resolve()), file_sha256(cfg.h5)
    _, files = image_files(cfg.manifest, cfg.h5_dir)
    files = [Path(cfg.manifest), *(p for bag in files for p in bag)]
    return str(Path(cfg.manifest).resolve()), files_sha256(files)


def _result(store: Store, found: bool) -> ImportResult:
    attrs = store.attrs
    return ImportResult(path=store.path, found=found, n_bags=store.n_bags,
                        n_tiles=int(store.array("tiles_mask").sum()), dim=store.dim,
                        view_embeddings=has_view_embeddings(attrs))


def import_features(cfg: ImportConfig) -> ImportResult:
    """Import a source into the store `cfg.out`, or find it there already (`found`).

    The source's SHA-256 is computed first: a store at `cfg.out` made from the same source is
    returned as it is, without reading the source further; a store of another source there is
    refused (StoreMismatch). Otherwise the source is read and checked whole, then written.
    """
    source_file, sha = source_of(cfg)
    label_kind = cfg.label_kind if cfg.format == "milpf-h5" else None
    expect = dict(provenance(cfg.encoder_name, cfg.format, source_file, sha),
                  **({"label_kind": label_kind} if label_kind else {}))
    store = find_imported(cfg.out, expect)
    if store is not None:
        return _result(store, found=True)
    if cfg.format == "milpf-h5":
        imported = read_milpf_h5(cfg.h5, cfg.bags, cfg.label_kind)
    else:
        imported = read_h5_per_image(cfg.manifest, cfg.h5_dir, patch_size=cfg.patch_size,
                                     global_dataset=cfg.global_dataset)
    attrs = dict(imported.attrs, **expect)
    store = write_imported(cfg.out, imported.bags, imported.tiles, imported.views, attrs=attrs,
                           chunk_bags=cfg.chunk_bags)
    return _result(store, found=False)
