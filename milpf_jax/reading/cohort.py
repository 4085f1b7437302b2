"""Cohorts: a manifest of images grouped into bags, one bag per breast per exam.

A manifest CSV has one row per image. Required columns: `path` (absolute, or relative to the
CSV's folder), `patient_id`, `exam_id`, `laterality` (L or R), `view` (DICOM View Position: CC,
MLO, ML, LM, XCCL, ...) and exactly one label column: `birads` (0-6, 4A-4C) or `label` (0/1).
`split` (train, val, test or empty) is optional; so is `view_ref`, a pseudonymous name per
image that stores, failure lists and reports record instead of the path (see `pseudonym`); other
columns are ignored.

Labels stay raw here. Every readable bag is extracted whatever its label, and the label mapping
and split seed are applied when a store is loaded (`milpf_jax.data.labels`), so changing them never
re-runs the encoder.

    cohort = read_manifest("data/manifest.csv")      # or mias(dir), or resolve_cohort(spec)
    cohort.bags[0].bag_id                            # "P001/E1/L"
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import os
import re
import secrets
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # -1 = none given
BIRADS_VALUES = ("0", "1", "2", "3", "4", "4A", "4B", "4C", "5", "6")
BINARY_VALUES = ("0", "1")
LABEL_COLUMNS = ("birads", "label")  # exactly one per manifest; also the label_kind
REQUIRED_COLUMNS = ("path", "patient_id", "exam_id", "laterality", "view")
_VIEW_RANK = {"CC": 0, "MLO": 1}  # CC before MLO, other views after, then by path
_MAX_LISTED = 20  # rows named in one error line; the rest are counted
PSEUDONYM_PREFIXES = {"patient": "P-", "exam": "E-", "image": "I-"}
KEY_BYTES = 32


@dataclass(frozen=True)
class ImageRef:
    path: str  # absolute path
    view: str  # 'CC', 'MLO', ...
    laterality: str  # 'L' | 'R'
    row: int  # manifest row number (2 = first data row), 0 for built-in cohorts
    ref: str = ""  # manifest `view_ref`: recorded instead of the path wherever one is written


@dataclass(frozen=True)
class BagSpec:
    bag_id: str  # f"{patient_id}/{exam_id}/{laterality}"
    patient_id: str
    exam_id: str
    laterality: str
    raw_label: str  # as given: "1", "4A", "0"/"1" for binary, "N"/"B"/"M" for mias
    split_given: int  # SPLIT_CODES value or -1
    images: tuple[ImageRef, ...]  # views in a stable order (CC before MLO, then by path)


@dataclass(frozen=True)
class Lesion:
    path: str  # absolute path of the image the lesion is in
    box: tuple[int, int, int, int]  # y0, x0, y1, x1: half-open, source-image pixels
    kind: str  # e.g. mini-MIAS class: CIRC, SPIC, MISC, CALC, ARCH, ASYM
    severity: str  # e.g. "B" benign, "M" malignant


@dataclass(frozen=True)
class Cohort:
    name: str  # e.g. manifest file stem, "mias", "phantom"
    label_kind: str  # "birads" | "binary" | "mias"
    bags: tuple[BagSpec, ...]  # sorted by bag_id
    lesions: tuple[Lesion, ...] = ()  # ground truth boxes where known


def normalize_label(kind: str, value: str) -> str | None:
    """The raw label in canonical form ("4a" -> "4A"), or None if `value` is not valid for `kind`.

    kind: "birads" (0, 1, 2, 3, 4, 4A, 4B, 4C, 5, 6; case-insensitive) or "binary" (0, 1).
    """
    value = value.strip().upper()
    valid = BIRADS_VALUES if kind == "birads" else BINARY_VALUES
    return value if value in valid else None


def _label_kind(column: str) -> str:
    return "binary" if column == "label" else column


def _listing(items: list[str]) -> str:
    """'row 3, row 5, ... and 12 more': long lists are cut so the message stays readable."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _add(problems: dict[str, list[str]], what: str, where: str) -> None:
    problems.setdefault(what, []).append(where)


