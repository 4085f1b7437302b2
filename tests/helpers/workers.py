"""Extraction workers as subprocesses, with the coupled stand-in, optionally SIGKILLed.

`start_worker(opts, log)` runs `extract(opts["cohort"], ..., opts["out"], shard=opts["shard"])`
in a fresh Python (tests/ and the repository on its PYTHONPATH), writing to `log` (a file, not a
pipe: a killed worker's reader processes must not hold a pipe open).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.repo import REPO

CHILD = "import json, sys; from helpers.workers import worker_main; " \
        "worker_main(json.loads(sys.argv[1]))"


def worker_main(opts: dict) -> None:
    from helpers.standin import Patch, extract_cfg, install_standin
    from milpf_jax.extraction.extract import extract

    install_standin(Patch.setitem, setattr, coupling=0.5, kill_at_call=opts.get("kill_at_call"))
    extract(opts["cohort"], extract_cfg(chunk_bags=opts.get("chunk_bags", 2)), opts["out"],
            shard=tuple(opts.get("shard", (0, 1))), progress=False, plan_wait_s=60)


def start_worker(opts: dict, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(opts)], env=env,
                                stdout=f, stderr=subprocess.STDOUT)
