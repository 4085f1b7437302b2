"""A catalogue of bad inputs: one test per entry of the README table
"What happens with bad input".

Each bad input is built for real (DICOMs written with pydicom, PNGs with Pillow, stores with
`Store.create` or a real extraction with the stand-in encoder of test_extract) and each test
checks the exact outcome: the exception type and that its message names the file, row, bag or
setting, or the documented result; and that nothing written before is lost (good bags keep their
embeddings, failures are listed in `<store>.failures/`, a refused store is left unchanged).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from pydicom.sequence import Sequence

from helpers.dicoms import stored_breast, write_dicom
from helpers.dicoms import voi_lut_item as _voi_lut_item
from helpers.images import textured_breast as breast
from helpers.images import write_png as write_breast_png
from helpers.standin import StandIn, expected_bag, install_standin, standin_spec
from helpers.standin import extract_cfg as cfg
from milpf_jax.data.labels import make_splits
from milpf_jax.data.packed import load_packed
from milpf_jax.data.store import DONE, FAILED, PENDING, BagPlan, Store, StoreMismatch
from milpf_jax.extraction.config import tiling_config
from milpf_jax.extraction.extract import extract
from milpf_jax.extraction.failures import read_failures
from milpf_jax.learning.head import HeadConfig, init_params
from milpf_jax.learning.inference import Bag, Head, predict
from milpf_jax.reading.dicom_manifest import manifest_from_dicoms
from milpf_jax.reading.imaging import ImageReadError, read_image
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.tiling import EmptyViewWarning
from milpf_jax.sweep import SweepConfig, run_sweep

HEADER = ["path", "patient_id", "exam_id", "laterality", "view", "birads"]
DIM = 8  # the stand-in encoder's D
SWEEP = SweepConfig.of(seeds=1, epochs=2, patience=1, bootstrap=0, first_layer_dtype="float32")


@pytest.fixture
def standin(monkeypatch):
    return install_standin(monkeypatch.setitem, monkeypatch.setattr)


@pytest.fixture(scope="module")
def head():
    config = HeadConfig(dim=DIM)
    return Head(params=init_params(jax.random.key(0), config), config=config)


def write_manifest(folder: Path, rows, header=HEADER) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def good_png(folder: Path, name: str = "good.png") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return write_breast_png(folder / name, breast(64, 48, seed=1))


def two_bag_cohort(folder: Path, bad_name: str, bad_laterality: str = "L") -> Path:
    """Bag P1/E1/L: a good PNG (BI-RADS 1); bag P2/E1/<lat>: the file `bad_name` (BI-RADS 4)."""
    return write_manifest(folder, [
        [good_png(folder), "P1", "E1", "L", "CC", "1"],
        [bad_name, "P2", "E1", bad_laterality, "CC", "4"],
    ])  # fmt: skip


def assert_good_bag_kept(store: Store, folder: Path) -> None:
    """Bag 0 (P1/E1/L, good.png) is done and holds exactly the stand-in's embeddings."""
    got = store.read_bag(0)
    assert got["bag_id"] == "P1/E1/L" and got["status"] == DONE
    path = str(folder / "good.png")
    boxes, emb = expected_bag([path], ["CC"], tiling_config(cfg(), 16), StandIn(standin_spec()))
    assert len(boxes) > 0
    np.testing.assert_array_equal(got["tile_boxes"], boxes)
    np.testing.assert_array_equal(got["global_emb"], emb[:1].astype(np.float16))
    np.testing.assert_array_equal(got["tile_emb"], emb[1:].astype(np.float16))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def plan(i: int, label: str, split: int = -1, n_tiles: int = 2) -> BagPlan:
    boxes = np.array([[0, 16 * k, 0, 16 * k + 16, 16] for k in range(n_tiles)], np.int32)
    return BagPlan(
        bag_id=f"B{i:02d}", patient_id=f"P{i:02d}", raw_label=label, split_given=split,
        view_paths=(f"img/{i}.png",), view_names=("CC",), view_flipped=(False,),
        view_shapes=((64, 16),), tile_boxes=boxes.reshape(n_tiles, 5),
    )  # fmt: skip


def filled_store(path: Path, plans, label_kind: str = "binary") -> Store:
    store = Store.create(path, plans, dim=DIM, attrs={"label_kind": label_kind}, chunk_bags=4)
    rng = np.random.default_rng(0)
    for b, p in enumerate(plans):
        store.write_bag(b, rng.standard_normal((p.n_views, DIM)),
                        rng.standard_normal((p.n_tiles, DIM)))  # fmt: skip
    return store


