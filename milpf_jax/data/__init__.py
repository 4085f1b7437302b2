"""Data: the embeddings store and what training reads from it.

`store` owns the Zarr store's schema and lifecycle (plan, fill, resume, reopen with checks);
`packed` reads it into packed bags, real tiles only; `labels` maps raw labels and draws
patient-grouped splits at load time; `upgrade` brings an older store to the current format;
`imported` keeps an imported store's provenance and writes it once per source file.
"""
