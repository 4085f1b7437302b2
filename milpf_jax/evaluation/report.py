"""One self-contained HTML page per run folder: provenance, metrics, figures, a gallery of bags.

`write_run_report(RUN)` writes RUN/report.html: the command and provenance (store, encoder,
preprocessing, package version, dates), the metric table with 95% intervals, every figure of
RUN/figures/, explain's detection numbers where explain has run, and a gallery of the test bags
sorted by predicted probability, each breast's views in hanging order (CC over MLO, a right
breast in the R column, a left in the L column, as RCC|LCC over RMLO|LMLO), filterable by label
and by correct/incorrect at the validation threshold. The gallery shows explain's overlays
(RUN/explain/store/ preferred, else RUN/explain/retile/), else the plain views read through the
reader from the run's recorded cohort (by `read_views`, which the sweep layer gives).
`write_summary_report(OUT, ...)` is the page of a
cross-validation, repeated splits or a comparison.

The page fetches nothing: images are data URIs, style and script are inline, and a
Content-Security-Policy meta tag forbids every other source. The images are patients'
mammograms: `images` is "none" (no image at all), "thumbnails" (the default: JPEG, at most
256 px on the longer side) or "full" (PNG, the file's resolution); images are captioned by bag
id and view code or `view_ref`, never by path.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from milpf_jax.evaluation import runs
from milpf_jax.evaluation.metrics import TABLE_METRICS
from milpf_jax.files import write_text

log = logging.getLogger(__name__)

REPORT_IMAGES = ("none", "thumbnails", "full")
THUMBNAIL_PX = 256
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")
MAPS_MODES = ("store", "retile")  # explain's output folders, in the order the report prefers
VIEW_ROWS = {"CC": 1, "XCCL": 1, "XCCM": 1, "FB": 1, "MLO": 2, "ML": 2, "LM": 2, "LMO": 2}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.num{text-align:right;
font-variant-numeric:tabular-nums}code{font-size:12px;word-break:break-all}
figure{display:inline-block;margin:8px;vertical-align:top;max-width:100%}figure img{max-width:100%;
border:1px solid #eee}figcaption{font-size:12px;color:#555}
.filters{position:sticky;top:0;background:#fff;padding:8px 0;z-index:1}
.bag{display:inline-block;margin:6px;padding:6px;border:2px solid #ccc;border-radius:4px;
vertical-align:top;background:#fafafa}.bag[hidden]{display:none}.bag.incorrect{border-color:#d62728}
.bag.correct{border-color:#2ca02c}.bag .head{font-size:12px;margin-bottom:4px}
.views{display:grid;grid-template-columns:auto auto;gap:4px}.view{text-align:center;font-size:11px}
.view img{display:block;max-width:256px;max-height:256px;background:#000}.note{color:#777}
"""

