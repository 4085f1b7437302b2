"""Atomic writes: every file milpf-jax writes appears whole or not at all.

Each writer writes a temporary file beside the target (a hidden name carrying the process id,
so two writers never share one) and renames it into place with `os.replace`, which is atomic on
one file system; a write that fails or is killed leaves the old file, if any, untouched.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np


def temporary_path(path: str | os.PathLike) -> Path:
    """Where a new `path` is written before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """open() a temporary file; on a clean exit it replaces `path`, else it is removed."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str, *, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_bytes(path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_json(path, obj) -> Path:
    """JSON with numpy scalars and arrays as plain values; NaN is written as NaN."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def write_csv(path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A CSV of `header` then one line per row (a sequence of cells)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def write_dict_csv(path, columns: Sequence[str], rows: Iterable[Mapping]) -> Path:
    """A CSV of `columns`, one line per dict row (missing keys are empty cells)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
