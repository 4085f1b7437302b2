"""Upgrade an embeddings store from format version 1 to 2, in place: `python -m
milpf_jax.data.upgrade STORE [STORE ...]`.

Version 2 records each bag's `exam_id` and `laterality` (and the cohort spec, where known).
Version-1 stores made from a manifest have bag ids of the form patient/exam/laterality, from
which both are read; any other id form (a synthetic store, for instance) is refused naming the
bag, and nothing is written. The embeddings are not touched: no re-extraction.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from milpf_jax.data.store import FORMAT_VERSION


def ids_from_bag_ids(bag_ids, patient_ids) -> tuple[np.ndarray, np.ndarray]:
    """(exam_id, laterality) [B] from bag ids "patient/exam/L|R"; ValueError naming the first bag
    of another form, or whose patient part is not its patient id."""
    exams, sides = [], []
    for bag, patient in zip(bag_ids, patient_ids, strict=True):
        parts = str(bag).split("/")
        if len(parts) != 3 or parts[2] not in ("L", "R") or parts[0] != str(patient) or not \
                parts[1]:
            raise ValueError(f"bag {bag!r} (patient {patient!r}): its id is not "
                             "patient/exam/laterality, so its exam cannot be read from it")
        exams.append(parts[1])
        sides.append(parts[2])
    return np.array(exams, dtype=object), np.array(sides, dtype=object)


def upgrade(path, *, cohort_spec: str | None = None) -> bool:
    """Upgrade the store at `path` to format version 2 in place. Returns False when it is
    already version 2 (nothing written); raises ValueError for any other form."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise FileNotFoundError(f"no embeddings store at {path}") from err
    version = group.attrs.get("format_version")
    if version == FORMAT_VERSION:
        return False
    if version != 1 or not group.attrs.get("planned"):
        raise ValueError(f"{path}: format version {version!r} (planned: "
                         f"{bool(group.attrs.get('planned'))}); only a finished version-1 plan "
                         "can be upgraded")
    exams, sides = ids_from_bag_ids(group["bag_id"][...], group["patient_id"][...])
    chunks = (int(group.attrs["chunk_bags"]),)
    for name, values in (("exam_id", exams), ("laterality", sides)):
        if name in group:  # an upgrade killed half-way: write it again
            del group[name]
        group.create_array(name, shape=values.shape, dtype=str, chunks=chunks, fill_value="")
        group[name][...] = values.astype(str)
    if cohort_spec:
        group.attrs["cohort_spec"] = cohort_spec
    group.attrs["format_version"] = FORMAT_VERSION  # last: the store reads as version 2 only now
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", nargs="+", metavar="STORE", help="store folders (or fsspec URLs)")
    p.add_argument("--cohort", help="the cohort spec the store was made from, recorded in it "
                                    "(e.g. data/manifest.csv), so later steps find the cohort")
    args = p.parse_args(argv)
    for path in args.stores:
        done = upgrade(path, cohort_spec=args.cohort)
        print(f"{path}: {'upgraded to' if done else 'already'} format version {FORMAT_VERSION}")
    return 0


if __name__ == "__main__":
    from milpf_jax.errors import run

    sys.exit(run(main))