SCRIPT = """
function applyFilters(){
  var l=document.getElementById('filter-label').value;
  var o=document.getElementById('filter-outcome').value,n=0;
  document.querySelectorAll('.bag').forEach(function(c){
    var show=(l==='all'||c.dataset.label===l)&&(o==='all'||c.dataset.outcome===o);
    c.hidden=!show;if(show){n++;}});
  document.getElementById('shown').textContent=n;
}
document.getElementById('filter-label').addEventListener('change',applyFilters);
document.getElementById('filter-outcome').addEventListener('change',applyFilters);
applyFilters();
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else \
        f"{x:.{digits}f}"


def _ci(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    ci = entry.get("ci95")
    text = _num(entry.get("value"))
    return text + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _check_images(images: str) -> None:
    if images not in REPORT_IMAGES:
        raise ValueError(f"report images {images!r}: choose one of {', '.join(REPORT_IMAGES)}")


def encode_image(image, images: str) -> str:
    """A PIL image as a data URI: a JPEG thumbnail (<= THUMBNAIL_PX) or the full-size PNG."""
    buf = io.BytesIO()
    if images == "thumbnails":
        image = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        image.save(buf, format="JPEG", quality=85)
        return data_uri(buf.getvalue(), "image/jpeg")
    image.save(buf, format="PNG")
    return data_uri(buf.getvalue(), "image/png")


# -- page parts --------------------------------------------------------------------------------


def _table(header, rows, numeric=()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f"<td class=num>{_esc(c)}</td>" if i in numeric else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def _figures_html(fig_dir: Path, names=None) -> str:
    """The PNGs of a figures folder as <figure>s (data URIs), in `names` order, then the rest."""
    if not fig_dir.is_dir():
        return "<p class=note>No figures.</p>"
    pngs = {p.stem: p for p in sorted(fig_dir.glob("*.png"))}
    order = [n for n in (names or ()) if n in pngs] + [n for n in pngs if n not in (names or ())]
    return "".join(f"<figure><img alt='{_esc(n)}' "
                   f"src='{data_uri(pngs[n].read_bytes(), 'image/png')}'>"
                   f"<figcaption>{_esc(n)}.png</figcaption></figure>" for n in order)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<meta name=viewport content='width=device-width'><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def _provenance(results: dict, run_dir: Path) -> str:
    attrs = results.get("store_attrs") or {}
    env = results.get("environment") or {}
    data = results.get("data") or {}
    encoder = " ".join(str(x) for x in (attrs.get("encoder"), attrs.get("model_id"),
                                        attrs.get("model_revision")) if x)
    rows = [
        ("command", results.get("command") or "(not recorded)"),
        ("cohort", results.get("cohort") or "(none recorded)"),
        ("store", results.get("store") or "(in memory)"),
        ("encoder", encoder or "(not recorded)"),
        ("preprocessing", json.dumps(attrs.get("preprocessing"), sort_keys=True)),
        ("task, mapping, split seed, fold", f"{data.get('task')}, {data.get('mapping')}, "
                                            f"{data.get('split_seed')}, {data.get('fold')}"),
        ("bags train/val/test", "/".join(str((data.get("bags") or {}).get(s, "?"))
                                         for s in ("train", "val", "test"))),
        ("package version", f"milpf-jax {env.get('package_version')}, jax {env.get('jax')}, "
                            f"{env.get('backend')} {', '.join(env.get('devices') or [])}"),
        ("results written", _utc((run_dir / "results.json").stat().st_mtime)
         if (run_dir / "results.json").is_file() else "now"),
        ("report written", _utc(time.time())),
    ]
    return "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>"
                               for k, v in rows) + "</table>"


def _metrics(results: dict) -> str:
    best, summary = results["best"], results.get("summary") or {}
    header = f"seed {best.get('seed')}, lr {best.get('lr')}, wd {best.get('weight_decay')}, " \
             f"epoch {best.get('best_epoch')}, val AUC {_num(best['val']['auc'])}"
    rows = [(k, _ci(best["test"].get(k)), f"{_num(summary[k]['mean'])} ± "
             f"{_num(summary[k]['std'])}" if k in summary else "")
            for k in TABLE_METRICS if k in best["test"]]
    if best.get("test_exam"):
        rows.append(("auc, exam level", _ci(best["test_exam"]["auc"]), "(best-validation run)"))
    thr = best["test"].get("threshold", {}).get("value")
    return (f"<p>Best-validation run {best['run']} ({_esc(header)}); thresholds fixed on "
            f"validation (max bACC: {_num(thr)}).</p>"
            + _table(("metric", "best-val run (test, 95% CI)",
                      f"all {len(results.get('runs', []))} runs (test)"), rows, numeric=(1, 2)))


def explain_dir(run_dir) -> Path | None:
    """RUN/explain/store, else RUN/explain/retile, where explain has written a bags.csv."""
    for mode in MAPS_MODES:
        d = Path(run_dir) / "explain" / mode
        if (d / "bags.csv").is_file():
            return d
    return None


def _scalars(obj, prefix="") -> list[tuple[str, object]]:
    """(dotted key, value) of every number or string leaf of a JSON block."""
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _scalars(v, f"{prefix}{k}.")]
    if isinstance(obj, (int, float, str)) and not isinstance(obj, bool):
        return [(prefix[:-1], obj)]
    return []


def _detection(d: Path) -> str:
    """explain's detection.json: AP and groups, localisation, FROC and baselines where present."""
    path = d / "detection.json"
    if not path.is_file():
        return "<p class=note>explain wrote no detection.json.</p>"
    det = json.loads(path.read_text())
    parts = [f"<p>Maps: <b>{_esc(d.name)}</b>; {det.get('bags')} bags, {det.get('views')} "
             f"views; ground truth: {_esc(det.get('ground_truth'))}.</p>"]
    rep = det.get("detection") or {}
    groups = [("all", rep.get("all"))] + [(f"kind {k}", g) for k, g in
                                          (rep.get("by_kind") or {}).items()]
    groups += [(f"size {k}", g) for k, g in (rep.get("by_size") or {}).items()]
    rows = [(name, _num(g.get("ap")), g.get("truths"), g.get("detections"), g.get("tp"))
            for name, g in groups if isinstance(g, dict)]
    if rows:
        parts.append(_table((f"AP at IoU >= {rep.get('iou_threshold', 0.25)}", "AP", "lesions",
                             "boxes", "found"), rows, numeric=(1, 2, 3, 4)))
    loc = det.get("localisation") or {}
    if loc.get("bags"):
        parts.append(f"<p>Attention peak on a lesion in {loc.get('peak_inside')}/"
                     f"{loc['bags']} bags with lesions, within half a tile of one in "
                     f"{loc.get('peak_within_half_tile')}.</p>")
    for key in ("froc", "baselines"):
        block = det.get(key) or rep.get(key)
        if block:
            parts.append(f"<h3>{_esc(key)}</h3>" + _table(("", "value"), [
                (k, _num(v) if isinstance(v, float) else v) for k, v in _scalars(block)],
                numeric=(1,)))
    froc = d / "figures" / "froc.png"
    if froc.is_file():
        parts.append(_figures_html(froc.parent, ["froc"]))
    return "".join(parts)


