"""Import heads trained by the original PyTorch MIL-PF (`mil_pf_core`, `MILPFAttnTrexModel`).

    >>> head = from_torch_state_dict("mil_pf_head.pth")   # or a state dict of tensors/arrays
    >>> p = milpf_jax.predict(head, milpf_jax.Bag(views, views_mask, tiles, tiles_mask))

The result is the paper's full head (global max pooling, local latent attention) and gives the
original's probabilities in float32 (within 3e-7 on random heads at D=32 and D=1152).

Note for users: a converted head knows only the embeddings it was trained on. A head trained by
the original code expects that code's preprocessing and encoder: embed your images with the
same encoder and the `original` preset of the tiling config, or its inputs (and so its
probabilities) will silently differ from what it was trained on.

Original parameter names and shapes (torch Linear weights are [out, in]; Flax kernels [in, out]):

    global_proj_0.0.{weight,bias} [16, D], [16]    -> global_proj/0/{kernel,bias}
    global_proj_1.0.{weight,bias} [8, 16], [8]     -> global_proj/1
    local_proj_0.0.*, local_proj_1.0.*  (same)     -> local_proj/0, local_proj/1
    k.*, v.* [8, 8], [8]                           -> local_attn/k, local_attn/v
    latent [1, 8] (one latent query)               -> local_attn/latent [8]
    linear_out.{weight,bias} [1, 16], [1]          -> linear_out (input: global 8, then local 8)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from milpf_jax.learning.head import HeadConfig, shape_differences
from milpf_jax.learning.inference import Head

# Linear layers of the original and where they live in the Flax parameter tree.
_LINEARS = {
    "global_proj_0.0": ("global_proj", "0"),
    "global_proj_1.0": ("global_proj", "1"),
    "local_proj_0.0": ("local_proj", "0"),
    "local_proj_1.0": ("local_proj", "1"),
    "k": ("local_attn", "k"),
    "v": ("local_attn", "v"),
    "linear_out": ("linear_out",),
}


def _expected_shapes(dim: int, hidden: int, proj: int) -> dict[str, tuple]:
    """{original key: shape} of MILPFAttnTrexModel with one latent and a linear output."""
    shapes = {}
    for prefix, (n_in, n_out) in {
        "global_proj_0.0": (dim, hidden),
        "global_proj_1.0": (hidden, proj),
        "local_proj_0.0": (dim, hidden),
        "local_proj_1.0": (hidden, proj),
        "k": (proj, proj),
        "v": (proj, proj),
        "linear_out": (2 * proj, 1),
    }.items():
        shapes[f"{prefix}.weight"] = (n_out, n_in)
        shapes[f"{prefix}.bias"] = (n_out,)
    shapes["latent"] = (1, proj)
    return shapes


def _shape(value) -> tuple[int, ...]:
    return tuple(int(n) for n in (value.shape if hasattr(value, "shape") else np.shape(value)))


def _infer_sizes(sd: dict, where: str) -> tuple[int, int, int]:
    """(D, hidden, proj) from whichever first/second layers are present, so that a state dict
    missing one stream still gets a full list of its problems rather than a KeyError."""

    def first_found(candidates):
        for key, axis in candidates:
            shape = _shape(sd[key]) if key in sd else ()
            if len(shape) == 2:
                return shape[axis]
        return None

    dim = first_found([("global_proj_0.0.weight", 1), ("local_proj_0.0.weight", 1)])
    if dim is None:
        raise ValueError(
            f"{where}: cannot read D: neither 'global_proj_0.0.weight' nor "
            f"'local_proj_0.0.weight' ([16, D]) is present; keys found: {sorted(sd)}"
        )
    hidden = first_found([("global_proj_0.0.weight", 0), ("local_proj_0.0.weight", 0)])
    proj = first_found([("global_proj_1.0.weight", 0), ("local_proj_1.0.weight", 0), ("latent", 1)])
    if proj is None:
        proj = 8  # the paper's width; only used to word the list of missing keys
    return dim, hidden, proj


def _as_float32(value, key: str) -> np.ndarray:
    """A torch tensor (any device/dtype) or array-like as a float32 numpy array."""
    if hasattr(value, "detach"):  # a torch tensor; torch is already imported by whoever made it
        value = value.detach().cpu().float().numpy()
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"state dict entry {key!r} is a {type(value).__name__}, expected a tensor or array"
        ) from err


def _load_state_dict(source, where: str) -> dict:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no PyTorch checkpoint file at {path}")
        import torch

        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            # weights_only=True refuses arbitrary pickled code with an UnpicklingError.
            raise ValueError(f"{path} is not a loadable PyTorch checkpoint: {err}") from err
    if isinstance(source, dict) and "model_state_dict" in source:
        source = source["model_state_dict"]  # the original's training checkpoints nest it
    if not isinstance(source, dict):
        raise ValueError(
            f"{where}: expected a state dict (a mapping of names to tensors), "
            f"got a {type(source).__name__}"
        )
    return dict(source)


def from_torch_state_dict(state_dict) -> Head:
    """A Head from an original MIL-PF state dict, a {"model_state_dict": ...} checkpoint, or a
    path to a .pt/.pth file holding either (loaded on CPU with weights_only=True).

    D, the hidden width (16) and the projection width (8) are read from the weights. Values may
    be torch tensors or numpy arrays. Missing, extra or mis-shaped keys raise a ValueError that
    lists them all (e.g. an `mlp_out` head, or several latents, which the paper does not use).
    """
    where = str(state_dict) if isinstance(state_dict, (str, Path)) else "state dict"
    sd = _load_state_dict(state_dict, where)
    dim, hidden, proj = _infer_sizes(sd, where)
    expected = _expected_shapes(dim, hidden, proj)
    found = {k: _shape(v) for k, v in sd.items()}
    problems = shape_differences(found, expected)
    if problems:
        raise ValueError(
            f"{where} is not an original MIL-PF head (MILPFAttnTrexModel, D={dim}, "
            f"hidden={hidden}, proj={proj}, one latent, linear output): " + "; ".join(problems)
        )
    arrays = {k: _as_float32(v, k) for k, v in sd.items()}
    bad = sorted(k for k, a in arrays.items() if not np.all(np.isfinite(a)))
    if bad:
        raise ValueError(f"{where}: non-finite values in {bad}")

    params: dict = {}
    for prefix, path in _LINEARS.items():
        node = params
        for name in path:
            node = node.setdefault(name, {})
        node["kernel"] = arrays[f"{prefix}.weight"].T.copy()  # torch [out, in] -> [in, out]
        node["bias"] = arrays[f"{prefix}.bias"]
    params["local_attn"]["latent"] = arrays["latent"][0]
    config = HeadConfig(dim=dim, global_pool="max", local_pool="attn", hidden=hidden, proj=proj)
    return Head(params=params, config=config)