def _raise_problems(source: object, problems: dict[str, list[str]]) -> None:
    """Raise one ValueError naming `source` and every problem with the rows it concerns."""
    if problems:
        lines = [f"- {what}: {_listing(where)}" for what, where in problems.items()]
        raise ValueError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(lines))


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (stripped, lower-case) and (row number, {column: stripped value}) per data row.

    The row number is the CSV line the record ends on, so it matches what a spreadsheet shows
    (2 = first data row). Blank lines are skipped. Too many cells in a row is an error.
    """
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        rows: list[tuple[int, dict[str, str]]] = []
        long_rows: list[str] = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [c.strip().lower() for c in record]
                dup = sorted(c for c, n in Counter(header).items() if n > 1)
                if dup:
                    raise ValueError(f"{path}: header repeats column(s) {dup}; names must differ")
                continue
            if len(record) > len(header):
                long_rows.append(f"row {reader.line_num} ({len(record)} cells)")
                continue
            record = record + [""] * (len(header) - len(record))
            rows.append(
                (reader.line_num, {h: c.strip() for h, c in zip(header, record, strict=True)})
            )
    if header is None:
        raise ValueError(f"{path}: empty CSV, expected a header row")
    if long_rows:
        _raise_problems(path, {f"more cells than the {len(header)} header columns": long_rows})
    return header, rows


def _label_column(path: Path, header: list[str]) -> str:
    found = [c for c in LABEL_COLUMNS if c in header]
    if len(found) != 1:
        raise ValueError(
            f"{path}: expected exactly one label column of {list(LABEL_COLUMNS)}, found "
            f"{found or 'none'} among columns {header}"
        )
    return found[0]


def _view_order(image: ImageRef) -> tuple:
    return (_VIEW_RANK.get(image.view, len(_VIEW_RANK)), image.view, image.path)


@dataclass(frozen=True)
class _Row:
    """One validated manifest row."""

    row: int
    path: str
    patient_id: str
    exam_id: str
    laterality: str
    view: str
    label: str
    split: int
    view_ref: str = ""


def _parse_row(row: int, cells: dict[str, str], label_col: str, base: Path, problems) -> _Row:
    """Validate one row; every problem found goes into `problems` (message -> ["row N (...)"])."""

    def bad(what: str, value: str | None = None) -> None:
        _add(problems, what, f"row {row}" + ("" if value is None else f" ({value!r})"))

    for col in (*REQUIRED_COLUMNS, label_col):
        if not cells[col]:
            bad(f"empty {col!r}")
    if "view_ref" in cells and not cells["view_ref"]:
        bad("empty 'view_ref' (a pseudonymised manifest names every image)")
    for col in ("patient_id", "exam_id"):
        if "/" in cells[col]:
            bad(f"{col!r} contains '/', which would make bag ids ambiguous", cells[col])
    laterality = cells["laterality"].upper()
    if cells["laterality"] and laterality not in ("L", "R"):
        bad("laterality is not L or R", cells["laterality"])
    label = normalize_label(_label_kind(label_col), cells[label_col])
    if cells[label_col] and label is None:
        valid = BIRADS_VALUES if label_col == "birads" else BINARY_VALUES
        bad(f"{label_col!r} is not one of {', '.join(valid)}", cells[label_col])
    split_text = cells.get("split", "").lower()
    if split_text and split_text not in SPLIT_CODES:
        bad(f"'split' is not one of {', '.join(SPLIT_CODES)} or empty", cells["split"])
    path = os.path.abspath(base / cells["path"]) if cells["path"] else ""
    if path and not os.path.isfile(path):
        bad("file does not exist", path)
    return _Row(
        row=row,
        path=path,
        patient_id=cells["patient_id"],
        exam_id=cells["exam_id"],
        laterality=laterality,
        view=cells["view"].upper(),
        label=label or "",
        split=SPLIT_CODES.get(split_text, -1),
        view_ref=cells.get("view_ref", ""),
    )


def _group_rows(rows: list[_Row]) -> tuple[dict[tuple, list[_Row]], dict[str, list[str]]]:
    """Bags keyed by (patient, exam, laterality), and the cross-row problems found on the way."""
    problems: dict[str, list[str]] = {}
    by_path: dict[str, list[_Row]] = {}
    bags: dict[tuple, list[_Row]] = {}
    by_patient: dict[str, list[_Row]] = {}
    for r in rows:
        by_path.setdefault(r.path, []).append(r)
        bags.setdefault((r.patient_id, r.exam_id, r.laterality), []).append(r)
        by_patient.setdefault(r.patient_id, []).append(r)
    for path, same in by_path.items():
        if len(same) > 1:
            rows_text = " and ".join(f"row {r.row}" for r in same)
            _add(problems, "image listed more than once", f"{rows_text} ({path})")
    by_ref: dict[str, list[_Row]] = {}
    for r in rows:
        if r.view_ref:
            by_ref.setdefault(r.view_ref, []).append(r)
    for ref, same in by_ref.items():
        if len(same) > 1:
            rows_text = " and ".join(f"row {r.row}" for r in same)
            _add(problems, "same 'view_ref' on several images", f"{rows_text} ({ref})")
    for (patient, exam, lat), members in bags.items():
        if len({r.label for r in members}) > 1:
            rows_text = ", ".join(f"row {r.row} ({r.label})" for r in members)
            _add(
                problems,
                "rows of one bag carry different labels",
                f"bag {patient}/{exam}/{lat}: {rows_text}",
            )
    code_name = {v: k for k, v in SPLIT_CODES.items()}
    for patient, members in by_patient.items():
        if len({r.split for r in members if r.split >= 0}) > 1:
            rows_text = ", ".join(
                f"row {r.row} ({code_name[r.split]})" for r in members if r.split >= 0
            )
            _add(
                problems, "patient in more than one given split", f"patient {patient}: {rows_text}"
            )
    return bags, problems


def bag_id_of(patient_id: str, exam_id: str, laterality: str) -> str:
    """A bag's id: one breast of one exam."""
    return f"{patient_id}/{exam_id}/{laterality}"


