"""report.html: one self-contained page, checked as files and in a real browser (headless
Chromium driven by Selenium): every image loads, the gallery filter works, nothing but the file
itself is requested."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from helpers.runs import write_results
from helpers.tools import needs_tool
from milpf_jax.evaluation import figures, report


def _fake_explain(run, mode="store"):
    """RUN/explain/<mode>/: bags.csv and overlays as explain writes them, for the test bags."""
    d = run / "explain" / mode
    (d / "overlays").mkdir(parents=True)
    with open(run / "predictions.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    rows = []
    for r in test:
        names = []
        for view in ("CC", "MLO"):
            name = f"{r['bag_id'].replace('/', '_')}_{view}.png"
            Image.fromarray(np.full((600, 400, 3), 90, np.uint8)).save(d / "overlays" / name)
            names.append(name)
        rows.append(dict(bag_id=r["bag_id"], probability=r["p_best"], overlays=" ".join(names)))
    with open(d / "bags.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bag_id", "probability", "overlays"])
        w.writeheader()
        w.writerows(rows)
    (d / "detection.json").write_text(json.dumps(dict(
        bags=len(rows), views=2 * len(rows), ground_truth="the cohort's own",
        detection=dict(iou_threshold=0.25, all=dict(ap=0.125, truths=4, detections=9, tp=1)),
        localisation=dict(bags=4, peak_inside=2, peak_within_half_tile=3))))
    return len(rows)


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    results = write_results(run)
    figures.write_run_figures(run, results)
    return run, results


def _images(page):
    return re.findall(r"<img [^>]*src='([^']*)'", page)


def test_report_is_one_file_with_a_csp_and_only_data_uris(run):
    run, results = run
    n = _fake_explain(run)
    page = report.write_run_report(run).read_text()
    assert f'content="{report.CSP}"' in page
    srcs = _images(page)
    assert len(srcs) == 4 + 2 * n  # the figures and every overlay
    assert all(s.startswith("data:image/") for s in srcs)
    assert not re.search(r"(href|src)=['\"](?!data:)", page)  # nothing fetched
    assert "AP at IoU &gt;= 0.25" in page and "0.125" in page and "store</b>" in page
    cards = re.findall(r"<div class='bag (\w*)' data-label='(\w+)'", page)
    assert len(cards) == results["data"]["bags"]["test"] == n
    probs = [float(x) for x in re.findall(r"p = ([0-9.]+), label", page)]
    assert probs == sorted(probs, reverse=True)  # sorted by predicted probability
    thr = results["best"]["test"]["threshold"]["value"]
    with open(run / "predictions.csv", newline="") as f:
        test = {r["bag_id"]: r for r in csv.DictReader(f) if r["split"] == "test"}
    wrong = sum((float(r["p_best"]) >= thr) != (r["label"] == "1") for r in test.values())
    assert sum(c == "incorrect" for c, _ in cards) == wrong


def test_thumbnails_are_at_most_256_px_and_none_leaves_every_mammogram_out(run):
    import base64
    import io

    run, _ = run
    _fake_explain(run)
    page = report.write_run_report(run, images="thumbnails").read_text()
    jpegs = [s for s in _images(page) if s.startswith("data:image/jpeg")]
    assert jpegs
    for s in jpegs[:4]:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            assert max(im.size) <= 256 and im.size == (171, 256)
    page = report.write_run_report(run, images="none").read_text()
    assert len(_images(page)) == 4  # the figures only
    full = report.write_run_report(run, images="full").read_text()
    assert sum(s.startswith("data:image/png") for s in _images(full)) == len(_images(full))
    with pytest.raises(ValueError, match="report images 'some'"):
        report.write_run_report(run, images="some")


def test_plain_gallery_without_explain_says_why_no_view_is_shown(run):
    from milpf_jax.sweep import cohort_views

    run, _ = run
    page = report.write_run_report(run, read_views=cohort_views).read_text()
    assert "explain has not run" in page and "records no cohort" in page
    assert len(_images(page)) == 4
    page = report.write_run_report(run).read_text()
    assert "no views were read" in page and len(_images(page)) == 4


def _chrome(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    import shutil

    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@needs_tool("chromium")
@needs_tool("chromedriver")
def test_report_in_headless_chromium(run, tmp_path):
    from selenium.webdriver.support.ui import Select

    run, _ = run
    n = _fake_explain(run)
    page = report.write_run_report(run)
    driver = _chrome(tmp_path)
    try:
        url = page.resolve().as_uri()
        driver.get(url)
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 4 + 2 * n and min(widths) > 0  # every image loaded

        def shown():
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('.bag')).filter("
                "c => c.offsetParent !== null).map(c => c.dataset.label + '/' + "
                "c.dataset.outcome)")

        assert len(shown()) == n
        Select(driver.find_element("id", "filter-label")).select_by_value("positive")
        positives = shown()
        assert 0 < len(positives) < n and all(s.startswith("positive/") for s in positives)
        Select(driver.find_element("id", "filter-outcome")).select_by_value("incorrect")
        assert all(s == "positive/incorrect" for s in shown())
        assert driver.find_element("id", "shown").text == str(len(shown()))
        driver.save_screenshot(str(tmp_path / "report.png"))
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        sent = [m["params"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        # Chrome logs each data: URI as a request (decoded in place, nothing leaves the page)
        # and its own start page's chrome:// resources; every other request is the file.
        urls = {s["request"]["url"] for s in sent}
        data = {u for u in urls if u.startswith("data:image/")}
        assert len(data) >= 4
        assert {u for u in urls - data
                if not u.startswith(("chrome://", "chrome-untrusted://"))} == {url}, urls - data
    finally:
        driver.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000