# --- 1-7: unusable image files: refused naming the file; at extraction the bag fails ----------


def _truncated(path: Path) -> None:
    write_dicom(path, stored_breast())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _colour_png(path: Path) -> None:
    rgb = np.zeros((64, 48, 3), np.uint8)
    rgb[..., 0] = np.rint(breast(64, 48) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)


BAD_FILES = {
    "truncated DICOM": ("bad.dcm", _truncated, "pixel data cannot be decoded"),
    "DICOM without pixel data": (
        "bad.dcm", lambda p: write_dicom(p, stored_breast(), PixelData=None),
        "no Pixel Data element"),
    "non-MG modality": (
        "bad.dcm", lambda p: write_dicom(p, stored_breast(), Modality="CT"),
        "Modality is 'CT'; expected 'MG'"),
    "FOR PROCESSING image": (
        "bad.dcm",
        lambda p: write_dicom(p, stored_breast(), PresentationIntentType="FOR PROCESSING"),
        "'FOR PROCESSING' image"),
    "laterality tag contradicts the manifest": (
        "bad.dcm", lambda p: write_dicom(p, stored_breast(), ImageLaterality="L"),
        "laterality tag says 'L' but the manifest says 'R'"),
    "colour PNG": ("bad.png", _colour_png, "colour image (mode RGB); expected greyscale"),
    "not an image": (
        "bad.dcm", lambda p: p.write_bytes(b"not an image at all " * 50), "not a DICOM file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unusable_image_fails_its_bag_and_is_listed(tmp_path, standin, case):
    name, make, reason = BAD_FILES[case]
    folder = tmp_path / "c"
    folder.mkdir()
    bad = folder / name
    make(bad)
    lat = "R" if "laterality" in case else "L"
    with pytest.raises(ImageReadError, match=re.escape(f"{bad}: ")) as info:
        read_image(bad, laterality=lat)
    assert info.value.path == str(bad) and reason in info.value.reason

    manifest = two_bag_cohort(folder, name, bad_laterality=lat)
    result = extract(str(manifest), cfg(), tmp_path / "s.zarr", progress=False)
    assert (result.done, result.failed, result.pending) == (1, 1, 0)
    store = Store.open(tmp_path / "s.zarr")
    assert store.status().tolist() == [DONE, FAILED]
    assert_good_bag_kept(store, folder)
    [row] = read_failures(tmp_path / "s.zarr")
    assert (row["bag_id"], row["path"], row["stage"]) == (f"P2/E1/{lat}", str(bad), "plan")
    assert reason in row["reason"]


# --- 8: an image deleted after planning: the bag fails at encoding, done bags stay ------------


def test_image_deleted_after_planning_fails_at_encoding(tmp_path, standin):
    folder = tmp_path / "c"
    other = good_png(folder, "other.png")
    cohort = read_manifest(two_bag_cohort(folder, other))  # read once, as one long run does
    out = tmp_path / "s.zarr"
    first = extract(cohort, cfg(chunk_bags=1), out, shard=(0, 2), progress=False)
    assert (first.done, first.pending) == (1, 1)
    (folder / other).unlink()
    rest = extract(cohort, cfg(chunk_bags=1), out, shard=(1, 2), progress=False)
    assert (rest.done, rest.failed, rest.pending) == (1, 1, 0)
    store = Store.open(out)
    assert store.status().tolist() == [DONE, FAILED]
    assert_good_bag_kept(store, folder)
    [row] = read_failures(tmp_path / "s.zarr")
    assert (row["bag_id"], row["path"], row["stage"]) == ("P2/E1/L", str(folder / other), "encode")
    assert row["reason"] == f"[Errno 2] no such image file: '{folder / other}'"


# --- 9-12: images read with a defined result ---------------------------------------------------


def test_no_laterality_anywhere(tmp_path):
    folder = tmp_path / "dicoms"
    folder.mkdir()
    path = write_dicom(folder / "x.dcm", stored_breast(right=True), PatientID="P1",
                       AccessionNumber="A1", ViewPosition="CC")  # fmt: skip
    # The reader takes the side from the pixels; the laterality is unknown.
    img = read_image(path)
    assert img.laterality is None and img.flipped is True
    assert img.pixels[:, :24].sum() > 3 * img.pixels[:, 24:].sum()
    # A manifest needs it: the row is named.
    manifest = write_manifest(tmp_path, [[str(path), "P1", "E1", "", "CC", "1"]])
    with pytest.raises(ValueError, match=re.escape(f"{manifest}: 1 problem(s):\n- empty "
                                                   "'laterality': row 2")):  # fmt: skip
        read_manifest(manifest)
    # Building a manifest from headers names the file.
    sheet = write_manifest(tmp_path, [["A1", "1"]], header=["accession_number", "birads"])
    with pytest.raises(ValueError, match=re.escape("ImageLaterality/Laterality is not L or R: "
                                                   "x.dcm ('')")):  # fmt: skip
        manifest_from_dicoms(folder, sheet, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_monochrome1_with_a_voi_lut_is_looked_up_then_inverted(tmp_path):
    stored = 4095 - stored_breast()  # MONOCHROME1: the dense breast is stored low
    table = np.arange(4096) // 4 + 100  # LUT outputs 100 .. 1123
    path = write_dicom(tmp_path / "m1.dcm", stored, PhotometricInterpretation="MONOCHROME1",
                       VOILUTSequence=Sequence([_voi_lut_item(table)]), WindowCenter=10,
                       WindowWidth=20)  # the LUT wins over the window  # fmt: skip
    img = read_image(path)
    shown = table[stored].astype(np.float64)  # then stretched by the image's own range
    expected = 1.0 - (shown - shown.min()) / (shown.max() - shown.min())
    assert img.flipped is False  # inverted first, so the breast is on the left
    np.testing.assert_allclose(img.pixels, expected, rtol=0, atol=1e-7)
    assert img.pixels[32, 0] > 0.8 and img.pixels[0, -1] == 0.0


def test_16_bit_png_keeps_every_level(tmp_path):
    ramp = np.arange(64 * 48).reshape(64, 48) * 5  # 3072 distinct levels
    stored = (stored_breast().astype(np.int64) * 12 + ramp).astype(np.uint16)
    assert stored.max() > 255 * 64  # needs 16 bits
    path = tmp_path / "x.png"
    Image.fromarray(stored).save(path)
    assert Image.open(path).mode.startswith("I")  # really 16 bit on disk
    img = read_image(path, laterality="L", view="CC")
    expected = (stored - stored.min()) / float(stored.max() - stored.min())
    source = img.pixels[:, ::-1] if img.flipped else img.pixels
    np.testing.assert_allclose(source, expected, rtol=0, atol=1e-7)
    assert len(np.unique(img.pixels)) == len(np.unique(stored)) > 256


def test_all_black_image_gives_a_bag_with_no_tiles(tmp_path, standin, head):
    folder = tmp_path / "c"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 48), np.uint8)).save(folder / "black.png")
    manifest = two_bag_cohort(folder, "black.png")
    with pytest.warns(EmptyViewWarning, match=re.escape(f"{folder / 'black.png'}: breast mask "
                                                        "is empty")):  # fmt: skip
        result = extract(str(manifest), cfg(), tmp_path / "s.zarr", progress=False)
    assert (result.done, result.failed) == (2, 0)
    store = Store.open(tmp_path / "s.zarr")
    assert_good_bag_kept(store, folder)
    black = store.read_bag(1)
    assert black["status"] == DONE and black["tile_emb"].shape == (0, DIM)
    assert np.isfinite(black["global_emb"]).all() and black["global_emb"].shape == (1, DIM)
    packed = load_packed(store)
    assert packed.tiles_per_bag()[packed.bag_ids.tolist().index("P2/E1/L")] == 0
    p = predict(head, Bag(black["global_emb"], np.ones(1, bool), np.zeros((0, DIM)),
                          np.zeros(0, bool)))  # fmt: skip
    assert p.shape == () and np.isfinite(float(p))


