"""Test AUC by subgroup (evaluation.subgroups, reading.manifest.bag_values, the subgroups CLI)."""

import json

import pytest
from sklearn.metrics import roc_auc_score

from helpers.repo import load_script
from helpers.runs import cohort_rows, write_run
from milpf_jax.cli import run as run_cli
from milpf_jax.evaluation.runs import read_predictions
from milpf_jax.evaluation.subgroups import format_subgroups, subgroup_aucs
from milpf_jax.reading.manifest import bag_values


def test_bag_values_reads_the_csv_only_and_marks_disagreement(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,patient_id,exam_id,Laterality,view,label,Density\n"
        "gone/1.dcm,P1,E1,l,CC,1,B\n"  # no image at hand: not needed
        "gone/2.dcm,P1,E1,L,MLO,1, B \n"
        "gone/3.dcm,P1,E1,R,CC,0,B\n"
        "gone/4.dcm,P1,E1,R,MLO,0,C\n"
        "gone/5.dcm,P2,E7,L,CC,0,\n")
    assert bag_values(manifest, "density") == {"P1/E1/L": "B", "P1/E1/R": "mixed", "P2/E7/L": ""}
    with pytest.raises(ValueError, match=r"manifest.csv: needs the columns .* 'vendor'"):
        bag_values(manifest, "vendor")


def _test_split(run):
    rows = [r for r in read_predictions(run).values() if r["split"] == "test"]
    return ({r["bag_id"]: int(r["label"]) for r in rows},
            {r["bag_id"]: float(r["p_best"]) for r in rows})


def test_within_each_value_and_against_all_negatives(tmp_path):
    rows = cohort_rows()
    run = write_run(tmp_path / "run", rows, 1.0, 0)
    y, p = _test_split(run)
    # Within: density by patient number; one test bag missing from the manifest.
    density = {b: "AB"[int(b[1:4]) % 2] for b in y if b != "P059/E1/R"}
    res = subgroup_aucs(run, density, column="density", n_boot=200)
    assert res["reading"] == "within" and res["not_in_manifest"] == 1 and res["test_bags"] == 36
    for g in res["groups"]:
        bags = [b for b in density if density[b] == g["value"]]
        labels, scores = [y[b] for b in bags], [p[b] for b in bags]
        assert (g["bags"], g["positives"]) == (len(bags), sum(labels))
        assert g["auc"] == pytest.approx(roc_auc_score(labels, scores))
        assert g["ci95"][0] <= g["auc"] <= g["ci95"][1]
    # Against all negatives: only positive bags carry a finding, negatives are empty.
    kinds = {b: ("mass" if int(b[1:4]) % 3 else "calc") if y[b] else "" for b in y}
    res = subgroup_aucs(run, kinds, column="lesion_kinds", n_boot=0)
    assert res["reading"] == "against all negatives"
    negatives = [b for b in y if not y[b]]
    for g in res["groups"]:
        pos = [b for b in y if kinds[b] == g["value"]]
        assert g["negatives"] == len(negatives) and g["positives"] == len(pos)
        assert g["auc"] == pytest.approx(
            roc_auc_score([1] * len(pos) + [0] * len(negatives), [p[b] for b in pos + negatives]))
        assert g["ci95"] is None  # n_boot=0
    # A subgroup with one class has no AUC; the table says so.
    one_class = {b: ("only-negatives" if not y[b] and b < "P045" else "rest") for b in y}
    res = subgroup_aucs(run, one_class, column="site", n_boot=0)
    [lonely] = [g for g in res["groups"] if g["value"] == "only-negatives"]
    assert lonely["auc"] is None and lonely["positives"] == 0
    assert "| only-negatives |" in format_subgroups(res) and "n/a (one class)" in \
        format_subgroups(res)
    with pytest.raises(ValueError, match="none of its 36 test bags is in the manifest"):
        subgroup_aucs(run, {"X/Y/L": "A"})


def test_cli_writes_subgroups_json(tmp_path, capsys):
    rows = cohort_rows()
    run = write_run(tmp_path / "run", rows, 1.0, 0)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w") as f:
        f.write("path,patient_id,exam_id,laterality,view,label,vendor\n")
        for bag, patient, _, label in rows:
            _, exam, lat = bag.split("/")
            f.write(f"{bag}.dcm,{patient},{exam},{lat},CC,{label},V{int(patient[1:]) % 3}\n")
    cli = load_script("subgroups")
    args = ["--run", str(run), "--manifest", str(manifest), "--bootstrap", "50"]
    assert cli.main(args + ["--by", "vendor"]) == 0
    out = json.loads((run / "subgroups.json").read_text())
    assert [g["value"] for g in out["subgroups"][0]["groups"]] == ["V0", "V1", "V2"]
    assert out["command"].startswith("python experiments/subgroups.py --run")
    assert "Test AUC by `vendor`" in capsys.readouterr().out
    from PIL import Image

    with Image.open(run / "figures" / "subgroups-vendor.png") as im:  # one row per vendor
        assert im.format == "PNG" and im.size[1] > 100
    assert run_cli(cli.main, args + ["--by", "density"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'density'" in err and "Traceback" not in err
    # A run folder that records no cohort: the manifest must be given.
    assert run_cli(cli.main, ["--run", str(run), "--by", "vendor"]) == 1
    assert "--manifest" in capsys.readouterr().err
