"""Synthetic screening cohort: MG DICOM files with known lesions, a manifest and the ground truth.

The phantom exercises the whole pipeline offline: reading (photometric, bit depth and VOI
variety), breast side detection, tiling, extraction, training and explanation. It tests the
pipeline, not clinical accuracy: the lesions are made conspicuous for an ImageNet encoder.

This module plans the cohort and renders its views; `milpf_jax.synthetic.phantom_files` writes them
(`make_phantom_cohort`: DICOMs, manifest, lesion boxes, cache).

Every image is drawn in a canonical frame (chest wall on the left, nipple towards +x) as a
display value in [0, 1] (tissue bright on dark air, lesions brighter still), mirrored for right
breasts (chest wall on the right, as archives show them), then encoded into stored values through
the inverse of its own VOI transform, so a reader that applies the window or VOI LUT and inverts
MONOCHROME1 gets the display values back.

A lesion keeps its distance from the chest wall and its size in both views of its breast; only
its vertical position differs (CC shows the medio-lateral axis, MLO the oblique one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from milpf_jax.config import check, option

PHANTOM_VERSION = 2  # bump whenever the generator's output changes: it invalidates caches

MALIGNANT_KINDS = ("mass_round", "mass_spiculated", "calc_cluster")
BENIGN_KINDS = ("benign_mass", "benign_calc")
VIEWS = ("CC", "MLO")
AIR = 0.015  # display value of air: near black, as in a processed mammogram


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of a phantom cohort. Sizes are physical (mm) wherever a lesion is concerned.

    The default (280 patients x 1 exam x 2 breasts = 560 bags, 1120 views of 768 x 624 px at
    0.2 mm: small breasts, so that the offline main job's extraction stays short on
    2 CPU cores) leaves > 500 bags after the default mapping drops BI-RADS 2/3, a test split of
    >= 100 bags, and with 224-px tiles and no overlap about 9-10 tissue tiles a view (~10.5k in
    all). Lesion sizes are physical, so shrinking the anatomy keeps their conspicuity. Contrasts
    are added to the display value in [0, 1] and were tuned so ImageNet
    EfficientNet-Lite0 tile features separate lesion tiles from normal ones (AUC >= 0.9 for
    masses, >= 0.85 for calcification clusters) while the clusters vanish from the global view.
    """

    n_patients: int = option(280, "women in the cohort")
    exams_per_patient: int = option(1, "screening exams per woman")
    rows: int = option(768, "image rows")
    cols: int = option(624, "image columns")
    pixel_spacing_mm: float = option(0.2, "pixel spacing in mm (the DICOMs' Imager Pixel Spacing)")
    seed: int = option(0, "seed of the cohort (each view draws from its own seed)")
    positive_fraction: float = option(0.4, "bags with BI-RADS 4/5 lesions")
    benign_fraction: float = option(
        0.08, "bags with BI-RADS 2/3 lesions (left out by the default mapping)")
    calc_only_fraction: float = option(
        0.3, "of positives: a calcification cluster only, visible to the tiles only")
    mass_contrast: float = option(0.5, "masses' contrast on the display value in [0, 1]")
    calc_contrast: float = option(0.9, "calcification specks' contrast")
    mass_diameter_mm: tuple[float, float] = option(
        (5.0, 25.0), "malignant masses' diameter range, log-uniform")

    def __post_init__(self) -> None:
        ints = {"n_patients": 1, "exams_per_patient": 1, "rows": 64, "cols": 64}
        for name, low in ints.items():
            check(self, int(getattr(self, name)) >= low, name,
                  f"{getattr(self, name)}; expected >= {low}")
        for name in ("positive_fraction", "benign_fraction", "calc_only_fraction"):
            check(self, 0.0 <= getattr(self, name) <= 1.0, name,
                  f"{getattr(self, name)}; expected in [0, 1]")
        check(self, self.positive_fraction + self.benign_fraction <= 1.0,
              ("positive_fraction", "benign_fraction"),
              f"sum {self.positive_fraction + self.benign_fraction}; expected <= 1")
        check(self, self.pixel_spacing_mm > 0, "pixel_spacing_mm",
              f"{self.pixel_spacing_mm}; expected > 0")
        lo, hi = self.mass_diameter_mm
        check(self, 0 < lo <= hi, "mass_diameter_mm", f"{self.mass_diameter_mm}; need 0<lo<=hi")

    @property
    def n_bags(self) -> int:
        return self.n_patients * self.exams_per_patient * 2