# --- 13-16: manifests --------------------------------------------------------------------------


def test_duplicate_manifest_rows(tmp_path):
    name = good_png(tmp_path)
    row = [name, "P1", "E1", "L", "CC", "1"]
    manifest = write_manifest(tmp_path, [row, row])
    with pytest.raises(ValueError, match=re.escape(
            f"{manifest}: 1 problem(s):\n- image listed more than once: row 2 and row 3 "
            f"({tmp_path / name})")):  # fmt: skip
        read_manifest(manifest)


def test_manifest_path_that_does_not_exist(tmp_path):
    manifest = write_manifest(tmp_path, [
        [good_png(tmp_path), "P1", "E1", "L", "CC", "1"],
        ["missing.png", "P1", "E1", "R", "CC", "1"],
    ])  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(
            f"- file does not exist: row 3 ('{tmp_path / 'missing.png'}')")):  # fmt: skip
        read_manifest(manifest)


def test_patient_with_contradictory_splits(tmp_path):
    header = [*HEADER, "split"]
    manifest = write_manifest(tmp_path, [
        [good_png(tmp_path, "a.png"), "P1", "E1", "L", "CC", "1", "train"],
        [good_png(tmp_path, "b.png"), "P1", "E2", "L", "CC", "1", "test"],
    ], header=header)  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(
            "- patient in more than one given split: patient P1: row 2 (train), row 3 (test)"
    )):  # fmt: skip
        read_manifest(manifest)
    # The same check where a store's given splits are applied.
    with pytest.raises(ValueError, match=r"patient 'P1' has bags in two given splits \(train "
                                         r"and test\)"):  # fmt: skip
        make_splits(["P1", "P1"], ["1", "1"], [0, 2])


