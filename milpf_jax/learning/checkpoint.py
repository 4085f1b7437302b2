"""Checkpoints of a trained head: its parameters, its HeadConfig and provenance, via orbax.

    >>> step_dir = save_head("runs/phantom/best", head, {"seed": 3, "lr": 2e-3, "val_auc": 0.91})
    >>> head = load_head("runs/phantom/best")            # the latest complete save
    >>> read_metadata("runs/phantom/best")["val_auc"]
    0.91

One directory is one orbax CheckpointManager; each save is a new numbered step inside it:

    <directory>/<step>/params   the parameter pytree (orbax StandardCheckpointHandler)
    <directory>/<step>/head     JSON: format tag, HeadConfig fields, metadata (provenance)

Crash safety comes from orbax: a step is written into `<step>.orbax-checkpoint-tmp-*` and renamed
to `<step>` only once every file is written, and the older step is deleted only after that
rename, so a save killed half-way leaves the previous step intact and loadable (the next save
clears the leftover tmp folder). Two steps are kept. Restoring needs no template from the
caller: the config in the JSON rebuilds one with `jax.eval_shape`.

Corruption: orbax checksums its index but not the array data stored out of line (a flipped
byte in a large kernel loads silently), so the JSON also holds `params_sha256`, the SHA-256 of
the float32 params, and `sha256`, that of the JSON item itself; both are checked on load (when
present: checkpoints written before they were added load unchecked). A corrupt, foreign or
incomplete step raises ValueError naming its folder and, when there is one, the older step that
`step=` can load instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import numbers
from pathlib import Path

import jax
import numpy as np

from milpf_jax.config import ConfigError, from_dict
from milpf_jax.learning.head import HeadConfig, init_params, shape_differences
from milpf_jax.learning.inference import Head

FORMAT = "milpf_jax.head"  # the format tag of every saved head (not a module path)
FORMAT_VERSION = 1
MAX_TO_KEEP = 2  # the new step plus the last good one, so a killed save never loses a head
PARAMS, HEAD = "params", "head"
_TMP_MARK = ".orbax-checkpoint-tmp"
# Files at the top of one orbax checkpoint (a step, or one item of it): a head checkpoint
# directory holds only numbered step folders (and tmp folders of unfinished saves).
_ORBAX_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def _named_leaves(tree) -> list[tuple[str, object]]:
    """[('global_proj/0/kernel', leaf), ...] of a params pytree, in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        ("/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path), leaf)
        for path, leaf in flat
    ]


def _param_shapes(tree) -> dict[str, tuple]:
    """{'global_proj/0/kernel': shape, ...} for a params pytree (arrays or ShapeDtypeStructs)."""
    return {name: tuple(leaf.shape) for name, leaf in _named_leaves(tree)}


