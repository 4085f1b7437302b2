"""The mini-MIAS database (or a subset of it) as a cohort: `mias(DIR)`, spec `mias:DIR`.

`DIR` holds `Info.txt` and `images/mdbNNN.png`. Odd NNN is a left breast, even NNN the right
breast of the same woman; each woman is one patient with one exam ("1"), and each image is its
own bag with one MLO view. Raw labels are N, B, M per image (label kind "mias"). Lesion circles
become boxes in image rows (Info.txt's origin is the bottom-left corner).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from milpf_jax.reading.cohort import BagSpec, Cohort, ImageRef, Lesion
from milpf_jax.reading.tables import add_problem, listing, raise_problems


def _png_size(path: Path) -> tuple[int, int]:
    """(rows, columns) read from a PNG's IHDR chunk, without decoding the pixels."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file (bad signature or no IHDR chunk)")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


_MIAS_REF = re.compile(r"^mdb(\d{3})$")


def _parse_mias_info(info: Path) -> dict[str, list[tuple[str, str, tuple[int, int, int] | None]]]:
    """Info.txt -> {refnum: [(class, severity, (x, y, radius) or None)]}.

    A NORM row gives ("NORM", "", None); a row without a centre gives a None circle.
    """
    images: dict[str, list] = {}
    problems: dict[str, list[str]] = {}
    for n, line in enumerate(info.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        ref, cls = tokens[0], tokens[2] if len(tokens) > 2 else ""
        if not _MIAS_REF.match(ref) or not cls:
            add_problem(
                problems, "expected 'mdbNNN BG CLASS [SEVERITY X Y RADIUS]'", f"line {n} ({line!r})"
            )
            continue
        entries = images.setdefault(ref, [])
        if cls == "NORM":
            entries.append(("NORM", "", None))
            continue
        severity = tokens[3] if len(tokens) > 3 else ""
        if severity not in ("B", "M"):
            add_problem(problems, "severity is not B or M", f"line {n} ({line!r})")
            continue
        # Some rows (mdb059 here) name the abnormality but give no centre; they label the image
        # but yield no box.
        coords = tokens[4:7]
        has_circle = len(coords) == 3 and all(t.isdigit() for t in coords)
        entries.append((cls, severity, tuple(map(int, coords)) if has_circle else None))
    raise_problems(info, problems)
    return images


def _mias_label(entries: list) -> str:
    """An image's label: M if any abnormality is malignant, else B if any benign, else N."""
    severities = {sev for _, sev, _ in entries}
    return "M" if "M" in severities else "B" if "B" in severities else "N"


def _circle_box(circle: tuple[int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """mini-MIAS circle (x, y from the BOTTOM-left corner, radius) -> clipped y0, x0, y1, x1."""
    x, y, r = circle
    rows, cols = shape
    row = rows - y
    return max(row - r, 0), max(x - r, 0), min(row + r, rows), min(x + r, cols)


def mias(directory: str | os.PathLike) -> Cohort:
    """The mini-MIAS folder `directory` as a cohort, label_kind "mias" (module docstring)."""
    root = Path(directory).expanduser().resolve()
    info, image_dir = root / "Info.txt", root / "images"
    if not info.is_file() or not image_dir.is_dir():
        raise FileNotFoundError(
            f"{root}: not a mini-MIAS folder; expected Info.txt and images/mdbNNN.png in it"
        )
    entries = _parse_mias_info(info)
    missing = [str(image_dir / f"{ref}.png") for ref in entries]
    missing = [p for p in missing if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{info}: listed images not found: {listing(missing)}")

    bags, lesions = [], []
    for ref in sorted(entries):
        number = int(ref[3:])
        path = str(image_dir / f"{ref}.png")
        patient = f"mias{(number + 1) // 2:03d}"
        lat = "L" if number % 2 else "R"
        image = ImageRef(path=path, view="MLO", laterality=lat, row=0)
        bags.append(
            BagSpec(
                bag_id=f"{patient}/1/{lat}",
                patient_id=patient,
                exam_id="1",
                laterality=lat,
                raw_label=_mias_label(entries[ref]),
                split_given=-1,
                images=(image,),
            )
        )
        circles = [(cls, sev, c) for cls, sev, c in entries[ref] if c is not None]
        if circles:
            shape = _png_size(Path(path))
            lesions += [Lesion(path, _circle_box(c, shape), cls, sev) for cls, sev, c in circles]
    bags.sort(key=lambda b: b.bag_id)
    return Cohort(name="mias", label_kind="mias", bags=tuple(bags), lesions=tuple(lesions),
                  spec=f"mias:{root}")

