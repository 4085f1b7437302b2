"""Other pipelines' feature files, written with h5py as those pipelines write them.

`milpf_bags` draws bags with a planted signal (`milpf_jax.synthetic.embeddings`), BI-RADS raw
labels (4 positive, 1 negative) and patient, exam and laterality ids; `write_milpf_h5` writes
them in the original MIL-PF code's layout (a group per breast named by its row, `images`,
`tiles`, `label`; the older layout's lone `embeddings` key for the groups asked for) with the
bags.csv that names them; `write_trident_h5s` writes one TRIDENT-style `.h5` per image of a
manifest whose images are real (tiny) PNG files.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from milpf_jax.synthetic.embeddings import SyntheticConfig, synthetic_bags

PATCH = 32  # the TRIDENT files' patch size, level-0 pixels


def milpf_bags(n_bags=48, dim=16, max_tiles=12, seed=0):
    """[(BagPlan, views [V, D], tiles [T, D])]: planted signal, BI-RADS labels, real ids."""
    cfg = SyntheticConfig(n_bags=n_bags, dim=dim, max_tiles=max_tiles, min_tiles=0, seed=seed,
                          tile_signal=0.9, global_signal=0.3)
    out = []
    for i, (plan, views, tiles) in enumerate(synthetic_bags(cfg)):
        patient = f"P{i // 2:03d}"
        side = "LR"[i % 2]
        plan = dataclasses.replace(
            plan, bag_id=f"{patient}/E1/{side}", patient_id=patient, exam_id="E1",
            laterality=side, raw_label="4" if plan.raw_label == "1" else "1")
        # float32, as the pipelines store them (the draws are float64)
        out.append((plan, views.astype(np.float32), tiles.astype(np.float32)))
    return out


def write_milpf_h5(h5_path: Path, bags_csv: Path, items, legacy=()) -> None:
    """The original code's file: group str(row) per bag; `legacy` rows get only `embeddings`."""
    import h5py

    with h5py.File(h5_path, "w") as f:
        for row, (plan, views, tiles) in enumerate(items):
            g = f.create_group(str(row))
            if row in legacy:
                g.create_dataset("embeddings", data=views.astype(np.float32))
            else:
                g.create_dataset("images", data=views.astype(np.float32))
                if len(tiles):
                    g.create_dataset("tiles", data=tiles.astype(np.float32))
            g.create_dataset("label", data=np.array([int(plan.raw_label == "4")], np.int64))
    with open(bags_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "bag_id", "patient_id", "exam_id", "laterality", "raw_label"])
        for row, (plan, _, _) in enumerate(items):
            w.writerow([row, plan.bag_id, plan.patient_id, plan.exam_id, plan.laterality,
                        plan.raw_label])


def trident_coords(n_tiles: int, view: int) -> np.ndarray:
    """[N, 2] x, y of patch corners (level-0 pixels), distinct per view."""
    k = np.arange(n_tiles)
    return np.stack([PATCH * (k % 3) + view, PATCH * (k // 3)], axis=1).astype(np.int64)


def write_trident_h5s(root: Path, items, global_dataset: str | None = None):
    """A manifest of 2 PNG views per bag (CC, MLO) and a TRIDENT-style .h5 per image.

    A bag's tiles are split between its views in order. Returns (manifest path, h5 folder,
    per-bag tile boxes [T, 5] as the import should make them)."""
    import h5py

    (root / "images").mkdir(parents=True, exist_ok=True)
    h5_dir = root / "features"
    h5_dir.mkdir(exist_ok=True)
    rows, boxes = [], []
    for plan, views, tiles in items:
        split = np.array_split(np.arange(len(tiles)), 2)
        bag_boxes = []
        for v, view in enumerate(("CC", "MLO")):
            stem = f"{plan.bag_id.replace('/', '_')}_{view}"
            Image.fromarray(np.full((8, 8), 40 * (v + 1), np.uint8)).save(
                root / "images" / f"{stem}.png")
            rows.append([f"images/{stem}.png", plan.patient_id, plan.exam_id, plan.laterality,
                         view, plan.raw_label])
            xy = trident_coords(len(split[v]), v)
            with h5py.File(h5_dir / f"{stem}.h5", "w") as f:
                f.create_dataset("features", data=tiles[split[v]].astype(np.float32))
                c = f.create_dataset("coords", data=xy)
                c.attrs["patch_size_level0"] = PATCH
                c.attrs["patch_size"] = 224  # at the target magnification: not the box size
                if global_dataset:
                    f.create_dataset(global_dataset, data=views[v][None].astype(np.float32))
            bag_boxes.append(np.stack([np.full(len(xy), v), xy[:, 1], xy[:, 0],
                                       xy[:, 1] + PATCH, xy[:, 0] + PATCH], axis=1))
        boxes.append(np.concatenate(bag_boxes).astype(np.int32).reshape(-1, 5))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "exam_id", "laterality", "view", "birads"])
        w.writerows(rows)
    return manifest, h5_dir, boxes