def _params_digest(params) -> str:
    """SHA-256 over the names, shapes and little-endian float32 bytes of every leaf."""
    h = hashlib.sha256()
    for name, leaf in sorted(_named_leaves(params), key=lambda item: item[0]):
        value = np.ascontiguousarray(leaf, dtype="<f4")
        h.update(f"{name}{list(value.shape)};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _item_digest(item: dict) -> str:
    """SHA-256 of the JSON item without its own `sha256` field (canonical JSON)."""
    text = json.dumps({k: v for k, v in item.items() if k != "sha256"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _not_steps(path: Path) -> str | None:
    """Why `path` is one orbax checkpoint rather than a directory of head steps; None if not."""
    if path.name in (PARAMS, HEAD) and path.parent.name.isdigit() and (path.parent / HEAD).is_dir():
        return (
            f"{path} is the '{path.name}' item of the head checkpoint step {path.parent}; "
            f"point at {path.parent.parent} (or at the step folder)"
        )
    found = [name for name in _ORBAX_FILES if (path / name).exists()]
    if found:
        return (
            f"{path} is not a MIL-PF head checkpoint directory: it is itself one orbax "
            f"checkpoint (it holds {found}), while save_head writes numbered step folders"
        )
    return None


def _older_hint(mngr, step: int) -> str:
    """'; step=N ...' naming the newest step older than `step`, or '' when there is none."""
    older = [s for s in sorted(mngr.all_steps()) if s < step]
    return f"; an older step can be loaded with step={older[-1]}" if older else ""


def _params_template(cfg: HeadConfig):
    """ShapeDtypeStructs of a head's params: no arrays are allocated or computed."""
    return jax.eval_shape(lambda: init_params(jax.random.key(0), cfg))


def _to_jsonable(value, where: str):
    """Plain JSON values from numpy/jax scalars, 0-d arrays, paths and tuples; else ValueError."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"metadata key {where}[{k!r}] is not a string (JSON needs one)")
            out[k] = _to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        value = np.asarray(value).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise ValueError(
        f"metadata {where} is a {type(value).__name__}, which JSON cannot hold; "
        "store numbers, strings, bools, lists or dicts"
    )


def _provenance() -> dict:
    import milpf_jax  # at call time: the package is fully imported by then

    return {
        "package_version": milpf_jax.__version__,
        "jax_version": jax.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _config_from_json(fields, where: str) -> HeadConfig:
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: 'config' is a {type(fields).__name__}, expected a dict")
    try:
        return from_dict(HeadConfig, fields)
    except ConfigError as err:
        if "not a field" in err.reason:
            raise ValueError(
                f"{where}: config has fields {list(err.fields)} that this milpf_jax does not "
                f"know ({err.reason}); was it written by a newer version?") from err
        raise ValueError(f"{where}: invalid head config {fields}: {err}") from err
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: invalid head config {fields}: {err}") from err


def _manager(root: Path, *, create: bool):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=MAX_TO_KEEP,
        create=create,
        # Synchronous writes: save_head returns only once the step is renamed into place.
        enable_async_checkpointing=False,
        # Leftovers of a killed save are removed, but only by a saver, never by a reader.
        cleanup_tmp_directories=create,
    )
    handlers = {PARAMS: ocp.StandardCheckpointHandler(), HEAD: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(root, options=options, item_handlers=handlers)


def _read_head_json(mngr, root: Path, step: int) -> dict:
    """The JSON item of one step, checked to be a MIL-PF head checkpoint of a known version."""
    import orbax.checkpoint as ocp

    where = root / str(step)
    if not (where / HEAD).is_dir():
        found = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        raise ValueError(
            f"{where} is not a MIL-PF head checkpoint: it has no '{HEAD}' item "
            f"(found {found}); point load_head at a directory written by save_head"
            f"{_older_hint(mngr, step)}"
        )
    try:
        item = mngr.restore(step, args=ocp.args.Composite(**{HEAD: ocp.args.JsonRestore()}))[HEAD]
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"{where / HEAD} is unreadable (truncated or corrupt?): {err}{_older_hint(mngr, step)}"
        ) from err
    if not isinstance(item, dict) or item.get("format") != FORMAT:
        tag = item.get("format") if isinstance(item, dict) else type(item).__name__
        raise ValueError(
            f"{where} is not a MIL-PF head checkpoint: its '{HEAD}' item has format {tag!r}, "
            f"expected {FORMAT!r}{_older_hint(mngr, step)}"
        )
    version = item.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{where}: checkpoint format version {version!r}, this milpf_jax reads up to "
            f"{FORMAT_VERSION}; upgrade milpf_jax"
        )
    if "sha256" in item and item["sha256"] != _item_digest(item):
        raise ValueError(
            f"{where / HEAD} does not match the checksum saved with it (corrupt, or edited after "
            f"it was saved){_older_hint(mngr, step)}"
        )
    return item


def _locate(directory, step: int | None) -> tuple[Path, int]:
    """(manager root, step) for a checkpoint directory or one of its step folders."""
    path = Path(directory).absolute()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the directory does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, expected a checkpoint directory written by save_head")
    if step is None and path.name.isdigit() and (path / HEAD).is_dir():
        return path.parent, int(path.name)  # the step folder that save_head returned
    why = _not_steps(path)
    if why:
        raise ValueError(why)
    with _manager(path, create=False) as mngr:
        steps = sorted(mngr.all_steps())
    if not steps:
        entries = sorted(p.name for p in path.iterdir())
        unfinished = [e for e in entries if _TMP_MARK in e]
        why = (
            f"only unfinished saves {unfinished} (a save was interrupted before it completed)"
            if unfinished
            else f"no numbered step folders (found {entries[:10]})"
        )
        raise FileNotFoundError(f"no complete checkpoint in {path}: {why}")
    if step is None:
        return path, steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no complete step {step} in {path}; complete steps: {steps}")
    return path, step


def save_head(directory, head: Head, metadata: dict | None = None) -> Path:
    """Save `head` as a new step in `directory`, blocking until it is complete on disk.

    Args:
      directory: the checkpoint directory (created if missing). If it already holds head
        checkpoints, this becomes the next step and the previous good one is kept.
      head: params (one run, no seed axis) + HeadConfig. Stored as float32.
      metadata: JSON-able provenance (store attributes, seed, lr, weight decay, val AUC, best
        epoch, ...); numpy scalars are converted. `package_version`, `jax_version` and
        `created` (UTC) are added unless given.

    Returns the step folder written, e.g. `<directory>/3` (load_head accepts it too).
    """
    import orbax.checkpoint as ocp

    cfg = head.config
    expected = _param_shapes(_params_template(cfg))
    diffs = shape_differences(_param_shapes(head.params), expected)
    if diffs:
        raise ValueError(
            f"cannot save to {directory}: params do not match their HeadConfig {cfg} "
            f"(a stack of runs must be indexed to one run first): {'; '.join(diffs)}"
        )
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), head.params)
    item = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "metadata": {**_provenance(), **_to_jsonable(dict(metadata or {}), "metadata")},
        "params_sha256": _params_digest(params),
    }
    item["sha256"] = _item_digest(item)
    root = Path(directory).absolute()
    if root.exists() and not root.is_dir():
        raise ValueError(f"cannot save a head to {root}: it is a file, expected a directory")
    if root.name.isdigit() and (root / HEAD).is_dir():
        raise ValueError(
            f"cannot save a head to {root}: it is one step of a checkpoint; save to "
            f"{root.parent} to add a new step there"
        )
    why = _not_steps(root) if root.is_dir() else None
    if why:
        raise ValueError(f"cannot save a head to {root}: {why}")
    with _manager(root, create=True) as mngr:
        steps = sorted(mngr.all_steps())
        if steps:
            # Refuse to mix with a foreign checkpoint: max_to_keep would delete its steps.
            _read_head_json(mngr, root, steps[-1])
        step = steps[-1] + 1 if steps else 0
        mngr.save(
            step,
            args=ocp.args.Composite(
                **{PARAMS: ocp.args.StandardSave(params), HEAD: ocp.args.JsonSave(item)}
            ),
            force=True,
        )
        mngr.wait_until_finished()
    return root / str(step)


def load_head(directory, step: int | None = None) -> Head:
    """The Head saved in `directory`: the latest complete step, or `step` if given.

    Params come back as float32 numpy arrays shaped as `init_params(key, config)`. A missing,
    empty, foreign or corrupt directory raises FileNotFoundError/ValueError naming it.
    """
    import orbax.checkpoint as ocp

    root, step = _locate(directory, step)
    where = root / str(step)
    with _manager(root, create=False) as mngr:
        item = _read_head_json(mngr, root, step)
        cfg = _config_from_json(item.get("config"), str(where))
        template = _params_template(cfg)
        try:
            stored = _param_shapes(mngr.item_metadata(step)[PARAMS].tree)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{where / PARAMS} is unreadable (truncated or corrupt?): {err}"
                f"{_older_hint(mngr, step)}"
            ) from err
        diffs = shape_differences(stored, _param_shapes(template))
        if diffs:
            raise ValueError(
                f"{where}: stored params do not match its config {cfg}: " + "; ".join(diffs)
            )
        try:
            restored = mngr.restore(
                step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(template)})
            )[PARAMS]
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            raise ValueError(
                f"{where / PARAMS} is unreadable (truncated or corrupt?): {err}"
                f"{_older_hint(mngr, step)}"
            ) from err
        params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), restored)
        digest = item.get("params_sha256")
        if digest is not None and digest != _params_digest(params):
            raise ValueError(
                f"{where / PARAMS} holds values that do not match the checksum saved with them "
                f"(corrupt data){_older_hint(mngr, step)}"
            )
    return Head(params=params, config=cfg)


def read_metadata(directory, step: int | None = None) -> dict:
    """The provenance dict saved with the latest complete step (or `step`); no params are read."""
    root, step = _locate(directory, step)
    with _manager(root, create=False) as mngr:
        item = _read_head_json(mngr, root, step)
    metadata = item.get("metadata")
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{root / str(step)}: metadata is a {type(metadata).__name__}, expected a dict"
        )
    return metadata
