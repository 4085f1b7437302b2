"""Extraction: a cohort through a frozen encoder into an embeddings store, once, resumably.

`encoders` is the registry of image encoders (one module per family); `inputs` reads, plans and
cuts a bag's encoder inputs in worker processes; `schedule` fixes which batches a resume
re-encodes; `extract` runs the plan and encode passes into a `milpf_jax.data` store; `failures`
keeps the list of images that could not be used; `imports` reads other pipelines' feature
files (the original MIL-PF code's HDF5, TRIDENT/CLAM .h5) into a store instead.
"""
