"""Write tests/golden/small_phantom_sweep.json: the small phantom sweep's per-run validation and
test AUCs, which tests/test_main_job.py asserts to 1e-6 wherever the store's embeddings and the
XLA CPU target are those recorded here.

    MILPF_CACHE=$(mktemp -d) python tests/golden/make_golden.py

The sweep is the default-tier main-job test's (tests/test_main_job.py): a 24-woman phantom,
EfficientNet-Lite0 in float32, 4 seeds x 20 epochs, a float32 first layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = "phantom:n_patients=24,rows=256,cols=208,pixel_spacing_mm=0.8"
ARGS = ["--cohort", SPEC, "--seeds", "4", "--epochs", "20", "--bootstrap", "50", "--quiet",
        "--precision", "float32", "--first-layer-dtype", "float32"]


def store_digest(path) -> str:
    """SHA-256 of the store's embeddings (float16 bytes of `global` and `tiles`) and masks."""
    import numpy as np
    import zarr

    g = zarr.open_group(str(path), mode="r")
    h = hashlib.sha256()
    for name in ("global", "tiles", "global_mask", "tiles_mask"):
        h.update(name.encode())
        h.update(np.ascontiguousarray(g[name][...]).tobytes())
    return h.hexdigest()


def cpu_target() -> dict:
    """What decides XLA:CPU's and PyTorch's float32 kernels here: the ISA extensions present."""
    import importlib.metadata

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return dict(isa=isa, jaxlib=importlib.metadata.version("jaxlib"),
                torch=importlib.metadata.version("torch"))


def per_run(results: dict) -> list[dict]:
    return [dict(seed=r["seed"], lr=r["lr"], weight_decay=r["weight_decay"],
                 best_epoch=r["best_epoch"], val_auc=r["val"]["auc"], test_auc=r["test"]["auc"])
            for r in results["runs"]]


def main() -> int:
    sys.path.insert(0, str(HERE.parents[1] / "experiments"))
    import sweep

    out = Path(tempfile.mkdtemp(prefix="golden-"))
    assert sweep.main(ARGS + ["--out", str(out / "run")]) == 0
    results = json.loads((out / "run" / "results.json").read_text())
    golden = dict(
        description=__doc__.split("\n\n")[0],
        args=ARGS, store_digest=store_digest(results["store"]), cpu_target=cpu_target(),
        runs=per_run(results), best_run=results["best"]["run"],
    )
    (HERE / "small_phantom_sweep.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(json.dumps(golden["runs"], indent=1))
    return 0


if __name__ == "__main__":
    if not os.environ.get("MILPF_CACHE"):
        sys.exit("set MILPF_CACHE to an empty folder first")
    sys.exit(main())
