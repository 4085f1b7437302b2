"""milpf_jax: MIL-PF (Multiple Instance Learning on Precomputed Features) in JAX.

The pipeline, one call per stage (imported lazily, so `import milpf_jax` stays quick and never
loads torch or JAX):

    cohort = read_cohort("manifest.csv")              # or "mias:DIR", "phantom"
    store = extract(cohort, ExtractConfig()).path      # the encoder, once, into a Zarr store
    packed = load_packed(store, split_seed=0)          # labels mapped, splits drawn, packed
    result = train_grid(packed, SweepConfig())         # 36 runs, selected on validation
    write_run("runs/x", result)                        # results.json, predictions.csv, best/
    head = load_head("runs/x/best")
    p = predict(head, Bag(views, views_mask, tiles, tiles_mask))
    explanation = explain_bag(load_explainer("runs/x"), cohort.bags[0])
    scored = predict_images("runs/x", "new-exams/")    # new DICOMs: breast and exam scores

The sub-packages follow the data flow, each importing only those below it: reading,
extraction, data, learning, evaluation, explanation (and synthetic for the phantom); the README's
"Layout" section draws it.
"""

__version__ = "0.1.0"

_EXPORTS = {
    # reading
    "read_cohort": "milpf_jax.reading.sources",
    "Cohort": "milpf_jax.reading.cohort",
    # extraction
    "extract": "milpf_jax.extraction.extract",
    "ExtractConfig": "milpf_jax.extraction.config",
    # data
    "Store": "milpf_jax.data.store",
    "load_packed": "milpf_jax.data.packed",
    "pack": "milpf_jax.data.packed",
    "PackedBags": "milpf_jax.data.packed",
    "DataConfig": "milpf_jax.data.packed",
    # learning
    "HeadConfig": "milpf_jax.learning.head",
    "HeadImpl": "milpf_jax.learning.head",
    "train": "milpf_jax.learning.train",
    "fit": "milpf_jax.learning.train",
    "TrainConfig": "milpf_jax.learning.train",
    "Hparams": "milpf_jax.learning.train",
    "predict": "milpf_jax.learning.inference",
    "Bag": "milpf_jax.learning.inference",
    "Head": "milpf_jax.learning.inference",
    "load_head": "milpf_jax.learning.checkpoint",
    "save_head": "milpf_jax.learning.checkpoint",
    "from_torch_state_dict": "milpf_jax.learning.convert",
    # the experiment: train, select, test, write
    "SweepConfig": "milpf_jax.sweep",
    "SweepResult": "milpf_jax.sweep",
    "train_grid": "milpf_jax.sweep",
    "write_run": "milpf_jax.sweep",
    "run_sweep": "milpf_jax.sweep",
    # explanation
    "ExplainConfig": "milpf_jax.explanation.explain",
    "load_explainer": "milpf_jax.explanation.explain",
    "explain_bag": "milpf_jax.explanation.explain",
    "predict_images": "milpf_jax.explanation.predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # one object, however it was reached
        return value
    raise AttributeError(f"module 'milpf_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
