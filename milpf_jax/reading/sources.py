"""Cohort sources: one registry that turns a `--cohort` spec into a Cohort.

A spec is a manifest CSV's path (`data/manifest.csv`), or `NAME:ARG` for a registered source
(`mias:DIR`), or a source's bare NAME where it allows one (`phantom`). The cohort a source
reads records the spec that reads it again (`Cohort.spec`): stores and results keep it, so a
later step (explain, subgroups, predict) finds the cohort without being told.

Built in: manifest CSVs, `mias:DIR`, and the public cohorts `vindr:DIR`, `rsna:DIR`, `embed:DIR`,
`cbis:DIR`, `inbreast:DIR` (`milpf_jax.reading.public`: the seeded manifest, built into the
cache from the dataset's own tables, names the same cohort as the manifest built from them).
Other packages (the phantom in `milpf_jax.synthetic`, or your own adapter) add theirs through
the entry-point group `milpf_jax.cohort_sources`, each naming a `CohortSource`, or by calling
`register_source` at import; reading never imports them.

    cohort = read_cohort("mias:../shared/data/mias-dev")
    manifest_of("phantom")             # the CSV behind a spec, for columns such as density
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from milpf_jax.reading.cohort import Cohort
from milpf_jax.reading.manifest import read_manifest
from milpf_jax.reading.mias import mias

ENTRY_POINT_GROUP = "milpf_jax.cohort_sources"


@dataclass(frozen=True)
class CohortSource:
    """One kind of spec, `name:ARG` (or `name` alone when `bare`).

    read(arg, cache_dir=..., progress=...) -> Cohort; manifest(arg, cache_dir=...) -> the CSV
    behind it, or None when the cohort is read without one; usage: how the spec is written,
    for messages ("mias:DIR (a mini-MIAS folder)").
    """

    name: str
    read: Callable[..., Cohort]
    usage: str
    manifest: Callable[..., Path | None] | None = None
    bare: bool = False


SOURCES: dict[str, CohortSource] = {}
_plugins_loaded = False


def register_source(source: CohortSource) -> CohortSource:
    """Add `source` under its name; a name already taken by another source raises ValueError."""
    held = SOURCES.get(source.name)
    if held is not None and held != source:
        raise ValueError(f"cohort source {source.name!r} is already registered ({held.usage})")
    SOURCES[source.name] = source
    return source


def _load_plugins() -> None:
    """Register the sources that installed packages declare as entry points (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        register_source(point.load())


def _split(spec) -> tuple[CohortSource | None, str]:
    text = os.fspath(spec).strip()
    if text.lower().endswith(".csv"):
        return None, text
    _load_plugins()
    name, colon, arg = text.partition(":")
    source = SOURCES.get(name)
    if source is None or (not colon and not source.bare) or (colon and not arg and not
                                                                source.bare):
        known = ["a manifest path ending in .csv"] + [s.usage for s in SOURCES.values()]
        raise ValueError(f"unknown cohort spec {text!r}; expected {', or '.join(known)}")
    return source, arg.strip()


def read_cohort(spec, *, cache_dir=None, progress: bool = True) -> Cohort:
    """The cohort a spec names; its `spec` field is set to the spec that reads it again."""
    source, arg = _split(spec)
    if source is None:
        return read_manifest(arg)
    cohort = source.read(arg, cache_dir=cache_dir, progress=progress)
    if not cohort.spec:
        import dataclasses

        cohort = dataclasses.replace(cohort, spec=f"{source.name}:{arg}" if arg else source.name)
    return cohort


def manifest_of(spec, *, cache_dir=None) -> Path | None:
    """The manifest CSV behind a cohort spec (a manifest's own path, the phantom's in the
    cache, ...); None for a cohort read without one (mias:DIR)."""
    source, arg = _split(spec)
    if source is None:
        return Path(arg)
    return None if source.manifest is None else source.manifest(arg, cache_dir=cache_dir)


def _dicom_folder(arg, *, cache_dir=None, progress=True) -> Cohort:
    from milpf_jax.reading.dicom_folder import read_dicom_folder

    return read_dicom_folder(arg)[0]


register_source(CohortSource(
    name="dicoms", usage="'dicoms:DIR' (a folder of MG DICOMs, unlabelled: new exams to score)",
    read=_dicom_folder))
register_source(CohortSource(
    name="mias", usage="'mias:DIR' (a mini-MIAS folder)",
    read=lambda arg, *, cache_dir=None, progress=True: mias(arg)))


def _dataset_source(name: str) -> CohortSource:
    from milpf_jax.reading import public

    def read(arg, *, cache_dir=None, progress=True):
        import dataclasses

        cohort = public.read_dataset(name, arg, cache_dir=cache_dir)
        return dataclasses.replace(cohort, spec=f"{name}:{arg}")

    return CohortSource(
        name=name, usage=f"'{name}:DIR' (the {name} dataset's folder, as distributed)", read=read,
        manifest=lambda arg, *, cache_dir=None: public.cached_manifest(name, arg,
                                                                        cache_dir=cache_dir))


for _name in ("vindr", "rsna", "embed", "cbis", "inbreast"):
    register_source(_dataset_source(_name))
