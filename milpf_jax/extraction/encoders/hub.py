"""Finding Hugging Face weights: an explicit model_dir, then the local cache, then the hub.

The hub is tried only when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are unset and the hub answers
a quick connection probe, and a log line announces the download. Every failure ends in one
message that names the model and says how to provide it (and, for gated models, that the
licence must be accepted and the user logged in).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

from milpf_jax.extraction.encoders import EncoderSpec, EncoderUnavailable

log = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


def how_to_provide(spec: EncoderSpec) -> str:
    """The instructions appended to every 'model unavailable' message."""
    mid = spec.model_id
    lines = [
        "Provide it one of these ways:",
        f"  - on a machine with network, `hf download {mid}` (older clients: "
        f"`huggingface-cli download {mid}`) fills the Hugging Face cache (HF_HOME), which "
        "can then be copied here;",
        f"  - or `hf download {mid} --local-dir <folder>` and pass that folder as "
        "model_dir=<folder> (CLI: --model-dir <folder>).",
    ]
    if spec.gated:
        lines.append(
            f"  {mid} is gated: first accept its licence on https://huggingface.co/{mid} "
            "(logged in to your account), then log in here with `hf auth login` "
            "(older: `huggingface-cli login`) or set HF_TOKEN."
        )
    return "\n".join(lines)


def unavailable_message(spec: EncoderSpec, reason: str) -> str:
    return (
        f"encoder {spec.name!r} needs the Hugging Face model {spec.model_id!r}, but {reason}.\n"
        + how_to_provide(spec)
    )


def hub_offline() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set, read now (not at import like huggingface_hub)."""
    return any(
        os.environ.get(var, "").upper() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint, so an offline machine fails in seconds rather than
    after the client's retry loop (~30 s). Behind a proxy the probe cannot tell, so it says yes.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def revision_of(path: Path) -> str | None:
    """The commit hash when `path` is a hub cache snapshot folder (.../snapshots/<hash>)."""
    if path.parent.name == "snapshots" and _COMMIT.fullmatch(path.name):
        return path.name
    return None


def cached_folder(model_id: str) -> Path | None:
    """The cache snapshot folder of `model_id` that holds config.json, if any."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def check_normalisation(spec: EncoderSpec, folder: Path | None) -> None:
    """Warns when the checkpoint's own preprocessor_config.json disagrees with the registry's
    mean/std: the embeddings follow the registry, which may then be wrong for this model."""
    config = None if folder is None else folder / "preprocessor_config.json"
    if config is None or not config.is_file():
        return
    try:
        stated = json.loads(config.read_text())
    except (OSError, ValueError):
        return  # unreadable processor config: nothing to compare against
    for key, ours in (("image_mean", spec.mean), ("image_std", spec.std)):
        theirs = stated.get(key)
        if theirs is None:
            continue
        theirs = [theirs] * 3 if isinstance(theirs, (int, float)) else list(theirs)
        if len(theirs) != 3 or max(abs(a - b) for a, b in zip(theirs, ours, strict=True)) > 1e-3:
            warnings.warn(
                f"encoder {spec.name!r}: {config} states {key}={theirs}, the registry uses "
                f"{list(ours)}; embeddings follow the registry",
                stacklevel=3,
            )


@contextlib.contextmanager
def _quiet_transformers():
    """Silences transformers' load report (e.g. MedSigLIP's unused text tower); the missing
    weights that matter are checked by `_from_pretrained` itself."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def _from_pretrained(model_cls, spec: EncoderSpec, source: str, *, local_files_only: bool):
    import torch

    with _quiet_transformers():
        # float32 weights: transformers 5 would otherwise keep a checkpoint's saved dtype, and
        # precision is chosen per op by autocast at embed time.
        model, info = model_cls.from_pretrained(
            source, local_files_only=local_files_only, dtype=torch.float32, output_loading_info=True
        )
    missing = sorted(info["missing_keys"]) + sorted(k[0] for k in info["mismatched_keys"])
    if missing:
        # A silently re-initialised layer would give embeddings that look fine and mean nothing.
        raise ValueError(
            f"{source} lacks {len(missing)} weights that {spec.name!r} needs as a "
            f"{model_cls.__name__} (e.g. {missing[:3]}); is it the right checkpoint?"
        )
    return model


def load_hf_model(model_cls, spec: EncoderSpec, model_dir: str | os.PathLike | None):
    """Loads `model_cls` (e.g. AutoModel) for `spec`: model_dir, else cache, else hub.

    Returns:
      (model, revision): the float32 torch module and its commit hash (None when unknown).

    Raises:
      FileNotFoundError: `model_dir` is not a directory.
      EncoderUnavailable: model_dir lacks the files, or the model is not cached and the hub is
        off, unreachable or refuses (gated models without accepted licence / login).
    """
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                unavailable_message(spec, f"model_dir {str(path)!r} is not a directory")
            )
        if not (path / "config.json").is_file():
            # Checked here: transformers' AutoModel would only say "Unrecognized model".
            reason = f"model_dir {str(path)!r} has no config.json (not a save_pretrained folder)"
            raise EncoderUnavailable(unavailable_message(spec, reason))
        try:
            model = _from_pretrained(model_cls, spec, str(path), local_files_only=True)
        except OSError as err:
            raise EncoderUnavailable(
                unavailable_message(spec, f"model_dir {str(path)!r} could not be loaded ({err})")
            ) from err
        check_normalisation(spec, path)
        return model, revision_of(path.resolve())

    try:
        model = _from_pretrained(model_cls, spec, spec.model_id, local_files_only=True)
    except OSError as err:
        cache_err = err
    else:
        folder = cached_folder(spec.model_id)
        check_normalisation(spec, folder)
        return model, None if folder is None else revision_of(folder)
    not_cached = "it is not in the local Hugging Face cache"
    if hub_offline():
        reason = f"{not_cached} and HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
        raise EncoderUnavailable(unavailable_message(spec, reason)) from cache_err
    if not hub_reachable():
        reason = f"{not_cached} and the hub cannot be reached from here"
        raise EncoderUnavailable(unavailable_message(spec, reason)) from cache_err
    log.warning(
        "%s is not in the local Hugging Face cache: downloading it from the hub", spec.model_id
    )
    try:
        model = _from_pretrained(model_cls, spec, spec.model_id, local_files_only=False)
    except OSError as err:
        raise EncoderUnavailable(
            unavailable_message(spec, f"it is not cached and the download failed ({err})")
        ) from err
    folder = cached_folder(spec.model_id)
    return model, None if folder is None else revision_of(folder)
