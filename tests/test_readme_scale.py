"""The README's "On a SLURM cluster" and "Stores on object storage" sections, run.

Every command of the two sections runs here as written, on a cohort put where the commands look
for it (`data/embed.csv`: 70 bags, one more chunk than the 64 bags of the first) and with the
coupled stand-in encoder registered under the README's encoder name (helpers.readme_python), so
they run offline in seconds. Only what cannot run here is changed, each case said where it is:
SLURM itself (its variables are set for two array tasks; `--submit slurm` runs as `--submit
local`, submitit's same code path), the S3 endpoint (moto's server on 127.0.0.1 stands for
`AWS_ENDPOINT_URL`), the sweeps get quick training flags appended, and the extractions run in
this process read their images in it (`--workers 0`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import readme_python, s3
from helpers.images import textured_breast, write_png
from helpers.repo import REPO, load_script
from helpers.standin import assert_same_store, read_arrays
from milpf_jax.extraction import submit
from milpf_jax.extraction.config import ExtractConfig
from milpf_jax.extraction.extract import extract
from milpf_jax.paths import stores_dir

N_PATIENTS = 35  # 70 bags: chunk 0 (64 bags) and chunk 1 (6)
QUICK = ["--seeds", "2", "--epochs", "8", "--patience", "4", "--bootstrap", "10"]


def subsection(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"### {title}\n")
    ends = [i for i in (text.find("\n## ", start), text.find("\n### ", start + 1)) if i > 0]
    return text[start:min(ends)]


def blocks(section: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def commands(section: str) -> list[list[str]]:
    return [shlex.split(line.split("  #")[0]) for block in blocks(section)
            for line in block.splitlines() if line.startswith("python experiments/")]


SLURM = subsection("On a SLURM cluster")
OBJECT = subsection("Stores on object storage")


def workspace(tmp_path):
    """A folder like a user's: data/embed.csv (PNG views) and the repository's experiments/."""
    cwd = tmp_path / "work"
    (cwd / "data" / "images").mkdir(parents=True)
    rows = [["path", "patient_id", "exam_id", "laterality", "view", "birads"]]
    for p in range(N_PATIENTS):
        for side, label in (("L", "1"), ("R", "4")):
            right = side == "R"
            img = textured_breast(48 + 8 * (p % 3), 40, right=right, seed=2 * p + right)
            name = write_png(cwd / "data" / "images" / f"P{p}_{side}.png", img)
            rows.append([f"images/{name}", f"P{p}", "E1", side, "CC", label])
    with open(cwd / "data" / "embed.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (cwd / "experiments").symlink_to(REPO / "experiments")
    return cwd


@pytest.fixture
def readme_env(tmp_path, monkeypatch):
    """The workspace as the working folder, a private cache, the stand-in as `medsiglip`."""
    cwd = workspace(tmp_path)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MILPF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    readme_python.install(monkeypatch.setitem, monkeypatch.setattr)
    return cwd


def reference_store(cwd, out):
    """One worker, in this process, with the commands' settings (the defaults)."""
    extract(str(cwd / "data" / "embed.csv"), ExtractConfig(encoder="medsiglip", workers=0), out,
            progress=False)
    return read_arrays(out)


def test_the_sections_give_the_commands_they_describe():
    [script] = [b for b in blocks(SLURM) if b.startswith("#!/bin/bash")]
    assert "#SBATCH --array=0-15" in script and "#SBATCH --requeue" in script
    assert [c[1] for c in commands(SLURM)] == ["experiments/extract.py"] * 2
    assert "--submit" in commands(SLURM)[1] and "slurm" in commands(SLURM)[1]
    assert [c[1] for c in commands(OBJECT)] == ["experiments/extract.py"] * 2 + \
        ["experiments/sweep.py"] * 2
    assert any(line.startswith("export AWS_ENDPOINT_URL=") for line in blocks(OBJECT)[0]
               .splitlines())


