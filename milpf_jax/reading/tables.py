"""CSV tables read with every problem named: the file, the rows, the values.

`read_csv` gives a header and numbered rows (the line a spreadsheet shows); readers collect
problems with `add_problem` as they validate, then `raise_problems` reports them all at once,
long lists cut short (`listing`), so one run shows a user everything to mend.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

MAX_LISTED = 20  # rows named in one error line; the rest are counted


def listing(items: list[str]) -> str:
    """'row 3, row 5, ... and 12 more': long lists are cut so the message stays readable."""
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def add_problem(problems: dict[str, list[str]], what: str, where: str) -> None:
    problems.setdefault(what, []).append(where)


def raise_problems(source: object, problems: dict[str, list[str]]) -> None:
    """Raise one ValueError naming `source` and every problem with the rows it concerns."""
    if problems:
        lines = [f"- {what}: {listing(where)}" for what, where in problems.items()]
        raise ValueError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(lines))


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (stripped, lower-case) and (row number, {column: stripped value}) per data row.

    The row number is the CSV line the record ends on, so it matches what a spreadsheet shows
    (2 = first data row). Blank lines are skipped. Too many cells in a row is an error.
    """
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        rows: list[tuple[int, dict[str, str]]] = []
        long_rows: list[str] = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [c.strip().lower() for c in record]
                dup = sorted(c for c, n in Counter(header).items() if n > 1)
                if dup:
                    raise ValueError(f"{path}: header repeats column(s) {dup}; names must differ")
                continue
            if len(record) > len(header):
                long_rows.append(f"row {reader.line_num} ({len(record)} cells)")
                continue
            record = record + [""] * (len(header) - len(record))
            rows.append(
                (reader.line_num, {h: c.strip() for h, c in zip(header, record, strict=True)})
            )
    if header is None:
        raise ValueError(f"{path}: empty CSV, expected a header row")
    if long_rows:
        raise_problems(path, {f"more cells than the {len(header)} header columns": long_rows})
    return header, rows