def test_label_value_the_mapping_does_not_know(tmp_path):
    manifest = write_manifest(tmp_path, [[good_png(tmp_path), "P1", "E1", "L", "CC", "7"]])
    with pytest.raises(ValueError, match=re.escape(
            "- 'birads' is not one of 0, 1, 2, 3, 4, 4A, 4B, 4C, 5, 6: row 2 ('7')")):  # fmt: skip
        read_manifest(manifest)
    # A valid BI-RADS the mapping leaves out (0, 2, 3) drops its bag, counted.
    labels = ["1", "4", "2", "0", "1", "4A", "3", "2"]
    store = filled_store(tmp_path / "b.zarr", [plan(i, x) for i, x in enumerate(labels)],
                         label_kind="birads")  # fmt: skip
    packed = load_packed(store)
    assert packed.raw_labels.tolist() == ["1", "4", "1", "4A"]
    assert packed.info["excluded"] == {"0": 1, "2": 2, "3": 1}
    with pytest.raises(ValueError, match="unknown label mapping 'birads5'"):
        load_packed(store, mapping="birads5")
    # A mapping that leaves out every bag: training names the mapping and what it left out.
    binary = filled_store(tmp_path / "s.zarr", [plan(i, str(i % 2)) for i in range(8)])
    with pytest.raises(ValueError, match=re.escape(
            "the training split is empty: no bags to train on (store ") + r".*s\.zarr, "
            + re.escape("mapping 'malignant', split seed 0: bags train/val/test = 0/0/0, left "
                        "out by the mapping {'0': 4, '1': 4})")):  # fmt: skip
        run_sweep(binary, SWEEP.replace(mapping="malignant"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()


# --- 17-20: stores -----------------------------------------------------------------------------


@pytest.fixture
def extracted(tmp_path, standin):
    """A finished two-bag store (two good PNGs) and its manifest."""
    folder = tmp_path / "c"
    manifest = two_bag_cohort(folder, good_png(folder, "other.png"))
    extract(str(manifest), cfg(), tmp_path / "s.zarr", progress=False)
    return manifest, tmp_path / "s.zarr"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"encoder": "efficientnet-lite0"},
         "  encoder: stored 'standin-proj', requested 'efficientnet-lite0'\n"),
        ({"tile_size": 32}, "  preprocessing.tile_size: stored 16, requested 32\n"),
    ],
    ids=["another encoder", "another tile size"],
)  # fmt: skip
def test_store_made_with_other_settings_is_refused_untouched(extracted, standin, change, message):
    manifest, out = extracted
    before = snapshot(out.parent)
    with pytest.raises(StoreMismatch, match=re.escape(f"store {out} was made with other "
                                                      "settings:\n")) as info:  # fmt: skip
        extract(str(manifest), cfg(**change), out, progress=False)
    assert message in str(info.value)
    assert snapshot(out.parent) == before  # nothing written, no failures CSV
    assert len(standin) == 1  # no encoder loaded for the refused run


def test_store_with_unfinished_bags(tmp_path, standin):
    folder = tmp_path / "c"
    manifest = two_bag_cohort(folder, good_png(folder, "other.png"))
    out = tmp_path / "s.zarr"
    extract(str(manifest), cfg(chunk_bags=1), out, shard=(0, 2), progress=False)
    with pytest.raises(ValueError, match=re.escape(
            f"store {out}: 1 of 2 bags are not done (1 pending, 0 failed; e.g. ['P2/E1/L'])"
    )):  # fmt: skip
        load_packed(out)
    with pytest.raises(ValueError, match="allow_partial=True"):
        run_sweep(out, SWEEP, tmp_path / "run", progress=False)
    packed = load_packed(out, allow_partial=True)
    assert packed.bag_ids.tolist() == ["P1/E1/L"] and packed.info["skipped"] == 1


