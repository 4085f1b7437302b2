"""Where milpf-jax keeps what it makes: the cache root, and the time stamp of a run folder.

The cache holds extracted stores (`<cache>/stores/`), generated cohorts (`<cache>/cohorts/`)
and the XLA flags probed once per jaxlib (`<cache>/xla_flags.json`). It is the folder given, else
$MILPF_CACHE when set and not empty, else ~/.cache/milpf-jax: one rule for every command, so a
store that one command extracts is the store the next one finds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CACHE_ENV = "MILPF_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $MILPF_CACHE (when set and not empty), else ~/.cache/milpf-jax."""
    if cache_dir is not None and str(cache_dir):
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "milpf-jax").expanduser()


def stores_dir(cache_dir=None) -> Path:
    """`<cache>/stores`: stores extracted for a (cohort, encoder, preprocessing)."""
    return cache_root(cache_dir) / "stores"


def cohorts_dir(cache_dir=None) -> Path:
    """`<cache>/cohorts`: cohorts a source generates (the phantom's DICOMs)."""
    return cache_root(cache_dir) / "cohorts"


def run_stamp(when: float | None = None) -> str:
    """The UTC time that ends a run folder's default name, e.g. 20261202T132015Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def default_run_dir(*name_parts: str) -> Path:
    """`runs/<part>-<part>-...-<UTC time>`, relative to the working directory (a colon, as in
    an imported store's encoder `imported:<name>`, becomes '-': not every file system takes it)."""
    return Path("runs") / "-".join([*(str(p).replace(":", "-") for p in name_parts),
                                    run_stamp()])
