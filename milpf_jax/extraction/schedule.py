"""Which encoder batches a (resumed) extraction runs: pure bookkeeping, no I/O.

Per store chunk, the encoder inputs of its bags (each bag: its V global views, then its T tiles,
view by view) form one stream, cut into batches every `batch_size` rows from the chunk's start;
`batch_size` is fixed in the store when it is planned. A rerun re-encodes only the batches that
hold rows of pending bags, re-reading the done or failed neighbours those batches share, so every
embedding comes from the same batch as in an uninterrupted run (`milpf_jax.extraction.extract`).
"""

from __future__ import annotations

import math

import numpy as np

from milpf_jax.data.store import PENDING


def batch_schedule(rows, status, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which batches of one store chunk to encode, and which of its bags to read for them.

    The chunk's encoder inputs form one stream, bag after bag; batch k holds stream rows
    [k * batch_size, (k + 1) * batch_size). The batches to encode are those holding a row of a
    pending bag; every bag with a row in them is read, pending or not, so each batch is the
    same as in an uninterrupted run.

    Args:
      rows: [n] encoder inputs per bag (views + tiles); status: [n] store status per bag.
    Returns:
      batches: [K] ascending batch indices; read: [n] bool.
    """
    rows = np.asarray(rows, np.int64)
    ends = np.cumsum(rows)  # [n]
    starts = ends - rows
    n_batches = math.ceil(int(ends[-1]) / batch_size) if len(rows) else 0
    need = np.zeros(n_batches, bool)
    first = starts // batch_size
    last = (ends - 1) // batch_size
    for b in np.flatnonzero((np.asarray(status) == PENDING) & (rows > 0)):
        need[first[b] : last[b] + 1] = True
    read = np.array(
        [rows[b] > 0 and bool(need[first[b] : last[b] + 1].any()) for b in range(len(rows))], bool
    )
    return np.flatnonzero(need), read