def bag_values(csv_path: str | os.PathLike, column: str) -> dict[str, str]:
    """bag_id -> the value of a manifest column that the bag's images share ("mixed" when they
    differ, "" when empty). Reads the CSV only: the images need not be at hand."""
    path = Path(csv_path)
    header, cells = _read_csv(path)
    column = column.strip().lower()
    if column not in header or not set(REQUIRED_COLUMNS) <= set(header):
        raise ValueError(f"{path}: needs the columns {list(REQUIRED_COLUMNS)} and {column!r} "
                         f"(found {header})")
    values: dict[str, set[str]] = {}
    for _, c in cells:
        bag = bag_id_of(c["patient_id"], c["exam_id"], c["laterality"].upper())
        values.setdefault(bag, set()).add(c.get(column, ""))
    return {bag: v.pop() if len(v) == 1 else "mixed" for bag, v in values.items()}


def read_manifest(csv_path: str | os.PathLike) -> Cohort:
    """Read a manifest CSV into a Cohort; every problem found is reported in one ValueError.

    Rows with the same (patient_id, exam_id, laterality) form one bag (e.g. the CC and MLO of one
    breast). Errors list the offending rows by their line in the CSV (2 = first data row):
    empty required cells, bad laterality/label/split values, missing files, an image listed
    twice, a bag whose rows disagree on the label, a patient put in two splits.
    A patient with a split given on some rows and empty on others gets the given split on all
    its bags, so a patient is never in two splits.
    """
    path = Path(csv_path)
    header, cells = _read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)} "
            f"and one of {list(LABEL_COLUMNS)} (found {header})"
        )
    label_col = _label_column(path, header)
    if not cells:
        raise ValueError(f"{path}: no data rows; expected one row per image")
    problems: dict[str, list[str]] = {}
    base = path.resolve().parent
    rows = [_parse_row(n, c, label_col, base, problems) for n, c in cells]
    _raise_problems(path, problems)
    groups, problems = _group_rows(rows)
    _raise_problems(path, problems)

    patient_split = {r.patient_id: r.split for r in rows if r.split >= 0}
    bags = []
    for (patient, exam, lat), members in groups.items():
        images = [
            ImageRef(path=r.path, view=r.view, laterality=lat, row=r.row, ref=r.view_ref)
            for r in members
        ]
        bags.append(
            BagSpec(
                bag_id=bag_id_of(patient, exam, lat),
                patient_id=patient,
                exam_id=exam,
                laterality=lat,
                raw_label=members[0].label,
                split_given=patient_split.get(patient, -1),
                images=tuple(sorted(images, key=_view_order)),
            )
        )
    bags.sort(key=lambda b: b.bag_id)
    return Cohort(name=path.stem, label_kind=_label_kind(label_col), bags=tuple(bags))


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
            _add(
                problems, "expected 'mdbNNN BG CLASS [SEVERITY X Y RADIUS]'", f"line {n} ({line!r})"
            )
            continue
        entries = images.setdefault(ref, [])
        if cls == "NORM":
            entries.append(("NORM", "", None))
            continue
        severity = tokens[3] if len(tokens) > 3 else ""
        if severity not in ("B", "M"):
            _add(problems, "severity is not B or M", f"line {n} ({line!r})")
            continue
        # Some rows (mdb059 here) name the abnormality but give no centre; they label the image
        # but yield no box.
        coords = tokens[4:7]
        has_circle = len(coords) == 3 and all(t.isdigit() for t in coords)
        entries.append((cls, severity, tuple(map(int, coords)) if has_circle else None))
    _raise_problems(info, problems)
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
    """The mini-MIAS database (or a subset of it) as a cohort, label_kind "mias".

    `directory` holds `Info.txt` and `images/mdbNNN.png`. Odd NNN is a left breast, even NNN
    the right breast of the same woman; each woman is one patient with one exam ("1"), and each
    image is its own bag with one MLO view. Raw labels are N, B, M per image. Lesion circles
    become boxes in image rows (Info.txt's origin is the bottom-left corner).
    """
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
        raise FileNotFoundError(f"{info}: listed images not found: {_listing(missing)}")

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
    return Cohort(name="mias", label_kind="mias", bags=tuple(bags), lesions=tuple(lesions))


