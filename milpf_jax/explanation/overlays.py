"""Overlays a radiologist looks at: the view in grey, its attention map in colour only where
the attention matters, boxes on top.

Predicted boxes are red with their scores on dark labels, ground truth green; a colour bar on
the air side gives the map's scale; every coordinate is in the file's own pixel frame
(`milpf_jax.explanation.maps`).
"""

from __future__ import annotations

import numpy as np

PREDICTED_RGB = (255, 0, 0)


TRUTH_RGB = (0, 255, 0)


MAP_FLOOR = 0.25  # map / reference below this is not drawn: the grey view stays untouched
OPACITY = (0.25, 0.65)  # opacity of the map at the floor and at the reference (peak)
COLORMAP = "turbo"  # matplotlib's; blue-green at the floor through yellow to red at the peak


def _colours(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] RGB in [0, 1] of the colour map, stretched over
    [MAP_FLOOR, 1] so the floor starts at its cool end."""
    from matplotlib import colormaps

    t = np.clip((v - MAP_FLOOR) / (1.0 - MAP_FLOOR), 0.0, 1.0)
    return colormaps[COLORMAP](0.15 + 0.85 * t)[..., :3]


def _air_side(grey: np.ndarray) -> str:
    """"left" or "right": the image edge with less tissue (darker outer fifth), for the bar."""
    fifth = max(1, grey.shape[1] // 5)
    return "left" if grey[:, :fifth].mean() < grey[:, -fifth:].mean() else "right"


def _label(draw, xy, text: str, font, colour) -> None:
    """`text` on a dark box, legible on any tissue and at thumbnail size."""
    x, y = xy
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    pad = max(1, (bottom - top) // 5)
    draw.rectangle([left - pad, top - pad, right + pad, bottom + pad], fill=(0, 0, 0))
    draw.text((x, y), text, fill=colour, font=font)


def _colour_bar(image, draw, side: str, font) -> None:
    """A vertical colour bar in a lower corner on the air side: the map's scale from the floor
    to the peak."""
    h, w = image.height, image.width
    bar_w, bar_h = max(4, w // 40), max(16, h // 3)
    margin = max(2, w // 50)
    x0 = margin if side == "left" else w - margin - bar_w
    y0 = h - margin * 3 - bar_h  # a lower corner: laterality markers sit in the upper ones
    ramp = np.linspace(1.0, MAP_FLOOR, bar_h)[:, None].repeat(bar_w, 1)  # peak on top
    rgb = np.rint(_colours(ramp) * 255).astype(np.uint8)
    from PIL import Image

    image.paste(Image.fromarray(rgb, "RGB"), (x0, y0))
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h], outline=(255, 255, 255))
    for text, y in (("peak", y0), (f"{MAP_FLOOR:.2g}", y0 + bar_h)):
        tw = draw.textlength(text, font=font)
        tx = x0 + bar_w + 3 if side == "left" else x0 - 3 - tw
        _label(draw, (tx, y - font.size // 2 if hasattr(font, "size") else y), text, font,
               (255, 255, 255))


def overlay_image(pixels, attention, *, reference: float | None = None, predicted=(), scores=(),
                  truths=(), colour_bar: bool = True):
    """An RGB PIL image: the view in grey, its attention map in colour where it matters, boxes.

    The map is drawn only where map / reference reaches MAP_FLOOR, its opacity rising from
    OPACITY[0] there to OPACITY[1] at the reference, so the mammogram stays readable elsewhere;
    a colour bar on the air side gives the scale (relative to the reference: the bag's peak,
    so every view of a breast shares one scale).

    Args:
      pixels: [H, W] display values in [0, 1], source frame (as the file stores them).
      attention: [H, W] map in the same frame; reference: the value drawn as the peak
        (default: the map's own max).
      predicted: [K, 4] boxes drawn in red, labelled with `scores` [K] when given.
      truths: [G, 4] ground-truth boxes drawn in green, last (on top).
      colour_bar: draw the scale (off for tiny images).
    """
    from PIL import Image, ImageDraw

    grey = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)  # [H, W]
    a = np.asarray(attention, np.float32)
    if a.shape != grey.shape:
        raise ValueError(f"overlay: attention map {a.shape} and view {grey.shape} differ")
    peak = float(a.max(initial=0.0)) if reference is None else float(reference)
    v = np.clip(a / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(a)
    shown = v >= MAP_FLOOR
    t = np.clip((v - MAP_FLOOR) / (1.0 - MAP_FLOOR), 0.0, 1.0)
    alpha = np.where(shown, OPACITY[0] + (OPACITY[1] - OPACITY[0]) * t, 0.0)[..., None]
    rgb = grey[..., None] * (1 - alpha) + _colours(v) * alpha  # [H, W, 3]
    image = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(a.shape) / 300))
    font = _font(max(10, round(max(a.shape) / 35)))
    labels = [f"{s:.2f}" for s in scores] if len(scores) else [None] * len(predicted)
    for box, label in zip(np.asarray(predicted).reshape(-1, 4), labels):
        y0, x0, y1, x1 = (int(c) for c in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=PREDICTED_RGB, width=width)
        if label:
            _label(draw, (x0 + width + 2, y0 + width + 2), label, font, (255, 80, 80))
    for box in np.asarray(truths).reshape(-1, 4):
        y0, x0, y1, x1 = (int(c) for c in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=TRUTH_RGB, width=width)
    if colour_bar and min(a.shape) >= 64:
        _colour_bar(image, draw, _air_side(grey), _font(max(9, round(max(a.shape) / 50))))
    return image


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        return ImageFont.load_default()

