"""The failures CSV of an extraction: one row per image that could not be used, beside the store.

`x.zarr` -> `x.failures.csv` (zarr warns about foreign files inside a store). Columns: bag_id,
path (the image's view_ref in a pseudonymised cohort), stage (plan or encode) and reason.
Appends are kill-safe and shared by concurrent shards.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from milpf_jax.reading.imaging import ImageReadError

FAILURE_COLUMNS = ("bag_id", "path", "stage", "reason")


class ExtractionFailed(ValueError):
    """`strict` extraction stopped at the first image that failed (named in the message)."""


def failures_path(store_path) -> Path:
    """The failures CSV beside a store: `dir/x.zarr` -> `dir/x.failures.csv`.

    For an object-store URL it is written in the current folder (appending is local-only).
    """
    text = str(store_path).rstrip("/")
    stem = text.removesuffix(".zarr")
    if "://" in stem:
        stem = stem.rsplit("/", 1)[-1]
    return Path(stem + ".failures.csv")


def read_failures(path) -> list[dict]:
    """Rows of a failures CSV (an empty list when there is none); broken lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [
        dict(zip(FAILURE_COLUMNS, r, strict=True))
        for r in rows[1:]
        if len(r) == len(FAILURE_COLUMNS)
    ]


def append_failures(path, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Append (bag_id, path, stage, reason) rows not yet listed, in one write.

    Kill-safe: the header comes with the file (created under another name, then linked into
    place, so concurrent shards never write it twice), rows go in one O_APPEND write followed by
    fsync, and a line cut short by a kill is ended before anything is appended after it.
    """
    path = Path(path)
    if not rows:
        return
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.write(fd, (",".join(FAILURE_COLUMNS) + "\n").encode())
            os.fsync(fd)
            os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            pass  # another shard created it first
        finally:
            os.unlink(tmp)
    listed = {tuple(r.values()) for r in read_failures(path)}
    new = [tuple(map(str, r)) for r in rows]
    new = [r for i, r in enumerate(new) if r not in listed and r not in new[:i]]
    if not new:
        return
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(new)
    data = buf.getvalue().encode()
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            data = b"\n" + data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def failure_reason(err: Exception) -> str:
    return err.reason if isinstance(err, ImageReadError) else str(err)


def shown_as(path: str, ref: str, reason: str) -> tuple[str, str]:
    """(name, reason) to record for an image: with a view_ref, the ref, and the reason with the
    path and the file's name replaced by it (a pseudonymised cohort never records a path)."""
    if not ref:
        return path, reason
    reason = reason.replace(path, ref)
    name = re.escape(os.path.basename(path))
    return ref, re.sub(rf"(?<![\w.-]){name}(?![\w.-])", ref, reason) if name else reason