def resolve_cohort(
    spec: str, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Cohort:
    """A cohort from a spec string: "path/to/manifest.csv", "mias:DIR" or "phantom".

    "phantom" is the default synthetic screening cohort (`milpf_jax.synthetic.phantom`), written once to
    <cache>/cohorts/phantom-<hash of its config>/ and reused after; the cache is `cache_dir`,
    else $MILPF_CACHE, else ~/.cache/milpf-jax. "phantom:n_patients=8,rows=256" overrides
    PhantomConfig fields (a quick cohort for tests and trials).
    """
    if spec == "phantom" or spec.startswith("phantom:"):
        return _phantom(cache_dir, spec[len("phantom:") :] if ":" in spec else "", progress)
    if spec.startswith("mias:") and spec[len("mias:") :]:
        return mias(spec[len("mias:") :])
    if spec.lower().endswith(".csv"):
        return read_manifest(spec)
    raise ValueError(
        f"unknown cohort spec {spec!r}; expected a manifest path ending in .csv, "
        f"'mias:DIR' (a mini-MIAS folder) or 'phantom'"
    )


def _phantom_config(overrides: str):
    """PhantomConfig with "field=value,..." overrides, each cast to its field's type."""
    import dataclasses

    from milpf_jax.synthetic.phantom import PhantomConfig

    fields = {f.name: f for f in dataclasses.fields(PhantomConfig)}
    values = {}
    for item in filter(None, (x.strip() for x in overrides.split(","))):
        name, _, value = item.partition("=")
        if name not in fields or not value:
            raise ValueError(
                f"phantom spec item {item!r}: expected FIELD=VALUE with FIELD one "
                f"of {sorted(fields)}"
            )
        default = fields[name].default
        if isinstance(default, tuple):
            raise ValueError(f"phantom spec: {name} cannot be set from a spec string")
        values[name] = type(default)(value)
    return PhantomConfig(**values)


def _phantom(cache_dir, overrides: str = "", progress: bool = True) -> Cohort:
    import dataclasses

    manifest = _phantom_manifest(cache_dir, overrides, progress)
    return dataclasses.replace(read_manifest(manifest), name="phantom")


def _phantom_manifest(cache_dir, overrides: str = "", progress: bool = True) -> Path:
    """The manifest of the phantom cohort a spec names, written to the cache if missing."""
    import dataclasses
    import hashlib
    import json

    from milpf_jax.synthetic.phantom import PHANTOM_VERSION
    from milpf_jax.synthetic.phantom_files import make_phantom_cohort

    cfg = _phantom_config(overrides)
    text = json.dumps([PHANTOM_VERSION, dataclasses.asdict(cfg)], sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:10]
    root = cache_dir or os.environ.get("MILPF_CACHE") or Path.home() / ".cache" / "milpf-jax"
    return make_phantom_cohort(
        Path(root).expanduser() / "cohorts" / f"phantom-{key}", cfg, progress=progress
    )


def manifest_of(spec: str, *, cache_dir=None) -> Path | None:
    """The manifest CSV behind a cohort spec (a manifest's path, or the phantom's in the cache);
    None for a cohort read without one (mias:DIR)."""
    if spec == "phantom" or spec.startswith("phantom:"):
        return _phantom_manifest(cache_dir, spec[len("phantom:") :] if ":" in spec else "", False)
    return Path(spec) if spec.lower().endswith(".csv") else None


# Fallback when ViewPosition is empty: the View Code Sequence's meaning (DICOM CID 4014).
_VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
}
_LABEL_KEYS = {"accession_number": "AccessionNumber", "study_instance_uid": "StudyInstanceUID"}
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def _view_of(ds) -> str:
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if not view:
        for item in ds.get("ViewCodeSequence", []) or []:
            view = _VIEW_MEANINGS.get(str(item.get("CodeMeaning", "")).strip().lower(), "")
    return view