@dataclass(frozen=True)
class Geometry:
    """Breast outline of one view in the canonical frame (chest wall at x = 0), in pixels.

    The outline is two half-ellipses centred on the chest wall at row `cy`, depth `a` (chest
    wall to nipple) and half-heights `b_top` / `b_bot`. MLO adds the pectoral triangle
    x / pect_x + y / pect_y < 1 at the top chest-wall corner.
    """

    a: float
    cy: float
    b_top: float
    b_bot: float
    pect_x: float = 0.0  # 0: no pectoral muscle (CC)
    pect_y: float = 0.0


@dataclass(frozen=True)
class Lesion:
    """One lesion as drawn in one view, canonical frame, pixels.

    `core` is a mass's radius or a calcification group's extent; `radius` is the half-size of
    the ground-truth box (spicules and speck blur included). `offsets` [N, 2] (dy, dx) and
    `sizes` [N] (sigma or disc radius) place the specks of a group; `aspect` and `angle` shape a
    benign oval; `seed` draws the outline wobble and spicules.
    """

    lesion_id: str
    kind: str
    cy: float
    cx: float
    radius: float  # box half-size: the lesion lies within [c - radius, c + radius]
    core: float
    contrast: float
    aspect: float = 1.0
    angle: float = 0.0
    offsets: tuple = ()
    sizes: tuple = ()
    seed: int = 0


@dataclass(frozen=True)
class Encoding:
    """How display values become stored values: photometric, bit depth and VOI transform."""

    photometric: str  # MONOCHROME1 | MONOCHROME2
    bits_stored: int  # 12 | 14 | 16
    voi: str  # window | sigmoid | lut | none
    center: float = 0.0
    width: float = 0.0
    lut_gamma: float = 1.0
    second_window: bool = False


