"""Encoder inputs of a bag: read its images, plan their tiles, cut them (in DataLoader workers).

`plan_bag` is the plan pass's work per bag, `bag_inputs` the encode pass's; `ordered` runs either
over a cohort in worker processes, yielding results in order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence

import numpy as np

from milpf_jax.data.store import BagPlan
from milpf_jax.extraction.failures import failure_reason, shown_as
from milpf_jax.reading.cohort import BagSpec
from milpf_jax.reading.imaging import ExcludedView, ImageReadError, read_image
from milpf_jax.reading.tiling import TilingConfig, area_resize, cut_tiles, global_view, plan_view


def plan_bag(bag: BagSpec, tiling: TilingConfig):
    """Plan one bag: read each image, drop excluded views, plan the tiles of the rest.

    Returns (plan, excluded, failures): plan is a BagPlan (None if the bag fails); excluded is
    [(path, reason)] of dropped work-up views; failures is [(path, reason)], empty when the bag
    is usable.
    """
    paths, names, flipped, shapes, boxes, excluded = [], [], [], [], [], []
    for ref in bag.images:
        try:
            image = read_image(ref.path, laterality=ref.laterality, view=ref.view)
            plan, _ = plan_view(image, tiling)
        except ExcludedView as err:
            excluded.append(shown_as(ref.path, ref.ref, err.reason))
            continue
        except (ImageReadError, FileNotFoundError, ValueError) as err:
            return None, excluded, [shown_as(ref.path, ref.ref, failure_reason(err))]
        index = np.full((plan.n_tiles, 1), len(paths), np.int32)
        boxes.append(np.concatenate([index, plan.source_boxes], axis=1))  # [T_v, 5]
        paths.append(ref.ref or ref.path)  # the store records a view_ref, never beside a path
        names.append(ref.view)
        # The net mirroring between the file and the tiled image (the original preset may add
        # its own flip on top of the reader's), so boxes and pixels map back to the file.
        flipped.append(bool(plan.transform.flipped))
        shapes.append(tuple(int(s) for s in image.source_shape))
    if not paths:
        kinds = ", ".join(sorted({reason for _, reason in excluded}))
        return (
            None,
            excluded,
            [(p, f"every view of the bag is excluded ({kinds})") for p, _ in excluded],
        )
    plan = BagPlan(
        bag_id=bag.bag_id,
        patient_id=bag.patient_id,
        raw_label=bag.raw_label,
        split_given=bag.split_given,
        view_paths=tuple(paths),
        view_names=tuple(names),
        view_flipped=tuple(flipped),
        view_shapes=tuple(shapes),
        tile_boxes=np.concatenate(boxes).astype(np.int32).reshape(-1, 5),  # [T, 5]
        exam_id=bag.exam_id,
        laterality=bag.laterality,
        task_labels=bag.task_labels,
    )
    return plan, excluded, []


def view_inputs(path: str, view: str, tiling: TilingConfig, input_size: int, expected_boxes=None):
    """Encoder inputs of one view: (global [S, S], tiles [T, S, S]) float32 in [0, 1].

    Tiles are cut at the plan's boxes; a tile size other than the encoder's input S is resized
    by area averaging. `expected_boxes` [T, 4] (source pixels, from the store) guards against a
    file that changed since it was planned.
    """
    image = read_image(path, view=view or None)
    plan, work = plan_view(image, tiling)
    if expected_boxes is not None and not np.array_equal(plan.source_boxes, expected_boxes):
        raise ImageReadError(
            path,
            f"its {plan.n_tiles} tiles differ from the store's plan of "
            f"{len(expected_boxes)} (file changed since planning?)",
        )
    whole = global_view(work, input_size)  # [S, S]
    tiles = cut_tiles(work, plan)  # [T, tile, tile]
    size = tiling.tile_size
    if size != input_size:
        scale = size / input_size
        resized = [area_resize(t, (input_size, input_size), scale) for t in tiles]
        tiles = np.stack(resized) if resized else np.zeros((0, input_size, input_size), np.float32)
    return whole, tiles


def bag_inputs(views, tiling: TilingConfig, input_size: int) -> np.ndarray:
    """[V + T, S, S]: the bag's global views, then its tiles view by view (the store's order).

    views: [(path, view name, source boxes [T_v, 4])] as planned.
    """
    wholes, tiles = [], []
    for path, name, boxes in views:
        whole, cut = view_inputs(path, name, tiling, input_size, boxes)
        wholes.append(whole[None])
        tiles.append(cut)
    return np.concatenate(wholes + tiles).astype(np.float32, copy=False)


class PlanJob:
    """Map-style dataset: bag i -> plan_bag(bag i)."""

    def __init__(self, bags: Sequence[BagSpec], tiling: TilingConfig):
        self.bags, self.tiling = list(bags), tiling

    def __len__(self):
        return len(self.bags)

    def __getitem__(self, i):
        return plan_bag(self.bags[i], self.tiling)


class EncodeJob:
    """Map-style dataset: item i -> (bag, inputs [V + T, S, S] or None, failure or None).

    items: [(bag index, views, read)]; a bag with read=False (failed before) gives None.
    """

    def __init__(self, items, tiling: TilingConfig, input_size: int):
        self.items, self.tiling, self.input_size = items, tiling, input_size

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        b, views, read = self.items[i]
        if not read:
            return b, None, None
        try:
            return b, bag_inputs(views, self.tiling, self.input_size), None
        except (ImageReadError, FileNotFoundError, ValueError) as err:
            # ImageReadError names its file in .path, FileNotFoundError in .filename.
            path = getattr(err, "path", None) or getattr(err, "filename", None) or ""
            return b, None, (path, failure_reason(err))


def _as_is(item):
    return item


def _die_with_parent(parent_pid: int, _worker_id: int) -> None:
    """DataLoader worker init: on Linux, ask for SIGKILL when the parent dies.

    A SIGKILLed extraction cannot stop its workers, and a worker blocked on a full queue would
    otherwise live on, holding the images it read and its parent's pipes.
    """
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before the request was made
            os._exit(1)


def ordered(job, workers: int) -> Iterator:
    """job[0], job[1], ... computed in `workers` DataLoader processes, yielded in order."""
    if not workers:  # in this process, one item at a time, as DataLoader would
        return (job[i] for i in range(len(job)))
    from torch.utils.data import DataLoader

    loader = DataLoader(
        job,
        batch_size=None,
        shuffle=False,
        num_workers=int(workers),
        collate_fn=_as_is,  # keep numpy arrays and dataclasses as they are
        worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
        prefetch_factor=4,
    )
    return iter(loader)
