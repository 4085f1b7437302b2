"""The README's commands for the public cohorts parse against their CLIs, checks included."""

from __future__ import annotations

import re
import shlex

import pytest
from test_cli import build_parser

from helpers.repo import REPO, load_script
from milpf_jax.cli import config_from_args


def _section_commands(title: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)
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
