"""The README's commands for the public cohorts parse against their CLIs, checks included."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from test_cli import build_parser

from helpers.repo import REPO, load_script
from milpf_jax.cli import config_from_args


def _section_commands(title: str) -> list[str]:
    """The `python experiments/...` lines of the README section `title`: to the next heading of
    its level or above (a `#` line inside a code block is a comment, not a heading)."""
    lines = (REPO / "README.md").read_text().splitlines()
    fenced, level, section = False, None, []
    for line in lines:
        fenced ^= line.startswith("```")
        depth = len(line) - len(line.lstrip("#")) if line.startswith("#") and not fenced else 0
        if level is None:
            level = depth if depth and line[depth:].strip() == title else None
        elif depth and depth <= level:
            break
        else:
            section.append(line)
    blocks = re.findall(r"```bash\n(.*?)```", "\n".join(section) + "\n", flags=re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
            if line.startswith("python experiments/")]


PUBLIC = _section_commands("Public cohorts")


def test_the_section_gives_each_dataset_its_command():
    datasets = {shlex.split(c)[shlex.split(c).index("--dataset") + 1] for c in PUBLIC
                if "--dataset" in c}
    assert datasets == {"vindr", "rsna", "embed", "cbis", "inbreast"}
    tasks = {shlex.split(c)[shlex.split(c).index("--task") + 1] for c in PUBLIC if "--task" in c}
    assert {"birads", "mass", "calcification", "cancer", "pathology", "malignant"} <= tasks


@pytest.mark.parametrize("command", PUBLIC)
def test_a_public_cohort_command_parses(command):
    words = shlex.split(command)
    script = words[1].removeprefix("experiments/").removesuffix(".py")
    parser = build_parser(script)
    args = parser.parse_args(words[2:])  # argparse exits 2 on an unknown flag or a bad value
    if script == "manifest":
        # the checks across flags (--dataset with --root, not with --dicom-dir)
        config_from_args(load_script("manifest").ManifestCommand, args, parser)


BRING_YOUR_OWN = _section_commands("Bring your own embeddings")


def test_bring_your_own_embeddings_commands_run(tmp_path, monkeypatch):
    """The section's commands, as written, on files in each format: import, then train."""
    from helpers.features import milpf_bags, write_milpf_h5, write_trident_h5s
    from milpf_jax.data.imported import imported_encoder

    assert [shlex.split(c)[1] for c in BRING_YOUR_OWN] == [
        "experiments/import_features.py", "experiments/sweep.py"] * 2
    items = milpf_bags(n_bags=200)
    write_milpf_h5(tmp_path / "embeddings.hdf5", tmp_path / "bags.csv", items, legacy={3})
    write_trident_h5s(tmp_path, items)  # manifest.csv, images/, features/
    monkeypatch.chdir(tmp_path)
    for command in BRING_YOUR_OWN:
        words = shlex.split(command)
        script = words[1].removeprefix("experiments/").removesuffix(".py")
        assert load_script(script).main([*words[2:], "--quiet"] if script == "sweep"
                                        else words[2:]) == 0, command
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["embeddings-imported-medsiglip",
                                                        "manifest-imported-uni2"]
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    by_encoder = {imported_encoder(r["store_attrs"]): r for r in results}
    assert sorted(by_encoder) == ["medsiglip", "uni2"]
    assert by_encoder["uni2"]["head"]["global_pool"] == "none"
    assert by_encoder["medsiglip"]["data"]["bags"] == {"train": 140, "val": 20, "test": 40}
    for r in results:  # the planted signal is found
        assert r["best"]["test"]["auc"]["value"] > 0.8, r["best"]["test"]["auc"]
