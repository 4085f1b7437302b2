"""Overlays a radiologist looks at: the view in grey, its attention map in colour, boxes on top.

Predicted boxes are red with their scores, ground truth green; every coordinate is in the
file's own pixel frame (`milpf_jax.explanation.maps`).
"""

from __future__ import annotations

import numpy as np

PREDICTED_RGB = (255, 0, 0)


TRUTH_RGB = (0, 255, 0)


def _jet(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] in [0, 1]: blue (low) through green to red (high)."""
    return np.clip(1.5 - np.abs(4.0 * v[..., None] - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def overlay_image(pixels, attention, *, reference: float | None = None, predicted=(), scores=(),
                  truths=()):
    """An RGB PIL image: the view in grey, its attention map in colour, boxes drawn on top.

    Args:
      pixels: [H, W] display values in [0, 1], source frame (as the file stores them).
      attention: [H, W] map in the same frame; colour and opacity grow with map / reference
        (default: its own max), so the views of one bag share one colour scale.
      predicted: [K, 4] boxes drawn in red, labelled with `scores` [K] when given.
      truths: [G, 4] ground-truth boxes drawn in green, last (on top).
    """
    from PIL import Image, ImageDraw

    grey = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)[..., None]  # [H, W, 1]
    a = np.asarray(attention, np.float32)
    if a.shape != grey.shape[:2]:
        raise ValueError(f"overlay: attention map {a.shape} and view {grey.shape[:2]} differ")
    peak = float(a.max(initial=0.0)) if reference is None else float(reference)
    v = np.clip(a / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(a)
    alpha = np.where(a > 0, 0.2 + 0.4 * v, 0.0)[..., None]  # [H, W, 1]
    rgb = grey * (1 - alpha) + _jet(v) * alpha  # [H, W, 3]
    image = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(a.shape) / 400))
    font = _font(max(10, round(max(a.shape) / 60)))
    labels = [f"{s:.2f}" for s in scores] if len(scores) else [None] * len(predicted)
    for box, label in zip(np.asarray(predicted).reshape(-1, 4), labels):
        y0, x0, y1, x1 = (int(c) for c in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=PREDICTED_RGB, width=width)
        if label:
            draw.text((x0 + width + 2, y0 + width + 1), label, fill=PREDICTED_RGB, font=font)
    for box in np.asarray(truths).reshape(-1, 4):
        y0, x0, y1, x1 = (int(c) for c in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=TRUTH_RGB, width=width)
    return image


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()

