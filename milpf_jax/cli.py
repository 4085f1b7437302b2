"""The command lines: flags made from config trees, and errors a user can read.

    parser = argparse.ArgumentParser()
    add_config_flags(parser, SweepConfig)              # --seeds, --lr, --global-pool, ...
    cfg = config_from_args(SweepConfig, parser.parse_args(), parser)

One flag per leaf field of a config tree (`milpf_jax.config`), nested configs flattened: the
flag is the field's name (or its `flag`), help and default are the field's, a `Literal` type
gives the choices. Tuple fields take a comma list (`--lr 1e-3,2e-3`), or, with a fixed length,
that many values (`--mass-diameter-mm 5 25`); booleans are `--x/--no-x`, or a switch; `X | None`
fields accept a value or are left out. A value or combination a config refuses ends as a usage
error naming the flag (exit status 2) before anything is read or computed.

Every script's `__main__` is `sys.exit(run(main))`: an error a user can cause (a missing file or
folder, a store made otherwise, a model not available offline) prints one `error: ...`
paragraph and exits 1, without a traceback (MILPF_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing

from milpf_jax import errors
from milpf_jax.config import (
    ConfigError,
    config_fields,
    is_config,
    literal_choices,
    option,
    with_leaves,
)


def command_line(script: str, argv=None) -> str:
    """The command as typed, for results files: `python <script> <args>` (argv: sys.argv[1:])."""
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


# -- flags from configs --------------------------------------------------------------------------


def _parse_list(item_type):
    choices = literal_choices(item_type)

    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if choices is not None:
            bad = [x for x in items if x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"{', '.join(bad)}: choose from {', '.join(map(str, choices))}")
            return tuple(items)
        try:
            return tuple(item_type(x) for x in items)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma list of {item_type.__name__}: "
                                             f"{text!r}") from err

    return parse


def _leaves(cls, skip=(), only=None):
    """(field, type) of every flag-bearing leaf of a config tree, nested configs flattened."""
    for f, tp in config_fields(cls):
        if not f.metadata.get("cli", True):
            continue
        if is_config(tp):
            yield from _leaves(tp, skip, only)
        elif f.name not in skip and (only is None or f.name in only):
            yield f, tp


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def add_config_flags(parser, cls, *, skip=(), only=None, switches=(), help=None) -> None:
    """Add a flag for every leaf field of config class `cls` (nested configs flattened).

    skip/only: field names to leave out / to keep; switches: bool fields shown as a switch
    (`--x` only) in this command; help: {field: text} instead of the field's own help.
    """
    help = help or {}
    for f, tp in _leaves(cls, skip, only):
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = (help.get(f.name) or meta.get("help") or "").replace("%", "%%")
        if meta.get("hidden"):
            text = argparse.SUPPRESS
        kw = dict(dest=f.name, default=None)
        args = typing.get_args(tp)
        inner = next((a for a in args if a is not type(None)), tp) if type(None) in args else tp
        choices = literal_choices(tp)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if meta.get("positional"):
            item = typing.get_args(inner)[0] if typing.get_origin(inner) is tuple else inner
            parser.add_argument(f.name, type=item, nargs="+" if typing.get_origin(inner) is tuple
                                else None, metavar=meta.get("metavar") or f.name.upper(),
                                help=text)
            continue
        if inner is bool:
            if meta.get("switch") or f.name in switches:
                kw.update(action="store_true")
            else:
                kw.update(action=argparse.BooleanOptionalAction)
            parser.add_argument(flag_name(f), help=_with_default(text, default), **kw)
            continue
        shown = default
        if choices is not None:
            kw.update(type=type(choices[0]), choices=choices)
        elif typing.get_origin(inner) is tuple:
            items = typing.get_args(inner)
            if len(items) == 2 and items[1] is Ellipsis:
                kw.update(type=_parse_list(items[0]), metavar=meta.get("metavar"))
                shown = ",".join(str(x) for x in default) if default is not None else None
            else:
                kw.update(type=items[0], nargs=len(items),
                          metavar=meta.get("metavar") or ("LO", "HI")[:len(items)])
                shown = " ".join(str(x) for x in default) if default is not None else None
        else:
            kw.update(type=inner, metavar=meta.get("metavar"))
        if required:
            kw.update(required=True)
            parser.add_argument(flag_name(f), help=text, **kw)
        else:
            parser.add_argument(flag_name(f), help=_with_default(text, shown), **kw)


def _with_default(text: str, default) -> str:
    if text == argparse.SUPPRESS:
        return text
    return f"{text} (default: {default})".strip()


def _flags_of(cls) -> dict[str, str]:
    """field name -> its flag, over a whole config tree (for messages)."""
    out = {}
    for f, tp in config_fields(cls):
        if is_config(tp):
            out.update(_flags_of(tp))
        elif not f.metadata.get("cli", True):
            out[f.name] = f.name
        elif f.metadata.get("positional"):
            out[f.name] = f.metadata.get("metavar") or f.name.upper()
        else:
            out[f.name] = flag_name(f)
    return out


def config_from_args(cls, args: argparse.Namespace, parser=None, **overrides):
    """The config tree with every flag that was given; fields not given keep their defaults.

    overrides: leaf field values set by the command itself (they win over flags). A value the
    config refuses (ConfigError, or a ValueError from a check) ends as `parser.error`, naming
    the flag: usage and the reason on stderr, exit status 2, no traceback.
    """
    values = {f.name: getattr(args, f.name) for f, _ in _leaves(cls)
              if getattr(args, f.name, None) is not None}
    values.update(overrides)
    try:
        return with_leaves(cls, **values)
    except ConfigError as err:
        if parser is None:
            raise
        flags = _flags_of(cls)
        parser.error(f"{' and '.join(flags.get(f, f) for f in err.fields)}: {err.reason}")
    except ValueError as err:
        if parser is None:
            raise
        parser.error(str(err))


# -- errors a user can cause ---------------------------------------------------------------------


def run(main, argv=None) -> int:
    """main(argv) with a user's errors as `error: ...` on stderr and exit 1 (`milpf_jax.errors`),
    a hub model that is not available among them; usage errors keep argparse's exit 2."""
    from milpf_jax.extraction.encoders import EncoderUnavailable

    return errors.run(main, argv, also=(EncoderUnavailable,))


