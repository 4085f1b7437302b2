"""Privacy: stores, failure lists and run folders hold only the ids the manifest
gives, never DICOM header fields; `experiments/manifest.py --pseudonymize KEYFILE` replaces
patient ids, exam ids and paths with keyed hashes and keeps the key outside the store.

The cohort: 8 women, one exam each, one CC view per breast, written as MG DICOMs whose
PatientName, PatientID, PatientBirthDate, AccessionNumber and UIDs are set, in folders named
after the patient and the accession (as archives often are). One file is cut short after the
manifest is made and one is deleted, so the failures CSV has rows, one with the path in its
error message. Every file under the store, the run folder of `run_sweep` and the failures CSV
is scanned as bytes, and every zarr array and attribute is read back through zarr (the store
compresses its string arrays), for each of those values.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from helpers.dicoms import write_dicom
from helpers.images import textured_breast as breast
from helpers.repo import load_script
from helpers.standin import extract_cfg, install_standin
from milpf_jax.data.store import DONE, FAILED, Store, StoreMismatch
from milpf_jax.extraction.encode import image_locations
from milpf_jax.extraction.extract import extract
from milpf_jax.extraction.failures import failure_files, read_failures
from milpf_jax.reading.dicom_manifest import manifest_from_dicoms
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.pseudonym import pseudonym, read_or_create_key
from milpf_jax.sweep import SweepConfig, run_sweep

N_WOMEN = 8
HASHED_BAG = re.compile(r"P-[0-9a-f]{16}/E-[0-9a-f]{16}/[LR]")


def person(i: int) -> dict:
    return {
        "PatientID": f"MRN-44{i:02d}-7731",
        "PatientName": f"Quaxworth{i}^Zebulonia^Ann",
        "PatientBirthDate": f"195803{11 + i:02d}",
        "AccessionNumber": f"ACC-9031{i:02d}",
        "StudyInstanceUID": generate_uid(),
    }


def write_mg(path: Path, who: dict, laterality: str, seed: int) -> str:
    """A small MG DICOM of a breast, with the patient's header fields; returns its SOP UID."""
    img = breast(64, 48, right=laterality == "R", seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = np.rint(img * 4095).astype(np.uint16)
    write_dicom(path, stored, ImageLaterality=laterality, ViewPosition="CC", **who)
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def scan_bytes(files, secrets) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in a file's bytes (case-insensitive)."""
    found = []
    for f in files:
        data = Path(f).read_bytes().lower()
        found += [(str(f), s) for s in secrets if s.lower().encode() in data]
    return found


def scan_zarr(path, secrets) -> list[tuple[str, str]]:
    """(array or attribute, secret) for every secret in a decoded array or attribute."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    texts = {"attrs": json.dumps(group.attrs.asdict())}
    for name, array in group.arrays():
        values = array[...]
        texts[f"{name}.attrs"] = json.dumps(array.attrs.asdict())
        if values.dtype.kind in "OTSU":
            texts[name] = "\n".join(map(str, values.ravel()))
        else:
            texts[name] = values.tobytes().decode("latin-1")
    return [(k, s) for k, t in texts.items() for s in secrets if s.lower() in t.lower()]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """DICOMs, label sheet, and the pseudonymised manifest made by the CLI (key created)."""
    root = tmp_path_factory.mktemp("privacy")
    dicoms, private = root / "archive", root / "private"
    people = [person(i) for i in range(N_WOMEN)]
    files, sops = {}, []
    for i, who in enumerate(people):
        for j, lat in enumerate("LR"):
            surname = who["PatientName"].split("^")[0]
            path = (
                dicoms / f"{who['PatientID']}_{surname}" / who["AccessionNumber"] / f"{lat}_CC.dcm"
            )
            sops.append(write_mg(path, who, lat, seed=2 * i + j))
            files[i, lat] = path
    labels = root / "labels.csv"
    split = {
        0: "train",
        1: "train",
        2: "train",
        3: "train",
        4: "val",
        5: "val",
        6: "test",
        7: "test",
    }
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["accession_number", "laterality", "label", "split"])
        for i, who in enumerate(people):
            w.writerows(
                [
                    [who["AccessionNumber"], "L", "1", split[i]],
                    [who["AccessionNumber"], "R", "0", split[i]],
                ]
            )
    key_file, manifest = private / "cohort.key", private / "manifest.csv"
    argv = [
        "--dicom-dir",
        str(dicoms),
        "--labels",
        str(labels),
        "--out",
        str(manifest),
        "--pseudonymize",
        str(key_file),
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        load_script("manifest").main(argv)
    return {
        "root": root,
        "dicoms": dicoms,
        "private": private,
        "people": people,
        "files": files,
        "sops": sops,
        "labels": labels,
        "key_file": key_file,
        "manifest": manifest,
        "argv": argv,
        "printed": printed.getvalue(),
    }


def secrets_of(c: dict) -> list[str]:
    out = [str(c["dicoms"]), c["dicoms"].name, "L_CC.dcm", "R_CC.dcm", *c["sops"]]
    for who in c["people"]:
        out += [
            who["PatientID"],
            who["PatientName"],
            who["PatientBirthDate"],
            who["AccessionNumber"],
            who["StudyInstanceUID"],
        ]
        out += who["PatientName"].split("^")[:2]
    return out


def test_pseudonymize_cli_creates_a_private_key_and_a_manifest_without_header_values(
    cohort, capsys
):
    c = cohort
    cli, out, argv = load_script("manifest"), c["manifest"], c["argv"]
    assert "created a new pseudonymisation key" in c["printed"]
    assert stat.S_IMODE(c["key_file"].stat().st_mode) == 0o600
    key_text = c["key_file"].read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key_text)
    key = bytes.fromhex(key_text)
    first = out.read_bytes()
    cli.main(argv)  # the same key again: the same manifest, byte for byte
    assert "read the pseudonymisation key" in capsys.readouterr().out
    assert out.read_bytes() == first
    assert read_or_create_key(c["key_file"]) == (key, False)

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "path",
        "patient_id",
        "exam_id",
        "laterality",
        "view",
        "label",
        "split",
        "view_ref",
    ]
    assert len(rows) == 2 * N_WOMEN
    ids = {pseudonym(key, "patient", w["PatientID"]) for w in c["people"]}
    exams = {pseudonym(key, "exam", w["AccessionNumber"]) for w in c["people"]}
    assert {r["patient_id"] for r in rows} == ids and {r["exam_id"] for r in rows} == exams
    for r in rows:
        rel = Path(os.path.relpath(out.parent / r["path"], out.parent)).as_posix()
        assert rel.startswith("../archive/")  # the images lie outside the manifest's folder
        assert r["view_ref"] == pseudonym(key, "image", rel)  # of the path from the manifest
        assert re.fullmatch(r"I-[0-9a-f]{16}", r["view_ref"])
        assert (out.parent / r["path"]).is_file()  # the path stays, for the extractor
    # The manifest keeps paths (it stays private, beside the key) but no other header value.
    text = first.decode()
    for who in c["people"]:
        assert who["PatientBirthDate"] not in text and who["StudyInstanceUID"] not in text
    assert not any(sop in text for sop in c["sops"])
    assert all(
        w["AccessionNumber"] not in ",".join(r[k] for r in rows for k in r if k != "path")
        for w in c["people"]
    )
    # The key file is never the manifest or the label sheet: a usage error, nothing written.
    with pytest.raises(SystemExit) as usage:
        cli.main(argv[:-1] + [str(out)])
    assert usage.value.code == 2
    assert "--pseudonymize: the key file must not be the manifest" in capsys.readouterr().err


def test_store_failures_and_run_folder_hold_no_header_value(cohort, tmp_path, monkeypatch):
    c = cohort
    install_standin(monkeypatch.setitem, monkeypatch.setattr)
    key = bytes.fromhex(c["key_file"].read_text().strip())
    manifest = c["manifest"]
    plain_manifest = manifest_from_dicoms(c["dicoms"], c["labels"], c["root"] / "plain.csv")
    cut, gone = c["files"][0, "L"], c["files"][1, "R"]
    originals = {cut: cut.read_bytes(), gone: gone.read_bytes()}
    cut.write_bytes(originals[cut][:-2000])  # the header stays readable, the pixels do not
    cohort_ = read_manifest(manifest)
    assert all(HASHED_BAG.fullmatch(b.bag_id) for b in cohort_.bags)
    assert all(im.ref.startswith("I-") for b in cohort_.bags for im in b.images)
    gone.unlink()  # after the manifest was read: planning meets a missing file
    try:
        out = tmp_path / "stores" / "cohort.zarr"
        # Two shards one after the other: the second resumes a planned store, finding the
        # images from the refs the store records.
        first = extract(cohort_, extract_cfg(chunk_bags=4), out, shard=(0, 2), progress=False)
        assert first.pending == N_WOMEN
        # A file of the second shard goes missing after planning: it fails at encoding.
        planned = Store.open(out)
        # Shard 1's plan failures are recorded when shard 1 runs: until then such a bag is
        # pending with no planned view, so the pick is among bags with one.
        views = planned.array("view_path")
        assert (planned.status()[N_WOMEN:] != FAILED).all()
        late = next(b for b in range(N_WOMEN, 2 * N_WOMEN) if views[b, 0])
        late_ref = str(views[late, 0])
        late_path = Path(image_locations(cohort_)[late_ref])
        late_bytes = late_path.read_bytes()
        late_path.unlink()
        try:
            result = extract(cohort_, extract_cfg(chunk_bags=4), out, shard=(1, 2), progress=False)
        finally:
            late_path.write_bytes(late_bytes)
        assert (result.done, result.failed, result.pending) == (2 * N_WOMEN - 3, 3, 0)
        again = extract(cohort_, extract_cfg(chunk_bags=4), out, progress=False)
        assert again.encoded_bags == 0 and not again.planned
        gone.write_bytes(originals[gone])
        plain = extract(
            plain_manifest, extract_cfg(chunk_bags=4), tmp_path / "plain.zarr", progress=False
        )
        assert plain.failed == 1  # the cut file
    finally:
        for path, data in originals.items():
            path.write_bytes(data)

    # The ids are the hashed ones; views are named by ref; embeddings are those of the files.
    store, plain_store = Store.open(out), Store.open(tmp_path / "plain.zarr")
    bag_ids = list(store.array("bag_id"))
    assert all(HASHED_BAG.fullmatch(b) for b in bag_ids)
    assert set(store.array("patient_id")) == {
        pseudonym(key, "patient", w["PatientID"]) for w in c["people"]
    }
    assert all(re.fullmatch(r"I-[0-9a-f]{16}", p) for p in store.array("view_path").ravel() if p)
    plain_ids = list(plain_store.array("bag_id"))
    for i, who in enumerate(c["people"]):
        for lat in "LR":
            b = bag_ids.index(
                f"{pseudonym(key, 'patient', who['PatientID'])}/"
                f"{pseudonym(key, 'exam', who['AccessionNumber'])}/{lat}"
            )
            p = plain_ids.index(f"{who['PatientID']}/{who['AccessionNumber']}/{lat}")
            if (i, lat) == (1, "R") or b == late:
                assert store.status()[b] == FAILED and plain_store.status()[p] == DONE
                continue
            assert store.status()[b] == plain_store.status()[p]
            ours, theirs = store.read_bag(b), plain_store.read_bag(p)
            for name in ("global_emb", "tile_emb", "tile_boxes", "view_flipped", "view_shape"):
                np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)

    # Failures name the image by its ref, and their reasons carry no path.
    failures = {r["path"]: r for r in read_failures(result.failures)}
    refs = {im.path: im.ref for b in cohort_.bags for im in b.images}
    assert set(failures) == {refs[str(cut)], refs[str(gone)], late_ref}
    assert [failures[r]["stage"] for r in (refs[str(cut)], refs[str(gone)], late_ref)] == [
        "plan",
        "plan",
        "encode",
    ]
    assert late_ref in failures[late_ref]["reason"]  # the path in the message became the ref

    run = tmp_path / "run"
    sweep = SweepConfig.of(seeds=2, epochs=4, patience=4, bootstrap=20, allow_partial=True)
    run_sweep(out, sweep, run, command="sweep privacy test", progress=False)
    with open(run / "predictions.csv", newline="") as f:
        predictions = list(csv.DictReader(f))
    assert predictions and all(HASHED_BAG.fullmatch(r["bag_id"]) for r in predictions)

    secrets = secrets_of(c) + [key.hex()]
    files = [p for p in [*out.rglob("*"), *run.rglob("*")] if p.is_file()]
    files += [Path(p) for p in failure_files(out)]
    assert len(files) > 10 and any(p.name == "results.json" for p in files)
    assert scan_bytes(files, secrets) == []
    assert not any(key in p.read_bytes() for p in files)
    assert scan_zarr(out, secrets) == []
    # The key stays where it was put: nowhere under the store or the run folder.
    assert not any(p.name.endswith(".key") for p in files)


def test_manifest_view_ref_column_is_checked(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    head = "path,patient_id,exam_id,laterality,view,label,view_ref\n"
    (tmp_path / "m.csv").write_text(head + "a.png,P-1,E-1,L,CC,1,I-x\nb.png,P-1,E-1,L,MLO,1,\n")
    with pytest.raises(ValueError, match="empty 'view_ref'.*row 3"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text(head + "a.png,P-1,E-1,L,CC,1,I-x\nb.png,P-1,E-1,L,MLO,1,I-x\n")
    with pytest.raises(ValueError, match="same 'view_ref' on several images: row 2 and row 3"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text(head + "a.png,P-1,E-1,L,CC,1,I-x\nb.png,P-1,E-1,L,MLO,1,I-y\n")
    [bag] = read_manifest(tmp_path / "m.csv").bags
    assert [(im.view, im.ref) for im in bag.images] == [("CC", "I-x"), ("MLO", "I-y")]


def test_key_file_is_created_private_and_a_bad_one_refused(tmp_path):
    key, created = read_or_create_key(tmp_path / "sub" / "k")
    assert created and len(key) == 32
    assert stat.S_IMODE((tmp_path / "sub" / "k").stat().st_mode) == 0o600
    assert read_or_create_key(tmp_path / "sub" / "k") == (key, False)
    assert pseudonym(key, "patient", "X") == pseudonym(key, "patient", "X")
    assert pseudonym(key, "patient", "X")[2:] != pseudonym(key, "exam", "X")[2:]  # domains
    other, _ = read_or_create_key(tmp_path / "other")
    assert pseudonym(key, "patient", "X") != pseudonym(other, "patient", "X")
    (tmp_path / "bad").write_text("not a key\n")
    with pytest.raises(ValueError, match="not a pseudonymisation key"):
        read_or_create_key(tmp_path / "bad")
    os.chmod(tmp_path / "other", 0o644)
    read_or_create_key(tmp_path / "other")  # readable by others: a warning, not an error


def test_a_store_made_with_one_key_refuses_a_manifest_made_with_another(tmp_path, monkeypatch):
    install_standin(monkeypatch.setitem, monkeypatch.setattr)
    dicoms = tmp_path / "dicoms"
    who = person(0)
    for j, lat in enumerate("LR"):
        write_mg(dicoms / f"{lat}.dcm", who, lat, seed=j)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"accession_number,label\n{who['AccessionNumber']},1\n")
    one = manifest_from_dicoms(dicoms, labels, tmp_path / "a" / "m.csv", key=b"1" * 32)
    two = manifest_from_dicoms(dicoms, labels, tmp_path / "b" / "m.csv", key=b"2" * 32)
    assert {b.patient_id for b in one.bags}.isdisjoint({b.patient_id for b in two.bags})
    extract(one, extract_cfg(), tmp_path / "s.zarr", progress=False)
    with pytest.raises(StoreMismatch, match="cohort_id"):
        extract(two, extract_cfg(), tmp_path / "s.zarr", progress=False)
