"""milpf_jax: MIL-PF (Multiple Instance Learning on Precomputed Features) in JAX.

Public API (imported lazily, so `import milpf_jax` stays quick and never loads torch):

    predict, Bag, Head, HeadConfig      inference on one bag or a batch
    train, TrainConfig, Hparams, fit    the pure, vmappable trainer and its host loop
    load_head, save_head                orbax checkpoints of a head
    from_torch_state_dict               import a head trained by the original PyTorch code
    Store, load_packed, PackedBags      the embeddings store
"""

__version__ = "0.1.0"

_EXPORTS = {
    "predict": "milpf_jax.learning.inference",
    "Bag": "milpf_jax.learning.inference",
    "Head": "milpf_jax.learning.inference",
    "HeadConfig": "milpf_jax.learning.head",
    "train": "milpf_jax.learning.train",
    "fit": "milpf_jax.learning.train",
    "TrainConfig": "milpf_jax.learning.train",
    "Hparams": "milpf_jax.learning.train",
    "load_head": "milpf_jax.learning.checkpoint",
    "save_head": "milpf_jax.learning.checkpoint",
    "from_torch_state_dict": "milpf_jax.learning.convert",
    "Store": "milpf_jax.data.store",
    "load_packed": "milpf_jax.data.store",
    "PackedBags": "milpf_jax.data.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'milpf_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
