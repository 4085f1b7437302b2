"""The failures of an extraction: one row per image that could not be used, per shard, beside
the store.

`x.zarr` -> `x.failures/shard-<i>-of-<n>.csv`, the same rule for a local folder and an
object-store URL (zarr warns about foreign files inside a store, so the folder sits beside it).
Each shard writes only its own file, so concurrent workers never share one and no append is
needed (object storage has none): a shard rewrites its whole file, atomically (a temporary file
renamed into place; on object storage one PUT), and a kill leaves the previous version whole.
Reading merges every shard's file (and the single `x.failures.csv` of earlier versions).
Columns: bag_id, path (the image's view_ref in a pseudonymised cohort), stage (plan or encode)
and reason.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

from milpf_jax.data.store import is_url
from milpf_jax.files import write_text
from milpf_jax.reading.imaging import ImageReadError

FAILURE_COLUMNS = ("bag_id", "path", "stage", "reason")
_SHARD_FILE = re.compile(r"shard-\d+-of-\d+\.csv")


class ExtractionFailed(ValueError):
    """`strict` extraction stopped at the first image that failed (named in the message)."""


def _stem(store_path) -> str:
    return str(store_path).rstrip("/").removesuffix(".zarr")


def failures_dir(store_path) -> str:
    """The folder of a store's failure lists: `dir/x.zarr` -> `dir/x.failures` (URL or path)."""
    return _stem(store_path) + ".failures"


def failures_path(store_path, shard: tuple[int, int] = (0, 1)) -> str:
    """Shard (i, n)'s failure list: `dir/x.zarr` -> `dir/x.failures/shard-<i>-of-<n>.csv`."""
    return f"{failures_dir(store_path)}/shard-{int(shard[0])}-of-{int(shard[1])}.csv"


def _read_text(path: str) -> str | None:
    if is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        return fs.cat_file(inner).decode("utf-8") if fs.isfile(inner) else None
    return Path(path).read_text(encoding="utf-8") if os.path.isfile(path) else None


def _parse(text: str | None) -> list[dict]:
    if not text:
        return []
    rows = list(csv.reader(io.StringIO(text)))
    return [
        dict(zip(FAILURE_COLUMNS, r, strict=True))
        for r in rows[1:]
        if len(r) == len(FAILURE_COLUMNS)
    ]


def failure_files(store_path) -> list[str]:
    """Every shard's failure list of a store (sorted), then the earlier single CSV if any."""
    folder = failures_dir(store_path)
    if is_url(folder):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(folder)
        fs.invalidate_cache(inner)  # another worker may have written one since
        protocol = folder.split("://", 1)[0]
        names = [p.rsplit("/", 1)[-1] for p in (fs.ls(inner, detail=False)
                                                 if fs.isdir(inner) else [])]
        found = [f"{protocol}://{inner.rstrip('/')}/{n}" for n in names]
    else:
        found = [os.path.join(folder, n) for n in (os.listdir(folder)
                                                    if os.path.isdir(folder) else [])]
    shards = sorted(p for p in found if _SHARD_FILE.fullmatch(p.rsplit("/", 1)[-1]))
    legacy = _stem(store_path) + ".failures.csv"
    return shards + ([legacy] if _read_text(legacy) is not None else [])


def read_failures(path) -> list[dict]:
    """Rows of a failure list; given a store (or its `.failures` folder), every shard's rows
    merged, each row once. Broken lines are skipped; no list at all reads as []."""
    text = str(path)
    if text.endswith(".csv"):
        return _parse(_read_text(text))
    store = text.rstrip("/").removesuffix(".failures")
    rows, seen = [], set()
    for file in failure_files(store):
        for row in _parse(_read_text(file)):
            if tuple(row.values()) not in seen:
                seen.add(tuple(row.values()))
                rows.append(row)
    return rows


def append_failures(path, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Add (bag_id, path, stage, reason) rows not yet listed to one shard's failure list.

    Only that shard writes the file: it is read, extended and written back whole, atomically.
    """
    path = str(path)
    listed = [tuple(r.values()) for r in read_failures(path)]
    new = [tuple(map(str, r)) for r in rows]
    new = [r for i, r in enumerate(new) if r not in listed and r not in new[:i]]
    if not new:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows([*listed, *new])
    if is_url(path):
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        fs.pipe_file(inner, buf.getvalue().encode("utf-8"))  # one PUT: whole or not at all
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())


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
