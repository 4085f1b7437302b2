"""milpf_jax.explanation: attention maps, boxes, AP@IoU, overlays and the CLI end to end.

The pure parts are checked on hand-made inputs with answers known in advance. The end-to-end
tests train a head on a tiny phantom with the stand-in encoder (tests/test_extract.py) through
experiments/sweep.py, then run experiments/explain.py's main() on it and read its files back:
the overlay of a right breast must show the phantom's lesion box where the phantom drew it in
the file (the reader mirrors right breasts to tile them; maps and boxes must be mapped back).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.repo import load_script
from helpers.standin import STANDIN, StandIn, install_standin, standin_spec
from milpf_jax.evaluation.detection import (
    Truth,
    average_precision,
    detection_report,
    localisation,
    peak_point,
    point_to_box,
    size_bucket,
)
from milpf_jax.evaluation.runs import recorded_cohort
from milpf_jax.explanation.explain import (
    ExplainConfig,
    Explainer,
    explain_bag,
    explain_run,
    load_explainer,
)
from milpf_jax.explanation.maps import attention_map, boxes_from_map
from milpf_jax.explanation.overlays import overlay_image

REPO = Path(__file__).resolve().parents[2]
# 256 x 208 px at 0.8 mm: a full-size detector at a quarter of the resolution (as test_main_job).
SPEC = "phantom:n_patients=24,rows=256,cols=208,pixel_spacing_mm=0.8"
ROWS, COLS = 256, 208
GREEN, RED = (0, 255, 0), (255, 0, 0)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- attention_map ---------------------------------------------------------------------------


def test_attention_map_is_the_mean_of_the_covering_tiles():
    boxes = [[0, 0, 2, 4], [0, 2, 4, 6], [3, 5, 10, 10], [1, 1, 1, 3]]  # the last one is empty
    amap = attention_map((4, 6), boxes, [1.0, 3.0, 5.0, 100.0])
    expected = np.array([
        [1, 1, 2, 2, 3, 3],
        [1, 1, 2, 2, 3, 3],
        [0, 0, 3, 3, 3, 3],
        [0, 0, 3, 3, 3, 4],  # (3, 5): tiles 2 and 3, mean 4; tile 3 is clipped to the image
    ], np.float32)  # fmt: skip
    assert amap.dtype == np.float32 and amap.shape == (4, 6)
    np.testing.assert_allclose(amap, expected, rtol=0, atol=1e-6)
    assert not attention_map((3, 2), np.zeros((0, 4)), []).any()


def test_attention_map_of_overlapping_tiles_is_smooth_and_level():
    # 75% overlap along one axis: tiles of 8 px every 2 px. Equal weights give a flat map (a
    # sum would grow with the number of tiles covering a pixel); one strong tile raises the
    # pixels it covers by weight / (tiles covering them).
    boxes = [[0, x, 1, x + 8] for x in range(0, 17, 2)]  # 9 tiles over 24 columns
    np.testing.assert_allclose(attention_map((1, 24), boxes, [0.5] * 9), 0.5, atol=1e-6)
    w = np.zeros(9)
    w[4] = 1.0  # the tile over columns 8-15; columns 8-15 are covered by 4 tiles each
    np.testing.assert_allclose(attention_map((1, 24), boxes, w)[0, 8:16], 0.25, atol=1e-6)
    assert not attention_map((1, 24), boxes, w)[0, :8].any()


# --- boxes_from_map --------------------------------------------------------------------------


def test_boxes_from_map_finds_the_blobs_above_half_the_peak():
    amap = np.zeros((50, 60), np.float32)
    amap[5:10, 5:15] = 0.8
    amap[7, 9] = 1.0  # blob A's peak
    amap[30:40, 40:50] = 0.6  # blob B
    amap[40, 50] = 0.6  # touches B diagonally: the same 8-connected region
    amap[20:23, 20:23] = 0.3  # below half the peak: no box
    boxes, scores = boxes_from_map(amap, probability=0.5)
    np.testing.assert_array_equal(boxes, [[5, 5, 10, 15], [30, 40, 41, 51]])
    np.testing.assert_allclose(scores, [0.5, 0.3])
    # Relative to a bag peak of 1.6 (another view holds more), only A reaches the threshold.
    boxes, scores = boxes_from_map(amap, reference=1.6, probability=0.5)
    np.testing.assert_array_equal(boxes, [[5, 5, 10, 15]])
    np.testing.assert_allclose(scores, [0.5 * 1.0 / 1.6])
    boxes, scores = boxes_from_map(np.zeros((4, 4)))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


# --- average_precision -----------------------------------------------------------------------


def test_average_precision_on_hand_made_cases():
    gt = [("a", (0, 0, 10, 10))]
    assert average_precision([("a", (0, 0, 10, 10), 0.9)], gt) == 1.0
    # A higher-scored box in an image without ground truth is a false positive: P = 1/2 at R = 1.
    assert average_precision([("b", (0, 0, 10, 10), 0.9), ("a", (0, 0, 10, 10), 0.8)], gt) == 0.5
    assert average_precision([], gt) == 0.0
    assert math.isnan(average_precision([("a", (0, 0, 10, 10), 0.9)], []))


def test_a_duplicate_box_on_a_found_lesion_is_a_false_positive():
    gts = [("a", (0, 0, 10, 10)), ("a", (50, 50, 60, 60))]
    dets = [("a", (0, 0, 10, 10), 0.9), ("a", (1, 1, 10, 10), 0.8), ("a", (50, 50, 60, 60), 0.7)]
    # TP, FP (duplicate), TP: P = 1 at R = 1/2, P = 2/3 at R = 1.
    assert average_precision(dets, gts) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_all_point_interpolation_takes_the_precision_envelope():
    gts = [("a", (0, 0, 10, 10)), ("b", (0, 0, 10, 10))]
    dets = [("c", (0, 0, 10, 10), 0.9), ("a", (0, 0, 10, 10), 0.8), ("b", (0, 0, 10, 10), 0.7)]
    # FP, TP, TP: raw precision 1/2 at R = 1/2 is lifted to the later 2/3 (not 0.583).
    assert average_precision(dets, gts) == pytest.approx(2 / 3)


@pytest.mark.parametrize("box, hit", [
    ((0, 0, 5, 5), True),  # inside, a quarter of the truth: IoU exactly 0.25
    ((0, 5, 10, 20), True),  # half of the truth, sticking out: 50 / 200 = 0.25
    ((0, 5, 10, 21), False),  # 50 / 210 = 0.238
    ((0, 0, 5, 4), False),  # 20 / 100
])  # fmt: skip
def test_iou_of_exactly_a_quarter_counts(box, hit):
    ap = average_precision([("a", box, 0.9)], [("a", (0, 0, 10, 10))], iou_threshold=0.25)
    assert ap == (1.0 if hit else 0.0)


def test_peak_point_and_pointing_counts():
    amap = np.zeros((10, 12))
    amap[2:4, 6:10] = 1.0  # a flat top cell: its centre, not argmax's corner
    assert peak_point(amap) == (2.5, 7.5)
    assert point_to_box((2.5, 7.5), (0, 0, 5, 9)) == 0.0  # inside (rows 0-4, columns 0-8)
    assert point_to_box((2.5, 7.5), (0, 0, 5, 8)) == 0.5  # half a pixel past column 7
    assert point_to_box((2.0, 11.0), (0, 0, 5, 8)) == 4.0  # 4 columns right of column 7
    assert point_to_box((7.0, 11.0), (0, 0, 5, 8)) == 5.0  # 3-4-5 triangle from pixel (4, 7)
    counts = localisation([(0.0, 224), (100.0, 224), (113.0, 224), (math.inf, 224)])
    assert counts == {"bags": 4, "peak_inside": 1, "peak_within_half_tile": 2}


def test_size_buckets_are_by_the_longer_side_in_mm():
    assert size_bucket((0, 0, 10, 49), 0.2) == "small"  # 9.8 mm
    assert size_bucket((0, 0, 50, 10), 0.2) == "medium"  # 10 mm
    assert size_bucket((0, 0, 99, 10), 0.2) == "medium"  # 19.8 mm
    assert size_bucket((0, 0, 10, 100), 0.2) == "large"  # 20 mm
    assert size_bucket((0, 0, 10, 100), None) is None


def test_detection_report_by_kind_and_size():
    # Image a at 0.5 mm/px: a 5-mm mass (small) and a 15-mm calcification (medium); image b at
    # 1 mm/px: a 40-mm mass (large).
    gts = [Truth("a", (0, 0, 10, 10), "mass"), Truth("a", (50, 50, 80, 80), "calc"),
           Truth("b", (0, 0, 40, 40), "mass")]  # fmt: skip
    dets = [("a", (0, 0, 10, 10), 0.9), ("b", (100, 100, 105, 105), 0.8),  # FP, 5 mm: small
            ("b", (0, 0, 40, 40), 0.7), ("a", (50, 50, 80, 80), 0.6)]  # fmt: skip
    rep = detection_report(dets, gts, spacing_mm={"a": 0.5, "b": 1.0})
    # All: TP, FP, TP, TP: P 1 at R 1/3, then 3/4 at R 1 lifts R 2/3 too.
    assert rep["all"]["ap"] == pytest.approx(1 / 3 + 2 / 3 * 0.75)
    assert (rep["all"]["truths"], rep["all"]["detections"], rep["all"]["tp"]) == (3, 4, 3)
    # Mass: the box on the calcification counts neither way.
    assert rep["by_kind"]["mass"]["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert rep["by_kind"]["mass"]["detections"] == 3
    # Calcification: boxes on masses ignored, the FP counts: FP then TP.
    assert rep["by_kind"]["calc"]["ap"] == pytest.approx(0.5)
    assert rep["map_over_kinds"] == pytest.approx((0.5 + 0.5 * 2 / 3 + 0.5) / 2)
    # Sizes: the unmatched 5-mm box is a false positive for small lesions only.
    assert rep["by_size"]["small"]["ap"] == 1.0 and rep["by_size"]["small"]["detections"] == 2
    assert rep["by_size"]["medium"]["ap"] == 1.0 and rep["by_size"]["medium"]["detections"] == 1
    assert rep["by_size"]["large"]["ap"] == 1.0 and rep["by_size"]["large"]["truths"] == 1
    assert rep["size_buckets_mm"] == {"small": [0.0, 10.0], "medium": [10.0, 20.0],
                                      "large": [20.0, None]}  # fmt: skip
    json.dumps(rep)  # plain JSON: None, not NaN, where a group has no truth
    assert detection_report(dets, [])["all"]["ap"] is None


def test_overlay_draws_truth_over_prediction_on_the_grey_view():
    pixels = np.full((20, 30), 0.5, np.float32)
    amap = np.zeros((20, 30), np.float32)
    amap[2:8, 2:12] = 1.0
    img = np.asarray(overlay_image(pixels, amap, predicted=[[2, 2, 8, 12]],
                                   truths=[[4, 6, 12, 20]]))  # fmt: skip
    assert img.shape == (20, 30, 3)
    assert tuple(img[2, 5]) == RED and tuple(img[7, 2]) == RED  # top and left edges
    assert tuple(img[4, 10]) == GREEN and tuple(img[11, 19]) == GREEN
    assert tuple(img[15, 25]) == (128, 128, 128)  # no attention: the grey view
    assert img[4, 4, 0] > img[4, 4, 2]  # peak attention: red end of the colour map


def test_overlay_leaves_low_attention_grey_and_draws_its_scale_in_the_air():
    pixels = np.zeros((200, 160), np.float32)
    pixels[:, :100] = 0.6  # tissue on the left, air on the right
    amap = np.zeros((200, 160), np.float32)
    amap[20:60, 10:50] = 1.0
    amap[100:140, 10:50] = 0.1  # below the floor (a quarter of the peak)
    img = np.asarray(overlay_image(pixels, amap))
    assert tuple(img[120, 30]) == (153, 153, 153)  # the grey view, untouched
    assert tuple(img[40, 30]) != (153, 153, 153)  # the peak is drawn
    # the colour bar: a column of many colours in the air (right), lower half, none on the left
    right, left = img[100:, 140:], img[100:, :20]
    assert len({tuple(c) for c in right.reshape(-1, 3)}) > 20
    assert len({tuple(c) for c in left.reshape(-1, 3)}) == 1


def test_a_head_without_tile_attention_is_refused():
    import jax

    from milpf_jax.learning.head import HeadConfig, init_params
    from milpf_jax.learning.inference import Head
    from milpf_jax.reading.tiling import TilingConfig

    cfg = HeadConfig(dim=8, local_pool="max")
    head = Head(init_params(jax.random.key(0), cfg), cfg)
    with pytest.raises(ValueError, match="no tile attention to map"):
        Explainer(head, StandIn(standin_spec(32)), TilingConfig(tile_size=32, global_size=32))


def test_the_cohort_of_a_run_is_the_one_its_results_record(tmp_path):
    """results.json (format 2) records the cohort spec; explain reads it, never the command."""
    (tmp_path / "results.json").write_text(json.dumps(
        {"format_version": 2, "cohort": "mias:/data/mias",
         "command": "python experiments/sweep.py --cohort other.csv"}))
    assert recorded_cohort(tmp_path) == "mias:/data/mias"
    (tmp_path / "results.json").write_text(json.dumps(
        {"format_version": 1, "command": "python experiments/sweep.py --cohort m.csv"}))
    with pytest.raises(ValueError, match="records no cohort spec"):
        recorded_cohort(tmp_path)
    with pytest.raises(ValueError, match="give the cohort"):
        explain_run(tmp_path, tmp_path / "out", explainer=object())


# --- end to end: a tiny phantom, the stand-in encoder, the CLIs ------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    mp = pytest.MonkeyPatch()
    mp.setenv("MILPF_CACHE", str(root / "cache"))
    install_standin(mp.setitem, mp.setattr, input_size=32)
    sweep = load_script("sweep")
    assert sweep.main(["--cohort", SPEC, "--encoder", STANDIN, "--workers", "0", "--device",
                       "cpu", "--seeds", "2", "--epochs", "30", "--bootstrap", "0", "--quiet",
                       "--out", str(root / "run")]) == 0  # fmt: skip
    explain = load_script("explain")
    assert explain.main(["--run", str(root / "run"), "--out", str(root / "out"),
                         "--device", "cpu", "--save-maps", "--quiet"]) == 0  # fmt: skip
    yield root
    mp.undo()


def _cohort(root: Path):
    from milpf_jax.reading.sources import read_cohort

    return read_cohort(SPEC, cache_dir=root / "cache")


def _views(root: Path) -> list[dict]:
    """Every explained view: bag row, laterality, path, overlay file, its truths."""
    from milpf_jax.synthetic.phantom_files import read_lesions

    cohort = _cohort(root)
    bags = {b.bag_id: b for b in cohort.bags}
    folder = Path(cohort.bags[0].images[0].path).parent.parent
    lesions = read_lesions(folder / "manifest.lesions.csv")
    out = []
    for row in read_csv(root / "out" / "bags.csv"):
        bag = bags[row["bag_id"]]
        for image, name in zip(bag.images, row["overlays"].split()):
            real = os.path.realpath(image.path)
            truths = [les for les in lesions if os.path.realpath(les["path"]) == real]
            out.append({"bag": row, "laterality": bag.laterality, "path": image.path,
                        "overlay": name, "truths": truths})  # fmt: skip
    return out


def _source_pixels(path: str) -> np.ndarray:
    from milpf_jax.reading.imaging import read_image

    image = read_image(path)
    return image.pixels[:, ::-1] if image.flipped else image.pixels


def test_cli_writes_overlays_boxes_and_a_detection_report(run):
    out = run / "out"
    predictions = read_csv(run / "run" / "predictions.csv")
    test_bags = {r["bag_id"] for r in predictions if r["split"] == "test"}
    bags = read_csv(out / "bags.csv")
    assert {r["bag_id"] for r in bags} == test_bags
    views = _views(run)
    assert len(views) == 2 * len(bags)
    for v in views:
        assert Image.open(out / "overlays" / v["overlay"]).size == (COLS, ROWS)  # (width, height)
    report = json.loads((out / "detection.json").read_text())
    det = report["detection"]
    n_truths = sum(len(v["truths"]) for v in views)
    assert n_truths > 0 and det["all"]["truths"] == n_truths
    assert sum(g["truths"] for g in det["by_kind"].values()) == n_truths
    assert sum(g["truths"] for g in det["by_size"].values()) == n_truths  # 0.8 mm in every file
    assert set(det["by_kind"]) <= {"mass_round", "mass_spiculated", "calc_cluster"}
    assert det["iou_threshold"] == 0.25 and report["settings"]["overlap"] == 0.75
    assert det["all"]["ap"] is not None and 0.0 <= det["all"]["ap"] <= 1.0
    bags_with_lesions = {v["bag"]["bag_id"] for v in views if v["truths"]}
    loc = report["localisation"]
    assert loc["bags"] == len(bags_with_lesions)
    assert 0 <= loc["peak_inside"] <= loc["peak_within_half_tile"] <= loc["bags"]
    boxes = read_csv(out / "boxes.csv")
    assert len(boxes) == det["all"]["detections"] == sum(int(r["boxes"]) for r in bags)
    for b in boxes:
        y0, x0, y1, x1 = (int(b[k]) for k in ("y0", "x0", "y1", "x1"))
        assert 0 <= y0 < y1 <= ROWS and 0 <= x0 < x1 <= COLS
        assert float(b["score"]) <= float(b["probability"]) + 1e-6
    for bag in bags:  # the bag's strongest region scores the bag's probability
        assert int(bag["tiles"]) > 0
        scores = [float(b["score"]) for b in boxes if b["bag_id"] == bag["bag_id"]]
        assert max(scores) == pytest.approx(float(bag["probability"]), abs=2e-6)


def test_truth_boxes_land_on_the_lesions_the_phantom_drew(run):
    checked_right = 0
    for v in _views(run):
        overlay = np.asarray(Image.open(run / "out" / "overlays" / v["overlay"]))
        source = _source_pixels(v["path"])
        for les in v["truths"]:
            y0, x0, y1, x1 = les["y0"], les["x0"], les["y1"], les["x1"]
            top, left = overlay[y0, x0:x1], overlay[y0:y1, x0]
            assert (top == GREEN).all() and (left == GREEN).all()
            cy, cx, h = (y0 + y1) // 2, (x0 + x1) // 2, max(1, (y1 - y0) // 4)
            mirror_cx = COLS - 1 - cx
            if v["laterality"] == "R" and les["kind"].startswith("mass") \
                    and abs(cx - mirror_cx) > 2 * h + 1:
                # In the file a right breast lies on the right: the mass's core is bright at
                # its box, brighter than where a mirrored (reader's) frame would put it.
                inside = source[cy - h : cy + h + 1, cx - h : cx + h + 1].mean()
                mirrored = source[cy - h : cy + h + 1, mirror_cx - h : mirror_cx + h + 1].mean()
                assert inside > mirrored + 0.15
                checked_right += 1
    assert checked_right > 0


def test_heatmaps_and_predicted_boxes_are_in_the_files_frame(run):
    boxes = read_csv(run / "out" / "boxes.csv")
    views = _views(run)
    maps = {v["overlay"]: np.load(run / "out" / "maps" / v["overlay"].replace(".png", ".npy"))
            for v in views}  # fmt: skip
    bag_peak = {}
    for v in views:
        bag_id = v["bag"]["bag_id"]
        bag_peak[bag_id] = max(bag_peak.get(bag_id, 0.0), float(maps[v["overlay"]].max()))
    for v in views:
        amap = maps[v["overlay"]].astype(np.float32)
        assert amap.shape == (ROWS, COLS)
        covered = amap > 0
        source = _source_pixels(v["path"])
        assert source[covered].mean() > source[~covered].mean() + 0.2  # maps lie on the breast
        centre = np.nonzero(covered)[1].mean()
        assert (centre > COLS / 2) == (v["laterality"] == "R")
        overlay = np.asarray(Image.open(run / "out" / "overlays" / v["overlay"]))
        # A box bounds a region of map >= half the bag's peak: each of its edges touches it.
        high = amap >= 0.5 * bag_peak[v["bag"]["bag_id"]] * (1 - 2e-3)  # float16 maps
        for b in (b for b in boxes if b["view"] == v["path"]):
            y0, x0, y1, x1 = (int(b[k]) for k in ("y0", "x0", "y1", "x1"))
            region = high[y0:y1, x0:x1]
            assert region[0].any() and region[-1].any()
            assert region[:, 0].any() and region[:, -1].any()
            left = overlay[y0:y1, x0]
            assert (left == RED).all(axis=-1).mean() > 0.5  # green truth edges may cross it


def test_explaining_without_overlap_reproduces_the_run(run):
    from milpf_jax.data.store import Store

    explainer = load_explainer(run / "run", overlap=0.0, device="cpu")
    results = json.loads((run / "run" / "results.json").read_text())
    store = Store.open(results["store"])
    ids = list(store.array("bag_id"))
    cohort = {b.bag_id: b for b in _cohort(run).bags}
    rows = [r for r in read_csv(run / "run" / "predictions.csv") if r["split"] == "test"][:3]
    for row in rows:
        result = explain_bag(explainer, cohort[row["bag_id"]])
        # The store holds float16 embeddings of the same inputs: the same probability, nearly.
        assert result.probability == pytest.approx(float(row["p_best"]), abs=2e-3)
        b = ids.index(row["bag_id"])
        stored = store.array("tile_boxes")[b, store.array("tiles_mask")[b]]  # [T, 5]
        for j, view in enumerate(result.views):
            np.testing.assert_array_equal(view.tile_boxes, stored[stored[:, 0] == j, 1:])
            assert view.flipped == (cohort[row["bag_id"]].laterality == "R")
            assert view.attention.shape == view.shape == (ROWS, COLS)
        weights = np.concatenate([v.weights for v in result.views])
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)  # one softmax over the bag's tiles


def test_a_pseudonymised_cohort_is_named_by_view_ref(run, tmp_path):
    cohort = _cohort(run)
    root = Path(cohort.bags[0].images[0].path).parent.parent
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "exam_id", "laterality", "view", "birads", "view_ref"])
        for i, bag in enumerate(cohort.bags[:3]):
            for k, im in enumerate(bag.images):
                w.writerow([im.path, f"P-{i:04x}", "E-1", bag.laterality, im.view,
                            bag.raw_label, f"I-{i:04x}{k}"])  # fmt: skip
    explainer = load_explainer(run / "run", device="cpu")
    cfg = ExplainConfig(split="all", max_bags=3, lesions=str(root / "manifest.lesions.csv"))
    summary = explain_run(run / "run", tmp_path / "out", cfg, cohort=str(manifest),
                          explainer=explainer, progress=False)
    assert summary["bags"] == 3 and not summary["failed"]
    written = {p.name: p.read_text() for p in (tmp_path / "out").glob("*.*")}
    assert set(written) == {"boxes.csv", "bags.csv", "detection.json"}
    for text in written.values():
        assert ".dcm" not in text and "images/" not in text and str(root) not in text
    views = {r["view"] for r in read_csv(tmp_path / "out" / "boxes.csv")}
    assert views and all(v.startswith("I-") for v in views)
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert overlays == sorted(f"P-{i:04x}_E-1_{lat}_{view}.png" for i, lat in
                              [(i, cohort.bags[i].laterality) for i in range(3)]
                              for view in ("CC", "MLO"))  # fmt: skip


# --- slow: a real encoder ---------------------------------------------------------------------


@pytest.mark.slow
def test_attention_peaks_on_the_lesions_with_efficientnet(tmp_path, monkeypatch):
    """EfficientNet-Lite0 on a small full-resolution phantom (0.2 mm, 224-px tiles = 45 mm): for
    most positive test bags the peak of the bag's heatmaps lies within one tile of a lesion, and
    for half of them within half a tile. A random point of the tiled breast is within half a
    tile of a lesion about 27% of the time (within a tile: 61%; measured on the main job's
    validation maps), so the second bound is the one chance does not pass."""
    from milpf_jax.synthetic.phantom_files import read_lesions

    spec = "phantom:n_patients=100"
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path / "cache"))
    assert load_script("sweep").main(["--cohort", spec, "--seeds", "8", "--bootstrap", "0",
                                      "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert load_script("explain").main(["--run", str(tmp_path / "run"), "--out",
                                        str(tmp_path / "out"), "--save-maps", "--quiet"]) == 0
    from milpf_jax.reading.sources import read_cohort

    cohort = read_cohort(spec, cache_dir=tmp_path / "cache")
    bags = {b.bag_id: b for b in cohort.bags}
    folder = Path(cohort.bags[0].images[0].path).parent.parent
    lesions = read_lesions(folder / "manifest.lesions.csv")
    tile = 224
    distance = []  # per positive test bag: from the bag's attention peak to the nearest lesion
    for row in read_csv(tmp_path / "out" / "bags.csv"):
        if row["label"] != "1":
            continue
        best = None
        for image, name in zip(bags[row["bag_id"]].images, row["overlays"].split()):
            amap = np.load(tmp_path / "out" / "maps" / name.replace(".png", ".npy"))
            # The map is flat over each cell of the tile grid: take the top cell's centre.
            ys, xs = np.nonzero(amap >= amap.max())
            if best is None or amap.max() > best[0]:
                best = (amap.max(), image.path, ys.mean(), xs.mean())
        _, path, py, px = best
        gaps = [
            math.hypot(max(les["y0"] - py, 0, py - les["y1"] + 1),
                       max(les["x0"] - px, 0, px - les["x1"] + 1))
            for les in lesions if os.path.realpath(les["path"]) == os.path.realpath(path)
        ]  # fmt: skip
        distance.append(min(gaps, default=math.inf))
    near = np.array(distance) <= tile
    print(f"attention peak within a tile of a lesion: {near.sum()}/{len(near)} positive test "
          f"bags; within half a tile: {(np.array(distance) <= tile / 2).sum()}")
    assert len(near) >= 10 and near.mean() >= 0.8
    assert np.mean(np.array(distance) <= tile / 2) >= 0.5


def test_a_task_other_than_the_runs_is_refused_before_any_work(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"data": {"task": "mass"}}))
    with pytest.raises(ValueError, match=r"run was trained on task 'mass', not 'calcification'"):
        explain_run(run, tmp_path / "out", ExplainConfig(task="calcification"))
    assert not (tmp_path / "out").exists()


def test_maps_from_the_store_need_no_encoder_and_land_in_the_run(run, monkeypatch):
    """explain.py --maps store: the run's own stored tiles through its head, written to
    RUN/explain/store/ by default; the probability is the run's own p_best (the same tiles),
    and no encoder is ever loaded."""
    from milpf_jax.extraction import encoders

    def no_encoder(*args, **kwargs):
        raise AssertionError("--maps store loaded an encoder")

    monkeypatch.setattr(encoders, "get_encoder", no_encoder)
    explain = load_script("explain")
    assert explain.main(["--run", str(run / "run"), "--maps", "store", "--quiet"]) == 0
    out = run / "run" / "explain" / "store"
    predictions = {r["bag_id"]: r for r in read_csv(run / "run" / "predictions.csv")}
    bags = read_csv(out / "bags.csv")
    assert {r["bag_id"] for r in bags} == {b for b, r in predictions.items()
                                          if r["split"] == "test"}
    for row in bags:
        assert float(row["probability"]) == pytest.approx(
            float(predictions[row["bag_id"]]["p_best"]), abs=2e-6)
        for name in row["overlays"].split():
            assert Image.open(out / "overlays" / name).size == (COLS, ROWS)
    report = json.loads((out / "detection.json").read_text())
    assert report["settings"]["maps"] == "store" and report["detection"]["all"]["truths"] > 0


def test_froc_on_a_hand_made_case():
    """LUNA16: a second box on a found lesion is ignored, false positives per image over every
    image (those without boxes too), sensitivity at each rate read off the step curve."""
    from milpf_jax.evaluation.detection import froc

    dets = [("a", (0, 0, 10, 10), 0.9),    # hits lesion 1
            ("a", (0, 0, 10, 12), 0.8),    # a second box on lesion 1: ignored
            ("b", (50, 50, 60, 60), 0.7),  # FP
            ("c", (0, 0, 20, 20), 0.6),    # hits lesion 2 (IoU 0.25 exactly)
            ("a", (30, 30, 40, 40), 0.5)]  # FP  # fmt: skip
    truths = [("a", (0, 0, 10, 10)), ("c", (0, 0, 10, 10)), ("d", (0, 0, 4, 4))]
    out = froc(dets, truths, n_images=4)
    assert out["curve"]["fp_per_image"] == [0.0, 0.0, 0.0, 0.25, 0.25, 0.5]
    assert out["curve"]["sensitivity"] == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3],
                                                        abs=1e-6)
    # at 1/8 FP/image only the first operating points qualify; from 1/4 on, two of three found
    assert out["sensitivity"] == pytest.approx([1 / 3] + [2 / 3] * 6)
    assert out["mean_sensitivity"] == pytest.approx((1 / 3 + 6 * 2 / 3) / 7)
    assert froc([], truths, n_images=4)["mean_sensitivity"] == 0.0
    assert froc(dets, [], n_images=4)["mean_sensitivity"] is None


def test_baseline_maps_keep_the_probability_and_change_only_where():
    from milpf_jax.explanation.baselines import baseline, baseline_weights
    from milpf_jax.explanation.explain import BagExplanation, ViewExplanation

    pixels = np.zeros((40, 40), np.float32)
    pixels[20:40, 20:40] = 1.0  # one bright quadrant
    boxes = np.array([[0, 0, 20, 20], [0, 20, 20, 40], [20, 0, 40, 20], [20, 20, 40, 40]])
    view = ViewExplanation(name="v", path="v", ref="", view="CC", flipped=False, shape=(40, 40),
                           pixel_spacing_mm=None, tile_boxes=boxes,
                           weights=np.array([0.7, 0.1, 0.1, 0.1], np.float32),
                           attention=attention_map((40, 40), boxes, [0.7, 0.1, 0.1, 0.1]),
                           boxes=np.zeros((0, 4), np.int32), scores=np.zeros(0), pixels=pixels)
    bag = BagExplanation("b", "p", "1", 0.8, (view,))
    [uniform] = baseline_weights("uniform", [view])
    assert uniform.tolist() == [0.25] * 4
    [bright] = baseline_weights("brightness", [view])
    assert bright.tolist() == [0.0, 0.0, 0.0, 1.0]
    shown = baseline("brightness", bag)
    assert shown.probability == 0.8
    assert shown.views[0].boxes.tolist() == [[20, 20, 40, 40]]
    assert shown.views[0].scores.tolist() == pytest.approx([0.8])


def test_froc_figure_plots_the_curves_of_detection_json():
    from milpf_jax.evaluation.detection import froc
    from milpf_jax.evaluation.figures import froc_figure

    head = froc([("a", (0, 0, 10, 10), 0.9), ("b", (0, 0, 5, 5), 0.5)], [("a", (0, 0, 10, 10))], 2)
    none = froc([("b", (0, 0, 5, 5), 0.5)], [("a", (0, 0, 10, 10))], 2)
    summary = {"detection": {"froc": head, "iou_threshold": 0.25},
               "baselines": {"uniform": {"detection": {"froc": none}}},
               "settings": {"maps": "store"}}
    fig = froc_figure(summary)
    lines = {line.get_gid(): line for line in fig.axes[0].lines if line.get_gid()}
    assert set(lines) == {"froc-head", "froc-uniform"}
    assert lines["froc-head"].get_ydata().tolist() == head["curve"]["sensitivity"][1:]
    assert lines["froc-uniform"].get_ydata().tolist() == [0.0]


def test_the_docs_figures_command_writes_the_readme_pictures(run, tmp_path):
    """experiments/docs_figures.py on a run: both maps modes explained when missing, and the
    README's five pictures, each a PNG under 200 kB."""
    docs = load_script("docs_figures")
    out = tmp_path / "figures"
    assert docs.main(["--run", str(run / "run"), "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["froc.png", "overlay-retile.png", "overlay-store.png", "roc.png", "runs.png"]
    for path in out.iterdir():
        assert path.stat().st_size <= 200_000 and Image.open(path).format == "PNG"
    for mode in ("store", "retile"):
        assert (run / "run" / "explain" / mode / "detection.json").is_file()
    # the two overlays show the same view, at the view's size
    assert Image.open(out / "overlay-store.png").size == Image.open(out / "overlay-retile.png").size