def _dicom_images(dicom_dir: Path, key_attr: str) -> list[dict[str, str]]:
    """Header fields of every image DICOM under `dicom_dir` (recursive).

    Non-DICOM files, DICOMDIRs and objects without pixels are skipped (logged); FOR PROCESSING
    (raw detector) images are skipped too because the encoders expect FOR PRESENTATION images.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    found, skipped = [], Counter()
    for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped["not DICOM"] += 1
            continue
        except Exception as err:  # pydicom raises many types; name the file and keep the cause
            raise ValueError(
                f"{path}: cannot read DICOM header: {type(err).__name__}: {err}"
            ) from err
        if str(ds.get("SOPClassUID", "")) == _DICOMDIR_SOP_CLASS or "Rows" not in ds:
            skipped["not an image"] += 1
            continue
        if str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING":
            skipped["FOR PROCESSING"] += 1
            continue
        lat = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "")
        found.append(
            {
                "file": str(path),
                "patient_id": str(ds.get("PatientID", "") or "").strip(),
                "exam_key": str(ds.get(key_attr, "") or "").strip(),
                "laterality": lat.strip().upper(),
                "view": _view_of(ds),
                "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or "").strip(),
            }
        )
    if skipped:
        log.warning("%s: skipped %s", dicom_dir, dict(skipped))
    return found


def _check_dicom_images(dicom_dir: Path, images: list[dict[str, str]], key_attr: str) -> None:
    problems: dict[str, list[str]] = {}
    for im in images:
        rel = os.path.relpath(im["file"], dicom_dir)
        for field, attr in (("patient_id", "PatientID"), ("exam_key", key_attr)):
            if not im[field]:
                _add(problems, f"no {attr}", rel)
        if im["laterality"] not in ("L", "R"):
            _add(
                problems,
                "ImageLaterality/Laterality is not L or R",
                f"{rel} ({im['laterality']!r})",
            )
        if not im["view"]:
            _add(problems, "no ViewPosition (nor a known View Code Sequence)", rel)
    by_uid: dict[str, list[str]] = {}
    for im in images:
        if im["sop_instance_uid"]:
            rel = os.path.relpath(im["file"], dicom_dir)
            by_uid.setdefault(im["sop_instance_uid"], []).append(rel)
    for uid, files in by_uid.items():
        if len(files) > 1:
            _add(problems, "same SOPInstanceUID in several files", f"{' and '.join(files)} ({uid})")
    if not images:
        problems["no DICOM images found"] = [str(dicom_dir)]
    _raise_problems(dicom_dir, problems)


def _read_label_sheet(path: Path) -> tuple[str, str, dict, bool]:
    """Label sheet -> (key column, label column, {(key, lat): (label, split)}, has split column).

    An empty or absent laterality labels both breasts of the exam. A key may carry one
    exam-level row or breast-level rows, not both.
    """
    header, cells = _read_csv(path)
    keys = [k for k in _LABEL_KEYS if k in header]
    if len(keys) != 1:
        raise ValueError(
            f"{path}: expected exactly one key column of {list(_LABEL_KEYS)}, found "
            f"{keys or 'none'} among columns {header}"
        )
    key_col, label_col = keys[0], _label_column(path, header)
    problems: dict[str, list[str]] = {}
    labels: dict[tuple[str, str], tuple[str, str]] = {}
    rows_of: dict[tuple[str, str], list[int]] = {}
    for row, c in cells:
        key, lat = c[key_col], c.get("laterality", "").upper()
        label = normalize_label(_label_kind(label_col), c[label_col])
        split = c.get("split", "").lower()
        if not key:
            _add(problems, f"empty {key_col!r}", f"row {row}")
        if lat not in ("", "L", "R"):
            _add(problems, "laterality is not L, R or empty", f"row {row} ({lat!r})")
        if label is None:
            _add(problems, f"bad {label_col!r} value", f"row {row} ({c[label_col]!r})")
        if split and split not in SPLIT_CODES:
            _add(problems, "'split' is not train, val, test or empty", f"row {row}")
        labels[(key, lat)] = (label or "", split)
        rows_of.setdefault((key, lat), []).append(row)
    for (key, lat), rows in rows_of.items():
        if len(rows) > 1:
            _add(
                problems,
                "label given more than once",
                f"{key} {lat or 'exam'}: rows {', '.join(map(str, rows))}",
            )
        if lat and (key, "") in rows_of:
            _add(
                problems,
                "exam-level and breast-level labels for one exam",
                f"{key}: rows {', '.join(map(str, rows_of[(key, '')] + rows))}",
            )
    _raise_problems(path, problems)
    return key_col, label_col, labels, "split" in header


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """A keyed hash naming a patient, exam or image: "P-", "E-" or "I-" + 16 hex digits.

    HMAC-SHA256 of "kind:value" under `key` (kind: "patient", "exam", "image"): stable for one
    key, so re-running a pseudonymisation gives the same ids, and not reversible without it.
    """
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIXES[kind] + digest[:16]


def read_or_create_key(path: str | os.PathLike) -> tuple[bytes, bool]:
    """The pseudonymisation key in `path` (hex text); created (32 random bytes, mode 0o600)
    when the file does not exist. Returns (key, created)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (key.hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return key, True
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(
            f"{path}: not a pseudonymisation key (expected {2 * KEY_BYTES} hex digits); give "
            "the key file made by the first pseudonymised run, or a new path to create one"
        )
    if path.stat().st_mode & 0o077:
        log.warning("%s: the key file is readable by other users; chmod 600 it", path)
    return key, False


def _pseudonymise(images: list[dict[str, str]], key: bytes, out_dir: Path) -> None:
    """Replace patient and exam ids by keyed hashes and add `view_ref` per image, in place."""
    fields = (("patient_id", "patient_id"), ("exam_key", "exam_key"), ("file", "view_ref"))
    distinct = {raw: len({im[raw] for im in images}) for raw, _ in fields}
    for im in images:
        rel = Path(os.path.relpath(im["file"], out_dir)).as_posix()
        im["patient_id"] = pseudonym(key, "patient", im["patient_id"])
        im["exam_key"] = pseudonym(key, "exam", im["exam_key"])
        im["view_ref"] = pseudonym(key, "image", rel)
    for raw, field in fields:
        # 64-bit hashes: a collision would merge two patients; say so rather than hide it.
        if len({im[field] for im in images}) != distinct[raw]:
            raise ValueError(f"pseudonymisation: two {field} values hash alike; use another key")


def manifest_from_dicoms(
    dicom_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    key: bytes | None = None,
) -> Cohort:
    """Write a manifest CSV from DICOM headers and a label sheet; return it read back.

    Headers used: PatientID, the exam key (AccessionNumber or StudyInstanceUID, whichever column
    the label sheet is keyed by: `accession_number` or `study_instance_uid`; it becomes
    `exam_id`), ImageLaterality (else Laterality) and ViewPosition (else the View Code
    Sequence). The label sheet has `birads` or `label`, optionally `laterality` (breast-level
    labels; empty means both breasts) and `split`. Paths are written relative to the manifest's
    folder when they lie under it. A bag without a label is an error listing its files.

    With `key` (see `read_or_create_key`) the manifest is pseudonymised after the label join:
    patient_id and exam_id become keyed hashes (`pseudonym`), a `view_ref` column names each
    image by a keyed hash of its path relative to the manifest's folder (stores and reports
    record it instead of the path), and no DICOM UID is written. `path` stays, for the
    extractor: keep the manifest private, beside the key.
    """
    dicom_dir, labels_path, out = Path(dicom_dir).resolve(), Path(labels_csv), Path(out_csv)
    if not dicom_dir.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {dicom_dir}")
    key_col, label_col, labels, has_split = _read_label_sheet(labels_path)
    key_attr = _LABEL_KEYS[key_col]
    images = _dicom_images(dicom_dir, key_attr)
    _check_dicom_images(dicom_dir, images, key_attr)

    unlabelled: dict[str, list[str]] = {}
    for im in images:
        found = labels.get((im["exam_key"], im["laterality"])) or labels.get((im["exam_key"], ""))
        if found is None:
            bag = f"{key_attr} {im['exam_key']} breast {im['laterality']}"
            unlabelled.setdefault(bag, []).append(os.path.relpath(im["file"], dicom_dir))
        else:
            im["label"], im["split"] = found
    if unlabelled:
        raise ValueError(
            f"{labels_path}: no label for {len(unlabelled)} bag(s) found in {dicom_dir}:\n"
            + "\n".join(f"- {bag}: {_listing(files)}" for bag, files in unlabelled.items())
        )

    out_dir = out.resolve().parent
    columns = [*REQUIRED_COLUMNS, label_col] + (["split"] if has_split else [])
    if key is None:
        columns.append("sop_instance_uid")
    else:
        _pseudonymise(images, key, out_dir)
        columns.append("view_ref")
    images.sort(
        key=lambda im: (
            im["patient_id"],
            im["exam_key"],
            im["laterality"],
            _VIEW_RANK.get(im["view"], len(_VIEW_RANK)),
            im["view"],
            im["file"],
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for im in images:
            under = Path(im["file"]).is_relative_to(out_dir)
            path = os.path.relpath(im["file"], out_dir) if under else im["file"]
            values = {**im, "path": path, "exam_id": im["exam_key"], label_col: im["label"]}
            writer.writerow([values[c] for c in columns])
    os.replace(tmp, out)  # a reader never sees a half-written manifest
    return read_manifest(out)