def test_nan_or_inf_embeddings_are_never_stored(tmp_path, standin, monkeypatch):
    plans = [plan(0, "1"), plan(1, "0")]
    store = Store.create(tmp_path / "n.zarr", plans, dim=DIM, attrs={"label_kind": "binary"})
    for bad in (np.nan, np.inf):
        tiles = np.ones((2, DIM))
        tiles[1, 3] = bad
        with pytest.raises(ValueError, match="bag B01: tile embeddings hold NaN or inf"):
            store.write_bag(1, np.ones((1, DIM)), tiles)
    assert store.status().tolist() == [PENDING, PENDING]
    assert not store.read_bag(1)["tile_emb"].any()
    # An encoder that returns NaN stops the extraction naming the bag; done bags stay.
    folder, out = tmp_path / "c", tmp_path / "e.zarr"
    manifest = two_bag_cohort(folder, good_png(folder, "other.png"))
    extract(str(manifest), cfg(chunk_bags=1), out, shard=(0, 2), progress=False)
    healthy = StandIn.embed
    monkeypatch.setattr(StandIn, "embed", lambda self, x, **kw: healthy(self, x, **kw) * np.nan)
    with pytest.raises(ValueError, match="bag P2/E1/L: global embeddings hold NaN or inf"):
        extract(str(manifest), cfg(chunk_bags=1), out, shard=(1, 2), progress=False)
    assert Store.open(out).status().tolist() == [DONE, PENDING]
    monkeypatch.setattr(StandIn, "embed", healthy)
    assert_good_bag_kept(Store.open(out), folder)
    rest = extract(str(manifest), cfg(chunk_bags=1), out, shard=(1, 2), progress=False)
    assert (rest.done, rest.pending) == (2, 0)  # the rerun finishes it
    assert not (tmp_path / "e.failures").exists()


def test_nan_or_inf_embeddings_are_refused_when_loaded_and_predicted(tmp_path, head):
    store = filled_store(tmp_path / "s.zarr", [plan(i, str(i % 2)) for i in range(6)])
    store._g["tiles"][4, 1, 0] = np.inf  # written past Store.write_bag
    with pytest.raises(ValueError, match=re.escape(
            f"store {store.path}: bag(s) ['B04'] hold NaN or inf embeddings")):  # fmt: skip
        load_packed(store)
    rng = np.random.default_rng(0)
    views, tiles = rng.standard_normal((2, DIM)), rng.standard_normal((3, DIM))
    tiles[2, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape("Bag.tiles holds NaN or inf at row 2")):
        predict(head, Bag(views, np.ones(2, bool), tiles, np.ones(3, bool)))
    # In a masked-out (padding) row it is ignored.
    clean = predict(head, Bag(views, np.ones(2, bool), tiles[:2], np.ones(2, bool)))
    padded = predict(head, Bag(views, np.ones(2, bool), tiles, np.array([True, True, False])))
    np.testing.assert_allclose(padded, clean, rtol=1e-6)


# --- 21-23: prediction and training ------------------------------------------------------------


def test_predict_with_the_wrong_dimension(head):
    bag = Bag(np.ones((2, 16)), np.ones(2, bool), np.ones((3, 16)), np.ones(3, bool))
    with pytest.raises(ValueError, match=re.escape(
            "Bag.views has D=16, but the head was trained on D=8 (embeddings of another "
            "encoder?)")):  # fmt: skip
        predict(head, bag)


def test_validation_split_with_one_class(tmp_path):
    train, val, test = 0, 1, 2
    given = [("0", train), ("1", train), ("0", train), ("1", train), ("0", val), ("0", val),
             ("0", test), ("1", test)]  # fmt: skip
    store = filled_store(tmp_path / "s.zarr", [plan(i, x, s) for i, (x, s) in enumerate(given)])
    with pytest.raises(ValueError, match=re.escape(
            "the validation split has 2 bags with labels [0]: validation AUC needs both classes"
    ) + r".*split seed 0: bags train/val/test = 4/2/2"):  # fmt: skip
        run_sweep(store, SWEEP, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()


def test_empty_training_split(tmp_path):
    given = [("0", 1), ("1", 1), ("0", 2), ("1", 2)]
    store = filled_store(tmp_path / "s.zarr", [plan(i, x, s) for i, (x, s) in enumerate(given)])
    with pytest.raises(ValueError, match=re.escape(
            "the training split is empty: no bags to train on (store ") + r".*"
            + re.escape("split seed 0: bags train/val/test = 0/2/2")):  # fmt: skip
        run_sweep(store, SWEEP, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