@dataclass(frozen=True)
class ViewPlan:
    """Everything needed to draw and write one view; `plan_cohort` makes them all up front."""

    rel_path: str
    patient_id: str
    exam_id: str
    laterality: str
    view: str
    birads: str
    geometry: Geometry
    lesions: tuple[Lesion, ...]
    encoding: Encoding
    density: float  # 0 fatty .. 1 extremely dense, shared by both views of a breast
    tissue_levels: tuple[float, float]  # fat, gland display levels
    texture_beta: float  # power-law exponent of the parenchymal texture
    noise_seed: tuple[int, ...]
    study_index: int  # patient * exams + exam, for UIDs and accession numbers
    image_number: int


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _exact_counts(n: int, fractions: dict[str, float]) -> list[str]:
    """A list of n category names with counts as close to `fractions` as rounding allows."""
    names = list(fractions)
    want = np.array([fractions[k] for k in names], dtype=np.float64) * n
    counts = np.floor(want).astype(int)
    order = np.argsort(-(want - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return [name for name, c in zip(names, counts) for _ in range(c)]


def _breast_findings(cfg: PhantomConfig) -> list[tuple[str, ...]]:
    """Lesion kinds per bag [B], exact proportions, shuffled with the cohort seed."""
    n = cfg.n_bags
    n_pos = round(n * cfg.positive_fraction)
    n_ben = min(round(n * cfg.benign_fraction), n - n_pos)
    n_calc = round(n_pos * cfg.calc_only_fraction)
    n_mass = n_pos - n_calc
    rng = _rng(cfg.seed, 1)
    mass = _exact_counts(
        n_mass, {"mass_round": 0.4, "mass_spiculated": 0.4, "round+calc": 0.1, "spic+calc": 0.1}
    )
    combos = {
        "round+calc": ("mass_round", "calc_cluster"),
        "spic+calc": ("mass_spiculated", "calc_cluster"),
    }
    findings = [combos.get(m, (m,)) for m in mass] + [("calc_cluster",)] * n_calc
    findings += [(k,) for k in _exact_counts(n_ben, {"benign_mass": 0.5, "benign_calc": 0.5})]
    findings += [()] * (n - len(findings))
    order = rng.permutation(n)
    return [findings[i] for i in order]


def _birads(kinds: tuple[str, ...], rng: np.random.Generator) -> str:
    if not kinds:
        return "1"
    if "benign_calc" in kinds:
        return "2"
    if "benign_mass" in kinds:
        return "3"
    if len(kinds) > 1:
        return "5"
    options = {
        "mass_round": ["4", "4A", "4B"],
        "mass_spiculated": ["4C", "5", "5"],
        "calc_cluster": ["4", "4B", "4C"],
    }[kinds[0]]
    return str(rng.choice(options))


def _encodings(cfg: PhantomConfig) -> list[Encoding]:
    """Per image [N_img]: exact shares of each variant so even a tiny cohort shows them all."""
    n = cfg.n_bags * 2
    rng = _rng(cfg.seed, 2)
    photometric = rng.permutation(_exact_counts(n, {"MONOCHROME2": 0.75, "MONOCHROME1": 0.25}))
    # VOI LUTs are only used on 12-bit images (4096-entry tables); other depths use windows.
    kinds = rng.permutation(
        _exact_counts(n, {"window": 0.62, "lut": 0.2, "sigmoid": 0.1, "none": 0.08})
    )
    bits_other = iter(rng.permutation(_exact_counts(n, {"12": 0.6, "14": 0.2, "16": 0.2})))
    out = []
    for phot, voi in zip(photometric, kinds):
        bits = 12 if voi == "lut" else int(next(bits_other))
        top = 2**bits - 1
        if voi == "window":
            lo, hi = rng.uniform(0.02, 0.15) * top, rng.uniform(0.75, 0.97) * top
            center, width = (lo + hi) / 2, hi - lo
        elif voi == "sigmoid":
            # The display range (1e-3, 1 - 1e-3) spans about 3.45 widths of stored values.
            width = rng.uniform(0.18, 0.26) * top
            center = rng.uniform(0.45, 0.55) * top
        else:
            center, width = 0.0, 0.0
        out.append(
            Encoding(
                photometric=str(phot),
                bits_stored=bits,
                voi=str(voi),
                center=float(round(center, 1)),
                width=float(round(width, 1)),
                lut_gamma=float(rng.uniform(0.7, 1.4)) if voi == "lut" else 1.0,
                second_window=bool(voi == "window" and rng.random() < 0.3),
            )
        )
    return out


def _geometries(cfg: PhantomConfig, rng: np.random.Generator) -> dict[str, Geometry]:
    h, w = cfg.rows, cfg.cols
    a = rng.uniform(0.62, 0.86) * w  # the same depth in both views (same nipple distance)
    cc = Geometry(
        a=a,
        cy=rng.uniform(0.47, 0.53) * h,
        b_top=rng.uniform(0.36, 0.45) * h,
        b_bot=rng.uniform(0.36, 0.45) * h,
    )
    cy = rng.uniform(0.38, 0.46) * h
    mlo = Geometry(
        a=a,
        cy=cy,
        b_top=cy + rng.uniform(0.04, 0.2) * h,  # cut by the top edge: the axillary tail
        b_bot=min(rng.uniform(0.42, 0.5) * h, 0.97 * h - cy),
        pect_x=rng.uniform(0.25, 0.4) * a,
        pect_y=rng.uniform(0.35, 0.6) * h,
    )
    return {"CC": cc, "MLO": mlo}


def breast_distance(g: Geometry, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Approximate signed distance (px) to the skin line, > 0 inside. ys, xs broadcast.

    First-order distance to an ellipse, (1 - r) / |grad r|, exact at the boundary, which is
    where the skin line and the peripheral fall-off need it.
    """
    x = np.asarray(xs, dtype=np.float32)
    y = np.asarray(ys, dtype=np.float32) - np.float32(g.cy)
    b = np.where(y < 0, np.float32(g.b_top), np.float32(g.b_bot))
    a2 = np.float32(g.a * g.a)
    b2 = b * b
    r = np.sqrt(x * x / a2 + y * y / b2)
    grad = np.sqrt(x * x / (a2 * a2) + y * y / (b2 * b2))
    return (1.0 - r) * r / np.maximum(grad, np.float32(1e-6))


def pectoral_distance(g: Geometry, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Signed distance (px) to the pectoral edge, > 0 inside the muscle; -inf without one."""
    if g.pect_x <= 0:
        return np.full(np.broadcast_shapes(np.shape(ys), np.shape(xs)), -np.inf, np.float32)
    norm = np.float32(np.hypot(1 / g.pect_x, 1 / g.pect_y))
    return (1 - xs / np.float32(g.pect_x) - ys / np.float32(g.pect_y)) / norm


def _fits(g: Geometry, cy: float, cx: float, radius: float, cfg: PhantomConfig) -> bool:
    """Whole lesion box inside the breast and the image, clear of the pectoral muscle."""
    margin = 2.0 / cfg.pixel_spacing_mm + 2  # 2 mm of tissue around the lesion
    if not (
        radius + 2 <= cy <= cfg.rows - radius - 3 and radius + 2 <= cx <= cfg.cols - radius - 3
    ):
        return False
    # The whole square box, not just the disc: its corners and points along its edges.
    t = np.linspace(-1, 1, 9)
    ys = cy + radius * np.concatenate([t, t, -np.ones(9), np.ones(9)])
    xs = cx + radius * np.concatenate([-np.ones(9), np.ones(9), t, t])
    inside = breast_distance(g, ys, xs).min() > margin
    clear = pectoral_distance(g, np.array([cy]), np.array([cx]))[0] < -(radius + margin)
    return bool(inside and clear)


def _lesion_shape(kind: str, cfg: PhantomConfig, rng: np.random.Generator) -> dict:
    """Size, contrast and internal layout of one lesion (shared by its two views)."""
    px = 1.0 / cfg.pixel_spacing_mm
    if kind in ("mass_round", "mass_spiculated"):
        lo, hi = cfg.mass_diameter_mm
        core = 0.5 * np.exp(rng.uniform(np.log(lo), np.log(hi))) * px
        reach = 1.9 if kind == "mass_spiculated" else 1.1  # spicules reach ~0.9 core beyond
        contrast = cfg.mass_contrast * rng.uniform(0.9, 1.1)
        return {"core": core, "radius": core * reach + 1, "contrast": contrast}
    if kind == "benign_mass":
        core = rng.uniform(4.0, 8.0) * px
        return {
            "core": core,
            "radius": core + 2,
            "contrast": rng.uniform(0.2, 0.3),
            "aspect": rng.uniform(0.6, 0.8),
            "angle": rng.uniform(0, np.pi),
        }
    if kind == "calc_cluster":
        n = int(rng.integers(8, 21))
        extent = 0.5 * rng.uniform(6.0, 14.0) * px  # cluster radius
        rad = extent * np.sqrt(rng.uniform(0.05, 1.0, n))
        ang = rng.uniform(0, 2 * np.pi, n)
        offsets = np.stack([rad * np.sin(ang), rad * np.cos(ang)], axis=1)  # [N, 2]
        sigma = np.maximum(rng.uniform(0.15, 0.3, n) * px, 0.8)  # 0.15-0.3 mm, >= 0.8 px
        return {
            "core": extent,
            "radius": extent + 3 * sigma.max() + 1,
            "contrast": cfg.calc_contrast,
            "offsets": tuple(map(tuple, offsets.round(2))),
            "sizes": tuple(sigma.round(3)),
        }
    if kind == "benign_calc":
        n = int(rng.integers(3, 7))
        extent = 0.5 * rng.uniform(12.0, 22.0) * px
        rad = extent * np.sqrt(rng.uniform(0.0, 1.0, n))
        ang = rng.uniform(0, 2 * np.pi, n)
        offsets = np.stack([rad * np.sin(ang), rad * np.cos(ang)], axis=1)
        disc = np.maximum(rng.uniform(0.6, 1.2, n) * px, 1.5)  # large, smooth, round
        return {
            "core": extent,
            "radius": extent + disc.max() + 2,
            "contrast": rng.uniform(0.3, 0.4),
            "offsets": tuple(map(tuple, offsets.round(2))),
            "sizes": tuple(disc.round(3)),
        }
    raise ValueError(
        f"unknown lesion kind {kind!r}; expected one of {MALIGNANT_KINDS + BENIGN_KINDS}"
    )


def _place_lesions(
    kinds: tuple[str, ...], geoms: dict[str, Geometry], cfg: PhantomConfig,
    rng: np.random.Generator, bag: str,
) -> dict[str, list[Lesion]]:  # fmt: skip
    """Positions for each lesion in both views: same depth (x), independent vertical position."""
    placed: dict[str, list[Lesion]] = {v: [] for v in VIEWS}
    for k, kind in enumerate(kinds):
        shape = _lesion_shape(kind, cfg, rng)
        radius = shape["radius"]
        for _ in range(400):
            cx = rng.uniform(0.15, 0.8) * geoms["CC"].a
            spots = {}
            for view in VIEWS:
                g = geoms[view]
                for _ in range(20):
                    b = g.b_top if rng.random() < 0.5 else g.b_bot
                    half = b * np.sqrt(max(1 - (cx / g.a) ** 2, 0.0))
                    cy = g.cy + rng.uniform(-0.8, 0.8) * half
                    apart = all(
                        np.hypot(cy - o.cy, cx - o.cx) > radius + o.radius for o in placed[view]
                    )
                    if apart and _fits(g, cy, cx, radius, cfg):
                        spots[view] = cy
                        break
            if len(spots) == len(VIEWS):
                break
        else:
            raise ValueError(
                f"bag {bag}: could not place a {kind} of half-size {radius:.0f} px inside a "
                f"{cfg.rows}x{cfg.cols} image at {cfg.pixel_spacing_mm} mm/px; use larger images "
                "or a coarser pixel spacing"
            )
        for view in VIEWS:
            placed[view].append(
                Lesion(
                    lesion_id=f"{bag}_{k + 1}",
                    kind=kind,
                    cy=float(round(spots[view])),  # whole pixels: equal boxes in both views
                    cx=float(round(cx)),
                    seed=int(rng.integers(2**31)),
                    **{key: (float(v) if np.isscalar(v) else v) for key, v in shape.items()},
                )
            )
    return placed


def plan_cohort(cfg: PhantomConfig) -> list[ViewPlan]:
    """Every view of the cohort, in manifest order [N_img]. Pure and deterministic in cfg."""
    findings = _breast_findings(cfg)
    encodings = iter(_encodings(cfg))
    plans = []
    for p in range(cfg.n_patients):
        patient = f"P{p + 1:04d}"
        for e in range(cfg.exams_per_patient):
            exam = f"E{e + 1}"
            study = p * cfg.exams_per_patient + e
            image_number = 0
            for li, lat in enumerate("LR"):
                bag_index = 2 * study + li
                rng = _rng(cfg.seed, 3, p, e, li)
                kinds = findings[bag_index]
                birads = _birads(kinds, rng)
                geoms = _geometries(cfg, rng)
                lesions = _place_lesions(kinds, geoms, cfg, rng, f"{patient}_{exam}_{lat}")
                density = float(rng.beta(2.0, 2.0))
                levels = (float(rng.uniform(0.26, 0.32)), float(rng.uniform(0.58, 0.66)))
                beta = float(rng.choice([2.6, 3.0, 3.4]))  # a few values: cached FFT filters
                for vi, view in enumerate(VIEWS):
                    image_number += 1
                    plans.append(
                        ViewPlan(
                            rel_path=f"images/{patient}_{exam}_{image_number}.dcm",
                            patient_id=patient,
                            exam_id=exam,
                            laterality=lat,
                            view=view,
                            birads=birads,
                            geometry=geoms[view],
                            lesions=tuple(lesions[view]),
                            encoding=next(encodings),
                            density=density,
                            tissue_levels=levels,
                            texture_beta=beta,
                            noise_seed=(cfg.seed, 4, p, e, li, vi),
                            study_index=study,
                            image_number=image_number,
                        )
                    )
    return plans


def lesion_box(lesion: Lesion, laterality: str, cfg: PhantomConfig) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), half-open, source pixels: mirrored for right breasts."""
    half = int(np.ceil(lesion.radius))
    cy, cx = int(lesion.cy), int(lesion.cx)
    y0, y1 = max(cy - half, 0), min(cy + half + 1, cfg.rows)
    x0, x1 = max(cx - half, 0), min(cx + half + 1, cfg.cols)
    if laterality == "R":
        x0, x1 = cfg.cols - x1, cfg.cols - x0
    return y0, x0, y1, x1


@functools.lru_cache(maxsize=4)
def _power_law_filter(rows: int, cols: int, spacing_mm: float, beta: float) -> np.ndarray:
    """Amplitude filter |f|^(-beta/2) on the rfft2 grid [rows, cols//2+1], float32.

    Mammographic texture has a power spectrum ~ 1/f^beta with beta ~ 2.5-3.5. Frequencies below
    1/(25 mm) are flattened so the largest structures are lobules, not an image-wide gradient.
    """
    fy = np.fft.fftfreq(rows, d=spacing_mm)[:, None]
    fx = np.fft.rfftfreq(cols, d=spacing_mm)[None, :]
    f0 = 1.0 / 25.0
    filt = (fy * fy + fx * fx + f0 * f0) ** (-beta / 4)  # [rows, cols//2+1]
    filt[0, 0] = 0.0  # no DC: the field has zero mean without a pass over it
    # Scale to unit expected std, so no pass over the field is needed for that either: a
    # coefficient with independent uniform(-1/2, 1/2) real and imaginary parts has E|c|^2 = 1/6,
    # and every column but the first (and the Nyquist one) stands for its conjugate twin too.
    twin = np.full(filt.shape[1], 2.0)
    twin[0] = 1.0
    if cols % 2 == 0:
        twin[-1] = 1.0
    var = (twin * filt**2).sum() / 6.0 / float(rows * cols) ** 2
    return (filt / np.sqrt(var)).astype(np.float32)


def power_law_noise(
    rng: np.random.Generator, rows: int, cols: int, spacing_mm: float, beta: float = 3.0
) -> np.ndarray:
    """Gaussian noise, 1/f^beta power spectrum, zero mean, unit expected std: float32 [rows,
    cols]."""
    filt = _power_law_filter(rows, cols, spacing_mm, beta)
    # Uniform, not normal, spectral coefficients: 4x cheaper to draw, and the inverse FFT sums
    # so many of them that each pixel is Gaussian all the same (central limit theorem).
    spec = rng.random((2, *filt.shape), dtype=np.float32) - np.float32(0.5)
    return np.fft.irfft2((spec[0] + 1j * spec[1]) * filt, s=(rows, cols))  # float32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_lesion(img: np.ndarray, les: Lesion) -> None:
    """Add one lesion's display contrast to img [H, W] in place, within its box."""
    h, w = img.shape
    y0, y1 = max(int(les.cy - les.radius), 0), min(int(les.cy + les.radius) + 2, h)
    x0, x1 = max(int(les.cx - les.radius), 0), min(int(les.cx + les.radius) + 2, w)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(les.cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(les.cx)
    rng = np.random.default_rng(les.seed)
    if les.kind in ("calc_cluster", "benign_calc"):
        add = np.zeros((y1 - y0, x1 - x0), np.float32)
        for (dy, dx), size in zip(les.offsets, les.sizes):
            d2 = (yy - dy) ** 2 + (xx - dx) ** 2
            if les.kind == "calc_cluster":  # bright specks of ~1 px sigma
                speck = np.exp(-d2 / (2 * size * size)) * rng.uniform(0.85, 1.15)
            else:  # large smooth round benign calcifications
                speck = _sigmoid((size - np.sqrt(d2)) / 0.7)
            np.maximum(add, speck.astype(np.float32), out=add)
        img[y0:y1, x0:x1] += np.float32(les.contrast) * add
        return
    r = np.sqrt(yy * yy + xx * xx)
    theta = np.arctan2(yy, xx)
    core = np.float32(les.core)
    if les.kind == "benign_mass":  # circumscribed oval, sharp margin
        ca, sa = np.cos(les.angle), np.sin(les.angle)
        u, v = xx * ca + yy * sa, (-xx * sa + yy * ca) / les.aspect
        prof = _sigmoid((core - np.sqrt(u * u + v * v)) / 0.6)
    else:
        # Lobulated outline and a dome-shaped density: soft, like a real mass.
        k = rng.integers(3, 6)
        edge = core * (1 + 0.08 * np.sin(k * theta + rng.uniform(0, 2 * np.pi)))
        dome = 0.8 + 0.2 * np.sqrt(np.clip(1 - (r / core) ** 2, 0, 1))
        prof = _sigmoid((edge - r) / (0.08 * core + 0.8)) * dome
        if les.kind == "mass_spiculated":
            spic = np.zeros_like(prof)
            for ang in rng.uniform(0, 2 * np.pi, int(rng.integers(10, 18))):
                length = core * rng.uniform(0.4, 0.9)
                along = xx * np.cos(ang) + yy * np.sin(ang)
                perp = -xx * np.sin(ang) + yy * np.cos(ang)
                width = max(0.06 * core, 0.9)
                fade = np.clip(1 - (along - core) / length, 0, 1) * (along > 0.5 * core)
                np.maximum(spic, 0.7 * np.exp(-(perp**2) / (2 * width**2)) * fade, out=spic)
            prof = np.maximum(prof, spic)
    img[y0:y1, x0:x1] += np.float32(les.contrast) * prof.astype(np.float32)


def render_view(plan: ViewPlan, cfg: PhantomConfig) -> np.ndarray:
    """Display image float32 [rows, cols] in [0, 1] in SOURCE orientation (right breasts mirrored).

    Air ~0.015, fat ~0.3, glandular tissue ~0.6, pectoral ~0.7, skin line a thin brighter rim,
    lesions added on top and clipped at 1 (the detector's white), and a white laterality marker
    (8 x 6 mm) in the air at the top of the nipple side.
    """
    g, h, w = plan.geometry, cfg.rows, cfg.cols
    rng = _rng(*plan.noise_seed)
    mm = 1.0 / cfg.pixel_spacing_mm
    noise = power_law_noise(rng, h, w, cfg.pixel_spacing_mm, plan.texture_beta)  # [H, W]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    dist = breast_distance(g, ys, xs)  # [H, W] px to the skin, > 0 inside

    # Glandular tissue gathers mid-breast; fat lies towards the chest wall and the skin.
    yc = (ys - np.float32(g.cy)) / np.where(ys < g.cy, np.float32(g.b_top), np.float32(g.b_bot))
    central = np.clip(1 - ((xs - 0.45 * g.a) / (0.6 * g.a)) ** 2 - yc * yc, 0, 1)
    fat, gland = plan.tissue_levels
    bias = np.float32(-1.6 + 2.8 * plan.density) + np.float32(1.6) * (central - 0.5)
    frac = _sigmoid(np.float32(2.2) * (noise + bias))
    img = fat + (gland - fat) * frac + np.float32(0.03) * noise  # [H, W]

    periphery = np.clip(dist / np.float32(10 * mm), 0, 1)  # tissue thins towards the skin
    img = fat - 0.04 + (img - fat + 0.04) * (periphery * (2 - periphery))
    skin = np.float32(0.75 * mm)
    img += np.float32(0.16) * np.exp(-(((dist - skin) / skin) ** 2))
    if g.pect_x > 0:
        muscle = np.clip(pectoral_distance(g, ys, xs) / np.float32(1.5 * mm) + 0.5, 0, 1)
        img += (np.float32(0.7) + np.float32(0.03) * noise - img) * muscle

    for les in plan.lesions:
        _draw_lesion(img, les)
    inside = np.clip(dist, 0, 1)  # one-pixel anti-aliased outline
    img = np.float32(AIR) + (img - np.float32(AIR)) * inside
    # Quantum noise, std 0.006 (uniform: a quarter of the cost of normal draws).
    img += np.float32(0.006 * 12**0.5) * (rng.random((h, w), dtype=np.float32) - np.float32(0.5))
    np.clip(img, 0, 1, out=img)
    # The lead laterality marker, in the air above the nipple side: the detector's white, so
    # every view's brightest value is the marker's, as on a real mammogram, and a reader that
    # stretches each view by its own min..max does not brighten views without a bright lesion.
    marker = (slice(round(0.03 * h), round(0.03 * h + 8 * mm)),
              slice(round(w - 0.03 * w - 6 * mm), round(w - 0.03 * w)))
    img[marker] = np.where(dist[marker] < -mm, np.float32(1.0), img[marker])
    return img[:, ::-1] if plan.laterality == "R" else img
