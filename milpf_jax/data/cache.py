"""A local copy of a store on object storage, made once: what training reads.

Training reads every embedding of a store, once per split seed or fold; from `s3://` or `gs://`
that is the whole store over the network each time. `local_copy` copies it object by object
into `<cache>/stores/remote/<name>-<key>.zarr` (`milpf_jax.paths`) and later calls find the
copy. The key hashes the store's attributes (encoder, preprocessing, cohort, ...) and its
`status` array, so a store that was extracted further, or re-planned, is copied again and a
finished one never is. The copy is written under a temporary name and renamed into place when
whole, and refused if the store's status changed while it was copied (workers still writing).

Example:
    path = local_copy("s3://bucket/embed-medsiglip.zarr")    # copied the first time only
    packed = load_packed(path, split_seed=0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from milpf_jax.data.store import Store, is_url
from milpf_jax.paths import stores_dir

log = logging.getLogger(__name__)


def cache_key(attrs: Mapping, status: np.ndarray) -> str:
    """16 hex digits over a store's attributes and its status array."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dict(attrs), sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(status, np.int8).tobytes())
    return digest.hexdigest()[:16]


def copy_path(url: str, key: str, cache_dir=None) -> Path:
    """Where the copy of the store at `url` with cache key `key` lives."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(url).rstrip("/").rsplit("/", 1)[-1]
                  .removesuffix(".zarr")) or "store"
    return stores_dir(cache_dir) / "remote" / f"{name}-{key}.zarr"


def local_copy(url, *, cache_dir=None, storage_options: Mapping | None = None) -> Path:
    """The local copy of the store at `url` (an fsspec URL), made if missing; see the module.

    Raises FileNotFoundError / ValueError as `Store.open` does (no store, not a milpf-jax store),
    and ValueError if the store's status changed while it was being copied.
    """
    import fsspec

    url = str(url)
    if not is_url(url):
        raise ValueError(f"{url}: local_copy is for a store on object storage (an fsspec URL)")
    store = Store.open(url, storage_options=storage_options)
    status = store.status()
    key = cache_key(store.attrs, status)
    dest = copy_path(url, key, cache_dir)
    if dest.is_dir():
        log.info("%s: reading the local copy %s", url, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    fs.invalidate_cache()
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        log.info("%s: copying it to %s (once; later runs read the copy)", url, dest)
        root = root.rstrip("/")
        for name in fs.find(root):
            target = tmp / os.path.relpath(name, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(target))
        copied = Store.open(tmp).status()
        if not np.array_equal(copied, status):
            raise ValueError(
                f"store {url} changed while it was copied ({int(np.sum(copied != status))} "
                "bags changed status): its extraction is still running; train when it is done, "
                "or read it directly with --no-cache")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