# -- the sweep's command line: experiments/sweep.py, ablation.py and encoders.py -----------------

DEFAULT_COHORT = "phantom"  # what a sweep trains on without --cohort or --store


def _distinct_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers, e.g. 0,1,2") from None
    if not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct whole numbers, e.g. 0,1,2")
    return values


@dataclasses.dataclass(frozen=True)
class SweepCommand:
    """What a sweep command reads and writes, beside its SweepConfig and ExtractConfig."""

    store: str | None = option(None, "an embeddings store (local folder or fsspec URL)")
    no_cache: bool = option(False, "read a store on object storage directly, without copying it "
                                   "into the local cache first", switch=True)
    cohort: str | None = option(None, f"manifest CSV, mias:DIR or phantom (default: "
                                       f"{DEFAULT_COHORT})")
    out: str | None = option(None, "run folder (default: runs/<cohort>-<encoder>-<UTC time>)")
    quiet: bool = option(False, "no progress bars", switch=True)
    folds: int | None = option(
        None, "N-fold patient-grouped cross-validation instead: the sweep once per fold "
              "(OUT/fold-<k>/), each fold the test split once; OUT/folds.json holds per-fold "
              "results, mean ± std and the pooled out-of-fold AUC", metavar="N")


def sweep_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of experiments/sweep.py: data source, extraction, runs, training."""
    from milpf_jax.extraction.config import ExtractConfig
    from milpf_jax.sweep import SweepConfig

    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data: either --store, or --cohort/--encoder (extract if needed)")
    add_config_flags(src, SweepCommand, only=("store", "no_cache", "cohort"))
    add_config_flags(src, ExtractConfig)
    add_config_flags(p, SweepCommand, only=("out", "quiet"))
    p.add_argument("--split-seeds", type=_distinct_ints, metavar="S1,S2,...",
                   help="repeat the sweep on each of these patient-grouped splits (one run "
                        "folder each, OUT/split-<seed>/) and summarise the best-validation "
                        "runs' test metrics across splits in OUT/splits.json")
    add_config_flags(p, SweepCommand, only=("folds",))
    train = p.add_argument_group("training (defaults reproduce the paper)")
    add_config_flags(train, SweepConfig)
    return p


def parse_sweep(parser: argparse.ArgumentParser, argv=None):
    """(args, SweepCommand, SweepConfig, ExtractConfig or None) from the command line, every
    value and combination checked (usage error, exit 2) before anything is read."""
    from milpf_jax.extraction.config import ExtractConfig
    from milpf_jax.sweep import SweepConfig

    args = parser.parse_args(argv)
    command = config_from_args(SweepCommand, args, parser)
    if args.split_seeds and args.split_seed is not None:
        parser.error("give --split-seed or --split-seeds, not both")
    if command.folds is not None and (args.split_seeds or args.fold or command.folds < 3):
        parser.error("--folds N needs N >= 3 and goes without --split-seeds and --fold")
    if command.store and (command.cohort or args.encoder):
        parser.error("give either --store or --cohort/--encoder, not both")
    if str(command.cohort or "").startswith("dicoms:"):
        parser.error("--cohort dicoms:DIR is unlabelled (new exams to score): nothing to train "
                     "or test on; score it with experiments/predict.py --dicom-dir DIR")
    if command.no_cache and not command.store:
        parser.error("--no-cache: goes with --store (a store on object storage)")
    cfg = config_from_args(SweepConfig, args, parser)
    xcfg = None if command.store else config_from_args(ExtractConfig, args, parser)
    return args, command, cfg, xcfg


def resolve_store(command: SweepCommand, xcfg, *, cache_dir=None) -> tuple[str, str, str]:
    """(store path, cohort name, encoder name): the store given, or the cohort's store for the
    extraction settings (extracted into the cache if missing). A store on object storage is
    read from its local copy (`milpf_jax.data.cache.local_copy`, made once) unless no_cache."""
    from milpf_jax.data.store import Store, is_url

    if command.store:
        attrs = Store.open(command.store).attrs
        if attrs.get("label_kind") == "none":
            raise ValueError(f"store {command.store} is unlabelled (label kind 'none': new exams "
                             "to score): nothing to train or test on; score its images with "
                             "experiments/predict.py")
        path = command.store
        if is_url(path) and not command.no_cache:
            from milpf_jax.data.cache import local_copy

            path = str(local_copy(path, cache_dir=cache_dir))
        return path, str(attrs.get("cohort", "store")), str(attrs.get("encoder", "unknown"))
    from milpf_jax.extraction.extract import ensure_store

    spec = command.cohort or DEFAULT_COHORT
    path = ensure_store(spec, xcfg, cache_dir, progress=not command.quiet)
    return str(path), str(Store.open(path).attrs.get("cohort", spec)), xcfg.encoder
