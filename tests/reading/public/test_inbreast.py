"""milpf_jax.reading.public.inbreast: INbreast.csv, its DICOM names and XML ROIs as published."""

from __future__ import annotations

from pathlib import Path

import pytest

from milpf_jax.reading.public import inbreast
from milpf_jax.reading.public.common import DatasetOptions

HEADER = "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"
H1, H2 = "6c613a14b80a8591", "0f4d4a1d5d2d3a77"
# Patient H1, one exam: right CC/MLO (4b and 2 -> breast 4B), left CC (1).
# Patient H2: a view that disagrees with the file name, an unknown Bi-Rads value, a missing file.
ROWS = [
    ("removed;removed;R;CC;201001;22678622;4;4b", f"22678622_{H1}_MG_R_CC_ANON.dcm"),
    ("removed;removed;R;MLO;201001;22678646;4;2", f"22678646_{H1}_MG_R_ML_ANON.dcm"),
    ("removed;removed;L;CC;201001;22678694;3;1", f"22678694_{H1}_MG_L_CC_ANON.dcm"),
    ("removed;removed;L;CC;200902;50993841;2;3", f"50993841_{H2}_MG_L_ML_ANON.dcm"),
    ("removed;removed;R;CC;200902;50993869;2;7", f"50993869_{H2}_MG_R_CC_ANON.dcm"),
    ("removed;removed;R;MLO;200902;50993895;2;2", None),
]
# One mass ROI in the published Apple-plist layout (keys as OsiriX writes them).
XML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Images</key>
	<array>
		<dict>
			<key>ImageHeight</key>
			<integer>4084</integer>
			<key>ImageIndex</key>
			<integer>0</integer>
			<key>ImageWidth</key>
			<integer>3328</integer>
			<key>NumberOfROIs</key>
			<integer>1</integer>
			<key>ROIs</key>
			<array>
				<dict>
					<key>Area</key>
					<real>0.5</real>
					<key>Center</key>
					<string>(1200.000000, 1650.000000)</string>
					<key>IndexInImage</key>
					<integer>0</integer>
					<key>Name</key>
					<string>Mass</string>
					<key>NumberOfPoints</key>
					<integer>3</integer>
					<key>Point_mm</key>
					<array>
						<string>(80.4, 110.2, 0.0)</string>
					</array>
					<key>Point_px</key>
					<array>
						<string>(1130.500000, 1588.250000)</string>
						<string>(1270.250000, 1601.000000)</string>
						<string>(1199.000000, 1712.750000)</string>
					</array>
					<key>Type</key>
					<integer>15</integer>
				</dict>
			</array>
		</dict>
	</array>
</dict>
</plist>
"""


def _write(root: Path, header: str = HEADER, xml: bool = True) -> None:
    (root / "INbreast.csv").write_text("\n".join([header, *(r for r, _ in ROWS)]) + "\n")
    (root / "AllDICOMs").mkdir()
    for _, name in ROWS:
        if name:
            (root / "AllDICOMs" / name).write_bytes(b"")
    if xml:
        (root / "AllXML").mkdir()
        (root / "AllXML" / "22678622.xml").write_text(XML)


@pytest.fixture
def tables(tmp_path):
    _write(tmp_path)
    return inbreast.read_tables(tmp_path, DatasetOptions())


def test_module_constants():
    assert (inbreast.NAME, inbreast.TASKS, inbreast.HAS_OFFICIAL_SPLIT) == (
        "inbreast", ("birads",), False)
    assert "INbreast" in inbreast.DOC


def test_images_ids_views_and_breast_level_birads(tables, tmp_path):
    images = {Path(i["path"]).name.split("_")[0]: i for i in tables.images}
    assert sorted(images) == ["22678622", "22678646", "22678694"]
    cc = images["22678622"]
    assert cc["path"] == str(tmp_path / "AllDICOMs" / f"22678622_{H1}_MG_R_CC_ANON.dcm")
    assert (cc["patient_id"], cc["exam_id"], cc["laterality"], cc["view"], cc["view_code"]) == (
        H1, f"{H1}_201001", "R", "CC", "CC")
    mlo = images["22678646"]
    assert (mlo["view"], mlo["view_code"], mlo["laterality"]) == ("MLO", "ML", "R")
    # 4b on the CC image: the right breast's images both carry 4B; the left breast keeps 1.
    assert [images[i]["birads"] for i in ("22678622", "22678646", "22678694")] == ["4B", "4B",
                                                                                   "1"]
    assert [images[i]["density"] for i in ("22678622", "22678646", "22678694")] == ["D", "D", "C"]
    assert {i["official_split"] for i in tables.images} == {""}
    assert all("age" not in i for i in tables.images)


def test_exclusions_with_reasons(tables, tmp_path):
    reasons = {Path(e["path"]).name.split("_")[0]: e for e in tables.excluded}
    assert {k: e["reason"] for k, e in reasons.items()} == {
        "50993841": "laterality/view disagree with file name",
        "50993869": "unknown label value",
        "50993895": "file missing",
    }
    assert reasons["50993841"]["patient_id"] == H2
    assert reasons["50993841"]["exam_id"] == f"{H2}_200902"
    assert reasons["50993895"]["path"] == str(tmp_path / "AllDICOMs" / "50993895_*.dcm")


def test_mass_roi_box_from_the_xml(tables, tmp_path):
    assert tables.lesions == [{
        "path": str(tmp_path / "AllDICOMs" / f"22678622_{H1}_MG_R_CC_ANON.dcm"),
        "y0": 1588, "x0": 1130, "y1": 1713, "x1": 1271, "kind": "Mass",
    }]


def test_without_xml_folder_no_boxes(tmp_path):
    _write(tmp_path, xml=False)
    tables = inbreast.read_tables(tmp_path, DatasetOptions())
    assert tables.lesions == [] and len(tables.images) == 3


def test_missing_column_names_file_and_column(tmp_path):
    _write(tmp_path, header=HEADER.replace("Bi-Rads", "BIRADS"))
    with pytest.raises(ValueError, match=r"INbreast\.csv.*Bi-Rads"):
        inbreast.read_tables(tmp_path, DatasetOptions())
