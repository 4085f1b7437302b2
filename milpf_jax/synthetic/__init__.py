"""Synthetic data: the phantom MG DICOM cohort with known lesions, and synthetic embeddings.

`phantom` plans and renders the phantom's views, `phantom_files` writes its DICOMs, manifest
and lesion boxes, `source` registers `phantom[:field=value,...]` as a cohort source, and
`embeddings` writes stores of embeddings with a planted signal (tests, benchmarks).
"""
