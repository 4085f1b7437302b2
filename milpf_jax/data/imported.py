"""Stores of imported embeddings: their provenance, and one store per source file.

Embeddings computed by another pipeline become a store through `Store.from_arrays`; this module
adds what an import must keep beside them and how it is written:

- provenance: `encoder = "imported:<name>"` (the name the user gave; there is no encoder this
  package could run again, so a command that re-encodes images for a run refuses such a run:
  `imported_encoder`), the import format, the source file and its SHA-256;
- once per source: importing a source with the same SHA-256 to the same path finds that store
  and writes nothing (`find_imported`); a store of another source, or anything else, at that
  path is refused;
- whole or not at all: the store is written under a temporary name beside the path and renamed
  into place when its last bag is written (`write_imported`), so a killed import leaves nothing
  at the path (and a rerun starts afresh).

    store = write_imported("mine.zarr", plans, tiles, views, attrs=dict(
        label_kind="birads", **provenance("medsiglip", "milpf-h5", "emb.hdf5", sha)))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from milpf_jax.data.store import BagPlan, Store, StoreMismatch

IMPORTED_PREFIX = "imported:"
# What must match for a store at the path to be the import asked for.
SOURCE_ATTRS = ("encoder", "import_format", "source_sha256", "label_kind")


def imported_encoder(attrs: Mapping) -> str | None:
    """The name given at import to a store's embeddings (`attrs`: a store's attributes, or a
    run's `store_attrs`); None for a store this package extracted with one of its encoders."""
    encoder = str(attrs.get("encoder", ""))
    return encoder[len(IMPORTED_PREFIX):] if encoder.startswith(IMPORTED_PREFIX) else None


def has_view_embeddings(attrs: Mapping) -> bool:
    """Whether the store holds view (global) embeddings; an import without them does not."""
    return bool(attrs.get("view_embeddings", True))


def provenance(encoder_name: str, import_format: str, source_file, sha256: str) -> dict:
    """The attributes that say where imported embeddings come from."""
    name = str(encoder_name).strip()
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"encoder name {encoder_name!r}: give the encoder's short name, "
                         "without spaces (e.g. medsiglip, dinov2-giant, uni2)")
    return dict(encoder=IMPORTED_PREFIX + name, model_id="", import_format=import_format,
                source_file=str(source_file), source_sha256=sha256)


def _local(path) -> Path:
    if "://" in str(path):
        raise ValueError(f"{path}: an import writes a local store; copy it to object storage "
                         "once it is written")
    return Path(path)


def find_imported(path, expect: Mapping) -> Store | None:
    """The store at `path` when it was imported from the same source (`SOURCE_ATTRS` of
    `expect` equal); None when nothing is there. Anything else there is refused, naming what
    differs."""
    path = _local(path)
    if not path.exists():
        return None
    try:
        store = Store.open(path)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"{path} exists and is not an embeddings store ({err}); choose "
                         "another store path") from err
    attrs = store.attrs
    diffs = [(k, attrs.get(k, "<missing>"), expect[k]) for k in SOURCE_ATTRS
             if k in expect and attrs.get(k) != expect[k]]
    if diffs:
        lines = "\n".join(f"  {k}: stored {s!r}, requested {r!r}" for k, s, r in diffs)
        raise StoreMismatch(f"store {path} holds other embeddings than this import:\n{lines}\n"
                            "Use another store path, or delete this one to import again.")
    return store


def write_imported(path, bags: Sequence[BagPlan], tile_embs: Sequence[np.ndarray],
                   global_embs: Sequence[np.ndarray] | None, *, attrs: Mapping,
                   chunk_bags: int) -> Store:
    """`Store.from_arrays` under a temporary name beside `path`, renamed into place when whole.

    A temporary store left by a killed import of this process id is removed first; `path`
    itself is never written to in place (it must not exist: see `find_imported`).
    """
    path = _local(path)
    if path.exists():
        raise ValueError(f"{path} exists; choose another store path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.importing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        Store.from_arrays(tmp, bags, tile_embs, global_embs, attrs=attrs, chunk_bags=chunk_bags)
        os.rename(tmp, path)  # a folder: fails rather than merges if `path` appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Store.open(path)