def test_the_sbatch_script_runs_as_two_array_tasks_at_once(readme_env, tmp_path):
    [script] = [b for b in blocks(SLURM) if b.startswith("#!/bin/bash")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python"  # `python` of the script: the stand-in, then the script
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m helpers.readme_python "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    logs = [tmp_path / f"task{i}.log" for i in (0, 1)]
    tasks = []
    for i in (1, 0):  # task 1 first: it waits for task 0's plan
        array = dict(SLURM_JOB_ID=str(100 + i), SLURM_ARRAY_JOB_ID="100",
                     SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_TASK_MIN="0",
                     SLURM_ARRAY_TASK_COUNT="2", SLURM_NTASKS="1", SLURM_PROCID="0")
        with open(logs[i], "w") as log:
            tasks.append(subprocess.Popen(["bash", "-c", script], cwd=readme_env,
                                          env={**env, **array}, stdout=log,
                                          stderr=subprocess.STDOUT))
    for task in tasks:
        task.wait(timeout=120)
    printed = [log.read_text() for log in logs]
    assert [t.returncode for t in tasks] == [0, 0], printed
    assert "encoded   64 bags" in printed[0] and "encoded   6 bags" in printed[1]
    out = readme_env / "stores" / "embed-medsiglip.zarr"
    reference = reference_store(readme_env, tmp_path / "one.zarr")
    assert_same_store(reference, read_arrays(out))


def test_the_submit_command_runs_with_the_local_executor(readme_env, tmp_path, monkeypatch,
                                                          capsys):
    [command] = [c for c in commands(SLURM) if "--submit" in c]
    argv = ["local" if w == "slurm" else w for w in command[2:]]  # no cluster here
    monkeypatch.setattr(submit, "ExtractShard", readme_python.ReadmeShard)
    assert load_script("extract").main(argv) == 0
    printed = capsys.readouterr().out
    assert "bags      70: 70 done, 0 failed, 0 pending" in printed
    assert "4 shard(s) run, 4 job(s) in all" in printed
    out = readme_env / "stores" / "embed-medsiglip.zarr"
    assert_same_store(reference_store(readme_env, tmp_path / "one.zarr"), read_arrays(out))


def test_the_object_storage_commands_run_against_a_local_s3(readme_env, tmp_path, monkeypatch,
                                                             capsys):
    reference = reference_store(readme_env, tmp_path / "one.zarr")
    with s3.s3_server() as endpoint:
        for key, value in s3.s3_env(endpoint).items():  # instead of the README's export
            monkeypatch.setenv(key, value)
        s3.make_bucket("my-bucket")
        cli = {name: load_script(name) for name in ("extract", "sweep")}
        runs = []
        for k, command in enumerate(commands(OBJECT)):
            script = command[1].removeprefix("experiments/").removesuffix(".py")
            argv = command[2:]
            if script == "extract":  # readers in this process: no fork beside the S3 threads
                argv = [*argv, "--workers", "0"]
            else:
                runs.append(tmp_path / f"run{k}")
                argv = [*argv, *QUICK, "--out", str(runs[-1]), "--quiet"]
            assert cli[script].main(argv) == 0, command
        url = commands(OBJECT)[0][commands(OBJECT)[0].index("--out") + 1]
        assert_same_store(reference, read_arrays(url))
        capsys.readouterr()
    # The first sweep trained on the local copy (made once), the --no-cache one on the URL;
    # both saw the same embeddings, so they agree on every number.
    [copy] = (stores_dir() / "remote").iterdir()
    assert copy.name.startswith("embed-medsiglip-")
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    stores = [r["store"] if "store" in r else r["data"]["store"] for r in results]
    assert stores == [str(copy), url]
    aucs = [r["best"]["test"]["auc"]["value"] for r in results]
    assert aucs[0] == aucs[1] and 0 <= aucs[0] <= 1
