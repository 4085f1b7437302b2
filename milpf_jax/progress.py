"""Progress bars that suit where they are shown.

On a terminal or in a notebook: tqdm as usual. Written to a file (a SLURM or nohup log, CI),
tqdm would append a carriage-return update about ten times a second, megabytes of them in a long
extraction; there a bar updates every `LOG_INTERVAL_S` seconds instead. `TQDM_MININTERVAL` in the
environment (tqdm's own override) wins over both.
"""

from __future__ import annotations

import os
import sys

LOG_INTERVAL_S = 30.0


def _shown_live(stream) -> bool:
    """A terminal, or a Jupyter kernel (whose stderr is no terminal, but renders the bar)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def progress_bar(iterable=None, **kwargs):
    """tqdm.auto.tqdm(iterable, **kwargs), updating every LOG_INTERVAL_S s when stderr is a file."""
    from tqdm.auto import tqdm

    if os.environ.get("TQDM_MININTERVAL"):  # read now: tqdm reads it once, at its import
        kwargs.setdefault("mininterval", float(os.environ["TQDM_MININTERVAL"]))
    elif not _shown_live(kwargs.get("file") or sys.stderr):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)
