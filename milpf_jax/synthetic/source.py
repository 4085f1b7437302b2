"""The phantom as a cohort source: `phantom` or `phantom:FIELD=VALUE,...`.

Declared in pyproject.toml under the entry points `milpf_jax.cohort_sources`, so
`read_cohort("phantom")` finds it without the reading layer importing the phantom. The cohort is
written once to `<cache>/cohorts/phantom-<hash of its config>/` and reused after; its lesion
boxes (`manifest.lesions.csv`) come with it as `Cohort.lesions`. "phantom:n_patients=8,rows=256"
overrides PhantomConfig fields (a quick cohort for tests and trials).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from milpf_jax.paths import cohorts_dir
from milpf_jax.reading.cohort import Cohort, Lesion
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.sources import CohortSource
from milpf_jax.synthetic.phantom import MALIGNANT_KINDS, PHANTOM_VERSION, PhantomConfig
from milpf_jax.synthetic.phantom_files import make_phantom_cohort, read_lesions


def phantom_config(overrides: str) -> PhantomConfig:
    """PhantomConfig with "field=value,..." overrides, each cast to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(PhantomConfig)}
    values = {}
    for item in filter(None, (x.strip() for x in overrides.split(","))):
        name, _, value = item.partition("=")
        if name not in fields or not value:
            raise ValueError(
                f"phantom spec item {item!r}: expected FIELD=VALUE with FIELD one "
                f"of {sorted(fields)}"
            )
        default = fields[name].default
        if isinstance(default, tuple):
            raise ValueError(f"phantom spec: {name} cannot be set from a spec string")
        values[name] = type(default)(value)
    return PhantomConfig(**values)


def phantom_manifest(overrides: str = "", *, cache_dir=None, progress: bool = False) -> Path:
    """The manifest of the phantom cohort a spec names, written to the cache if missing."""
    cfg = phantom_config(overrides)
    text = json.dumps([PHANTOM_VERSION, dataclasses.asdict(cfg)], sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:10]
    return make_phantom_cohort(cohorts_dir(cache_dir) / f"phantom-{key}", cfg, progress=progress)


def read_phantom(overrides: str = "", *, cache_dir=None, progress: bool = True) -> Cohort:
    """The phantom cohort with its lesion boxes."""
    manifest = phantom_manifest(overrides, cache_dir=cache_dir, progress=progress)
    lesions = tuple(
        Lesion(path=row["path"], box=(row["y0"], row["x0"], row["y1"], row["x1"]),
               kind=row["kind"], severity="M" if row["kind"] in MALIGNANT_KINDS else "B")
        for row in read_lesions(manifest.parent / "manifest.lesions.csv"))
    spec = f"phantom:{overrides}" if overrides else "phantom"
    return dataclasses.replace(read_manifest(manifest), name="phantom", lesions=lesions,
                               spec=spec)


SOURCE = CohortSource(
    name="phantom", bare=True, read=read_phantom,
    usage="'phantom' or 'phantom:FIELD=VALUE,...' (the synthetic screening cohort)",
    manifest=lambda arg, *, cache_dir=None: phantom_manifest(arg, cache_dir=cache_dir))
