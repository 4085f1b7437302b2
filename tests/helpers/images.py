"""Small synthetic breast images as PNG files (the extraction tests' cohorts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def textured_breast(rows=64, cols=48, right=False, seed=0) -> np.ndarray:
    """[rows, cols] in [0, 1]: a textured half-ellipse against one edge, dark background."""
    yy, xx = np.mgrid[:rows, :cols]
    inside = (xx / (0.75 * cols)) ** 2 + ((yy - rows / 2) / (0.46 * rows)) ** 2 < 1
    texture = np.random.default_rng(seed).uniform(0.0, 0.4, (rows, cols))
    img = np.where(inside, 0.45 + 0.3 * (1 - xx / cols) + texture, 0.0) / 1.15
    return img[:, ::-1] if right else img


def write_png(path: Path, img: np.ndarray) -> str:
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path)
    return path.name