# -- the gallery ---------------------------------------------------------------------------------


def _view_of_overlay(name: str) -> str:
    """The view code of explain's `<bag>_<view>[_k].png` (view codes hold no underscore)."""
    parts = Path(name).stem.split("_")
    return parts[-2] if len(parts) > 1 and parts[-1].isdigit() else parts[-1]


def _overlay_views(d: Path, images: str) -> dict[str, list]:
    """bag_id -> [(view code, caption, data URI or None, note)] of explain's overlays."""
    from PIL import Image

    out = {}
    with open(d / "bags.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            views = []
            for name in (row.get("overlays") or "").split():
                code, uri, note = _view_of_overlay(name), None, ""
                try:
                    with Image.open(d / "overlays" / name) as im:
                        uri = encode_image(im, images)
                except OSError as err:
                    note = f"overlay not readable: {type(err).__name__}"
                views.append((code, code, uri, note))
            out[row["bag_id"]] = views
    return out


def _card(row: dict, views: list, threshold: float | None) -> str:
    label, p = int(row["label"]), float(row["p_best"])
    outcome = "" if threshold is None else "correct" if (p >= threshold) == bool(label) \
        else "incorrect"
    side = (row.get("laterality") or "").upper()
    column = 2 if side == "L" else 1
    cells, extra = [], 3
    for code, caption, uri, note in views:
        r = VIEW_ROWS.get(str(code).upper())
        if r is None:
            r, extra = extra, extra + 1
        body = (f"<img alt='{_esc(row['bag_id'])} {_esc(code)}' src='{uri}'>" if uri else
                f"<div class=note>{_esc(note or 'no image')}</div>")
        cells.append(f"<div class=view style='grid-column:{column};grid-row:{r}'>{body}"
                     f"{_esc(side)}{_esc(caption)}</div>")
    return (f"<div class='bag {outcome}' data-label='{'positive' if label else 'negative'}' "
            f"data-outcome='{outcome}'><div class=head><b>{_esc(row['bag_id'])}</b><br>"
            f"p = {p:.3f}, label {label}{', ' + outcome if outcome else ''}</div>"
            f"<div class=views>{''.join(cells)}</div></div>")


def _gallery(run_dir: Path, results: dict, images: str, read_views) -> str:
    rows = sorted((r for r in runs.read_predictions(run_dir).values() if r["split"] == "test"),
                  key=lambda r: -float(r["p_best"]))
    threshold = (results["best"]["test"].get("threshold") or {}).get("value")
    d = explain_dir(run_dir)
    note = ""
    if images == "none":
        views, note = {}, "images left out (--report-images none)"
    elif d is not None:
        views = _overlay_views(d, images)
        note = f"attention maps and boxes from explain ({d.name} maps)"
    elif read_views is None:
        views, note = {}, "explain has not run, and no views were read for this page"
    else:
        views, note = read_views(results, [r["bag_id"] for r in rows], images)
        note = "; ".join(x for x in ("plain views (explain has not run)", note) if x)
    filters = (
        "<div class=filters>label <select id=filter-label><option value=all>all</option>"
        "<option value=positive>positive</option><option value=negative>negative</option>"
        "</select> outcome at the validation threshold <select id=filter-outcome>"
        "<option value=all>all</option><option value=correct>correct</option>"
        "<option value=incorrect>incorrect</option></select> "
        f"<span id=shown>{len(rows)}</span> of {len(rows)} test bags shown</div>")
    cards = "".join(_card(r, views.get(r["bag_id"], []), threshold) for r in rows)
    return (f"<p>Test bags by predicted probability (best-validation run), each breast's views "
            f"in hanging order (CC over MLO; R on the left, L on the right); a green border: "
            f"called correctly at the validation threshold {_num(threshold)}, red: not. "
            f"{_esc(note)}.</p>{filters}<div id=gallery>{cards}</div>")


# -- the pages ---------------------------------------------------------------------------------

RUN_FIGURES = ("roc", "roc-exam", "runs", "curves", "reliability")


def write_run_report(run_dir, *, images: str = "thumbnails", results: dict | None = None,
                     read_views=None) -> Path:
    """RUN/report.html (see the module's docstring); returns its path.

    results: results.json's dict when the caller holds it (else read from RUN).
    read_views: where explain has not run, fn(results, bag_ids, images) -> ({bag_id: [(view
    code, caption, data URI or None, note)]}, note) giving the plain views (the sweep's
    `milpf_jax.sweep.cohort_views` reads them through the reader; this layer reads no image
    file but explain's PNGs).
    """
    _check_images(images)
    run_dir = Path(run_dir)
    results = runs.read_results(run_dir) if results is None else results
    d = explain_dir(run_dir)
    body = (f"<h1>milpf-jax run {_esc(run_dir.name)}</h1><h2>Provenance</h2>"
            f"{_provenance(results, run_dir)}<h2>Metrics</h2>{_metrics(results)}"
            f"<h2>Figures</h2>{_figures_html(run_dir / 'figures', RUN_FIGURES)}"
            f"<h2>Attention maps and detection</h2>"
            + (_detection(d) if d else "<p class=note>explain has not run on this folder "
               "(experiments/explain.py writes RUN/explain/).</p>")
            + f"<h2>Gallery</h2>{_gallery(run_dir, results, images, read_views)}"
            f"<script>{SCRIPT}</script>")
    return write_text(run_dir / "report.html", _page(f"milpf-jax {run_dir.name}", body))


def write_summary_report(out_dir, *, title: str, command: str = "", sections=(),
                         figures=()) -> Path:
    """OUT/report.html of several runs (folds, splits, a comparison): the command, the given
    sections ((heading, header, rows) tables) and OUT/figures/<name>.png for `figures`."""
    out = Path(out_dir)
    body = [f"<h1>{_esc(title)}</h1><p>Command: <code>{_esc(command or '(not recorded)')}"
            f"</code>; report written {_utc(time.time())}.</p>"]
    for heading, header, rows in sections:
        body.append(f"<h2>{_esc(heading)}</h2>" + _table(header, rows))
    body.append("<h2>Figures</h2>" + _figures_html(out / "figures", figures))
    return write_text(out / "report.html", _page(title, "".join(body)))


def _split_rows(results_by_key: dict, names: dict) -> list[tuple]:
    rows = []
    for key, res in results_by_key.items():
        b = res["best"]
        rows.append((names[key], b["run"], _num(b["val"]["auc"]), _ci(b["test"]["auc"]),
                     _ci(b["test"]["bacc"]), _ci(b["test"]["spec_at_sens90_roc"]),
                     _ci((b.get("test_exam") or {}).get("auc")),
                     res["data"]["bags"]["test"]))
    return rows


SPLIT_HEADER = ("split", "selected run", "val AUC", "test AUC [95% CI]", "bACC",
                "Spec@Sens0.9 (ROC)", "exam AUC", "test bags")


def write_splits_pictures(out_dir, summary: dict, results_by_key: dict, names: dict) -> Path:
    """OUT/figures/folds.png (each fold's or split's test AUC with its interval, and the pooled
    out-of-fold AUC or the mean) and OUT/report.html of a cross-validation or repeated splits.

    summary: folds.json's or splits.json's dict; results_by_key: fold or split seed -> that
    run's results; names: the same keys -> "fold 0/5", "split seed 3", ... Returns the page."""
    from milpf_jax.evaluation.figures import folds_figure, save_figure

    out = Path(out_dir)
    keys = list(results_by_key)
    aucs = [results_by_key[k]["best"]["test"]["auc"] for k in keys]
    pooled = (summary.get("pooled") or {}).get("auc")
    folds = summary.get("key") == "fold"
    fig = folds_figure([names[k] for k in keys], [a["value"] for a in aucs],
                       [a["ci95"] for a in aucs], pooled=pooled,
                       mean=None if pooled else summary["summary"]["auc"]["mean"],
                       title="Cross-validation: best-validation run of each fold" if folds
                       else "Repeated splits: best-validation run of each split")
    save_figure(fig, out / "figures", "folds")
    s = summary["summary"]
    rows = _split_rows(results_by_key, names)
    rows.append(("mean ± std", "", "", f"{_num(s['auc']['mean'])} ± {_num(s['auc']['std'])}",
                 f"{_num(s['bacc']['mean'])} ± {_num(s['bacc']['std'])}",
                 f"{_num(s['spec_at_sens90_roc']['mean'])} ± "
                 f"{_num(s['spec_at_sens90_roc']['std'])}",
                 f"{_num(s['exam_auc']['mean'])} ± {_num(s['exam_auc']['std'])}"
                 if "exam_auc" in s else "", ""))
    if pooled:
        rows.append(("pooled out-of-fold", "", "", _ci(pooled), "", "",
                     _ci((summary.get("pooled") or {}).get("exam_auc")), pooled.get("n", "")))
    return write_summary_report(
        out, title=f"milpf-jax {'cross-validation' if folds else 'repeated splits'} "
                   f"{out.name}", command=summary.get("command", ""),
        sections=[("Per fold" if folds else "Per split", SPLIT_HEADER, rows),
                  ("Definition", ("",), [(summary.get("definition", ""),)])],
        figures=["folds"])


def write_comparison_pictures(out_dir, comparison: dict) -> Path:
    """OUT/figures/comparison.png (the forest plot of comparison.json) and OUT/report.html."""
    from milpf_jax.evaluation.figures import comparison_figure, save_figure

    out = Path(out_dir)
    save_figure(comparison_figure(comparison), out / "figures", "comparison")

    def delta(e):
        lo, hi = e["ci95"]
        return f"{e['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    rows = []
    for c in comparison["comparisons"]:
        m, ex = c["metrics"], (c.get("exam") or {}).get("metrics") or {}
        rows.append((c["run"], c["test_bags"], _num(m["auc"]["a"]), delta(m["auc"]),
                     f"{m['auc']['p_value']:.3g} ({m['auc'].get('p_holm', float('nan')):.3g})",
                     delta(m["bacc"]), delta(m["spec_at_sens90_valthr"]),
                     delta(ex["auc"]) if "auc" in ex else ""))
    header = ("run", "test bags", "AUC", "Δ AUC [95% CI]", "p (Holm)", "Δ bACC [95% CI]",
              "Δ Spec@Sens0.9, val thr", "Δ exam AUC [95% CI]")
    return write_summary_report(
        out, title=f"milpf-jax comparison against {comparison['reference']}",
        command=comparison.get("command", ""),
        sections=[(f"Each run − {comparison['reference']} (reference)", header, rows),
                  ("Method", ("",), [(f"{comparison['method']}; {comparison['n_boot']} "
                                      "resamples",)]),
                  ("Runs", ("",), [(r,) for r in comparison["runs"]])],
        figures=["comparison"])
